#!/usr/bin/python3
"""Stand-in nvidia-ctk: `runtime configure --runtime=docker [--set-as-default] [--config=PATH]` merges the nvidia
runtime into docker's daemon.json (other keys kept, like the real one); every call is logged."""

import json
import sys
import time
from pathlib import Path

LOG = Path("/var/log/gpu-llm-testbed/calls.log")


def main(argv: list) -> int:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} nvidia-ctk {' '.join(argv)}\n")
    if argv[:1] == ["--version"] or argv[:1] == ["-v"]:
        print("NVIDIA Container Toolkit CLI version 1.17.8\ncommit: testbed")
        return 0
    if argv[:2] != ["runtime", "configure"]:
        return 0
    opts = {a.split("=", 1)[0]: (a.split("=", 1)[1] if "=" in a else True) for a in argv[2:]}
    if opts.get("--runtime", "docker") != "docker":
        print(f"unsupported runtime in testbed: {opts['--runtime']}", file=sys.stderr)
        return 1
    path = Path(opts.get("--config", "/etc/docker/daemon.json"))
    cfg = json.loads(path.read_text() or "{}") if path.exists() else {}
    cfg.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
    if opts.get("--set-as-default"):
        cfg["default-runtime"] = "nvidia"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=4) + "\n")
    print(f'level=info msg="Wrote updated config to {path}"')
    print('level=info msg="It is recommended that docker daemon be restarted."')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
