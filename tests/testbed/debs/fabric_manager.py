#!/usr/bin/python3
"""Stand-in nv-fabricmanager (the nvidia-fabricmanager service's daemon) for testbed NVSwitch hosts.

Shipped as /usr/bin/nv-fabricmanager by the testbed's nvidia-fabricmanager-<branch> package (version @VERSION@).
As the real one (NVIDIA Fabric Manager user guide, https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/):
it refuses to run beside a different driver version or without a loaded driver or without NVSwitches, logging why
to /var/log/fabricmanager.log; otherwise it takes the fabric from "In Progress" to "Completed" (what the nvidia-smi
stand-in reports as fabric.state, and what the container runtime stand-in hands to the stand-in vLLM) and stays up.
When it stops, the stand-in fabric state goes back to "Not Started" (new CUDA programs fail with error 802; the real
driver's behaviour when the service stops was not verified here).
"""

import json
import signal
import sys
import time
from pathlib import Path

VERSION = "@VERSION@"
LOADED = Path("/run/gpu-llm-testbed/loaded-driver")
SWITCHES = Path("/etc/gpu-llm-testbed/nvswitches.json")
STATE = Path("/run/gpu-llm-testbed/fabric-state")
LOG = Path("/var/log/fabricmanager.log")


def log(message: str) -> None:
    with open(LOG, "a") as fh:
        fh.write(f"[{time.strftime('%b %d %Y %H:%M:%S')}] [INFO] [tid 1] {message}\n")
    print(message, flush=True)


def stop(*_: object) -> None:
    STATE.unlink(missing_ok=True)
    log("Fabric Manager stopped")
    sys.exit(0)


def main() -> int:
    log(f"Fabric Manager version {VERSION} is running with the following configuration options")
    driver = LOADED.read_text().strip() if LOADED.exists() else ""
    if not driver:
        log("request to query NVSwitch device information from NVSwitch driver failed: driver not loaded")
        return 1
    if driver.split("-")[0] != VERSION:
        log(f"fabric manager version {VERSION} is not compatible with the driver version {driver}: "
            "the fabric manager and the driver must be the same version")
        return 1
    switches = json.loads(SWITCHES.read_text()) if SWITCHES.exists() else []
    if not switches:
        log("No NVSwitch devices found. Fabric Manager is not needed on this system")
        return 1
    signal.signal(signal.SIGTERM, stop)
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text("In Progress\n")
    log(f"Successfully configured all the available NVSwitches ({len(switches)}) to route GPU NVLink traffic")
    time.sleep(1)
    STATE.write_text("Completed\n")
    log("Successfully configured all the available GPUs and NVSwitches to route NVLink traffic")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
