#!/usr/bin/python3 -IS
"""Stand-in nvidia-smi: answers from /etc/gpu-llm-testbed/gpus.json like the real one, only once the "module" is loaded.

Shipped as /usr/bin/nvidia-smi by the testbed's nvidia-utils-<branch> package. Module state: the dkms stand-in's
boot unit writes /run/gpu-llm-testbed/loaded-driver; the dkms postinst writes /var/lib/gpu-llm-testbed/installed-driver.
Output formats follow real outputs in tests/fixtures/h200-host/.

Lean on purpose, as it runs in every host read: the real `nvidia-smi --query-gpu` costs ~16 ms of CPU on an H200 host
(tests/fixtures/h200-host/smi-cpu.txt); importing json and pathlib alone took 20 ms on a testbed host, so files are
read with open() and the testbed's JSON files (plain lists of objects) as Python literals, and Python starts with -IS.
"""

import sys
import time

GPUS = "/etc/gpu-llm-testbed/gpus.json"
SWITCHES = "/etc/gpu-llm-testbed/nvswitches.json"
FABRIC = "/run/gpu-llm-testbed/fabric-state"  # written by the fabric manager stand-in
LOADED = "/run/gpu-llm-testbed/loaded-driver"
INSTALLED = "/var/lib/gpu-llm-testbed/installed-driver"
PERSISTENCED_ARGS = "/var/run/nvidia-persistenced/gpu-llm-testbed-args"  # written by the daemon stand-in
CUDA = {"570": "12.8", "575": "12.9", "580": "13.0"}  # CUDA version each driver branch reports
LEGEND = """
Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks
"""


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def load_json(path: str) -> list:
    """A JSON file the testbed wrote (lists of objects of strings, numbers and booleans), [] when absent."""
    text = read(path)
    return eval(text, {"__builtins__": {}, "true": True, "false": False, "null": None}) if text else []


def persistence_mode() -> str:
    """Enabled while the persistence daemon stand-in runs without --no-persistence-mode (its arguments and pid are in
    PERSISTENCED_ARGS), else Disabled: what the real nvidia-smi reports with nvidia-persistenced's default unit."""
    pid, _, args = read(PERSISTENCED_ARGS).partition(" ")
    if not pid.isdigit() or not read(f"/proc/{pid}/stat"):
        return "Disabled"
    return "Disabled" if "--no-persistence-mode" in args.split() else "Enabled"


def fields(gpu: dict, index: int, driver: str, shared: dict) -> dict:
    """Value of every supported --query-gpu field as (header, value, unit); `shared`: what all GPUs have in common
    (count, persistence mode, fabric state), read once per call."""
    mem = gpu["memory_mib"]
    fabric_state = shared["fabric"]
    return {
        "index": ("index", str(index), ""),
        "count": ("count", str(shared["count"]), ""),
        "name": ("name", gpu["name"], ""),
        "gpu_name": ("name", gpu["name"], ""),
        "uuid": ("uuid", gpu["uuid"], ""),
        "gpu_uuid": ("uuid", gpu["uuid"], ""),
        "serial": ("serial", gpu.get("serial", "N/A"), ""),
        "memory.total": ("memory.total [MiB]", str(mem), " MiB"),
        "memory.used": ("memory.used [MiB]", "0", " MiB"),
        "memory.free": ("memory.free [MiB]", str(mem), " MiB"),
        "compute_cap": ("compute_cap", gpu["compute_cap"], ""),
        "driver_version": ("driver_version", driver, ""),
        "pci.bus_id": ("pci.bus_id", gpu["pci_bus_id"], ""),
        "pci.device_id": ("pci.device_id", f"0x{int(gpu['pci_device_id'], 16):04X}10DE", ""),
        "pcie.link.gen.current": ("pcie.link.gen.current", str(gpu.get("pcie_gen", 4)), ""),
        "pcie.link.width.current": ("pcie.link.width.current", str(gpu.get("pcie_width", 16)), ""),
        "persistence_mode": ("persistence_mode", shared["persistence"], ""),
        "temperature.gpu": ("temperature.gpu", "30", ""),
        "utilization.gpu": ("utilization.gpu [%]", "0", " %"),
        "power.limit": ("power.limit [W]", f"{gpu.get('power_w', 300)}.00", " W"),
        "mig.mode.current": ("mig.mode.current", "Disabled" if gpu.get("mig_capable") else "[N/A]", ""),
        "fabric.state": ("fabric.state", fabric_state[0], ""),
        "fabric.status": ("fabric.status", fabric_state[1], ""),
    }


def fabric() -> tuple:
    """(state, status) of every GPU: "N/A" without NVSwitches; else the fabric manager stand-in's progress
    ("Not Started" until it runs, "In Progress", "Completed" with status "Success")."""
    if not load_json(SWITCHES):
        return ("N/A", "N/A")
    state = read(FABRIC) or "Not Started"
    return (state, "Success" if state == "Completed" else "N/A")


def load_gpus() -> list:
    return load_json(GPUS)


def query(spec: str, fmt: str, gpus: list, driver: str) -> int:
    opts = set(fmt.split(","))
    if "csv" not in opts:
        print(f'"{fmt}" is not a valid format.', file=sys.stderr)
        return 2
    names = [f.strip() for f in spec.split(",") if f.strip()]
    shared = {"count": len(gpus), "persistence": persistence_mode(), "fabric": fabric()}
    rows = [fields(g, i, driver, shared) for i, g in enumerate(gpus)]
    for n in names:
        if rows and n not in rows[0]:
            print(f'Field "{n}" is not a valid field to query.\n', file=sys.stderr)
            return 2
    if "noheader" not in opts:
        print(", ".join(rows[0][n][0] if rows else n for n in names))
    for row in rows:
        print(", ".join(row[n][1] + ("" if "nounits" in opts else row[n][2]) for n in names))
    return 0


def topo(gpus: list) -> None:
    n = len(gpus)
    cols = [f"GPU{i}" for i in range(n)] + ["CPU Affinity", "NUMA Affinity", "GPU NUMA ID"]
    print("\t\x1b[4m" + "\t".join(cols) + "\x1b[0m")
    for i, g in enumerate(gpus):
        link = g.get("topo_link", "SYS")
        cells = [" X " if j == i else link for j in range(n)]
        print(f"GPU{i}\t" + "\t".join(cells) + "\t0-15\t0\t\tN/A")
    print(LEGEND)


def summary(gpus: list, driver: str) -> None:
    cuda = CUDA.get(driver.split(".")[0], "12.8")
    bar = "+-----------------------------------------+------------------------+----------------------+"
    print(time.strftime("%a %b %d %H:%M:%S %Y"))
    print("+" + "-" * 89 + "+")
    print(f"| NVIDIA-SMI {driver:<22} Driver Version: {driver:<14} CUDA Version: {cuda:<9}|")
    print("|-----------------------------------------+------------------------+----------------------+")
    print("| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |")
    print("| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |")
    print("|                                         |                        |               MIG M. |")
    print("|=========================================+========================+======================|")
    for i, g in enumerate(gpus):
        mem = f"0MiB / {g['memory_mib']}MiB"
        pm = "On " if persistence_mode() == "Enabled" else "Off"
        print(f"| {i:>3}  {g['name'][:28]:<28}   {pm} | {g['pci_bus_id']:>18} Off | {'0':>20} |")
        print(f"| N/A   30C    P0  {'75W / ' + str(g.get('power_w', 300)) + 'W':>22} | {mem:>22} | {'0%':>7}      Default |")
        print(f"|                                         |                        | {'Disabled' if g.get('mig_capable') else 'N/A':>20} |")
        print(bar)
    print(" " * 91)
    print("+" + "-" * 89 + "+")
    print("| Processes:" + " " * 79 + "|")
    print("|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |")
    print("|        ID   ID                                                               Usage      |")
    print("|" + "=" * 89 + "|")
    print("|  No running processes found" + " " * 62 + "|")
    print("+" + "-" * 89 + "+")


def main(argv: list) -> int:
    installed, loaded = read(INSTALLED), read(LOADED)
    if not loaded:
        print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
              "Make sure that the latest NVIDIA driver is installed and running.\n")
        return 9
    if loaded != installed:
        print("Failed to initialize NVML: Driver/library version mismatch")
        print(f"NVML library version: {installed.split('-')[0]}")
        return 18
    driver = loaded.split("-")[0]
    gpus = load_gpus()
    opts = {}
    for arg in argv:
        if arg.startswith("--") and "=" in arg:
            k, v = arg.split("=", 1)
            opts[k] = v
    if "--query-gpu" in opts:
        return query(opts["--query-gpu"], opts.get("--format", ""), gpus, driver)
    if argv[:1] == ["-L"] or argv[:1] == ["--list-gpus"]:
        for i, g in enumerate(gpus):
            print(f"GPU {i}: {g['name']} (UUID: {g['uuid']})")
        return 0
    if argv[:1] == ["topo"]:
        topo(gpus)
        return 0
    if not argv:
        summary(gpus, driver)
        return 0
    print(f"Invalid combination of input arguments: {' '.join(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
