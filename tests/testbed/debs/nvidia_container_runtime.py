#!/usr/bin/python3
"""Stand-in nvidia-container-runtime: checks the container's NVIDIA_REQUIRE_* as nvidia-container-cli does, then runc.

Shipped as /usr/bin/nvidia-container-runtime by the testbed's nvidia-container-toolkit-base package. On `create`
it reads the OCI bundle's config.json; a container that asks for GPUs (NVIDIA_VISIBLE_DEVICES set, not void/none)
has each NVIDIA_REQUIRE_* variable (and, without NVIDIA_REQUIRE_CUDA, "cuda>=<CUDA_VERSION's major.minor>")
evaluated per visible GPU, unless NVIDIA_DISABLE_REQUIRE is true, with the rules of libnvidia-container
(github.com/NVIDIA/libnvidia-container src/cli/dsl.c dsl_evaluate: space-separated terms ORed, comma-separated
conditions ANDed, versions compared numerically part by part, strings case-insensitively; src/cli/configure.c: rules
cuda (the driver's CUDA version), driver (its version), arch (compute capability), brand). A failed requirement
stops the container with nvidia-container-cli's message ("requirement error: unsatisfied condition: cuda>=12.9,
please update your driver to a newer version, or use an earlier cuda container"), which docker reports as
"OCI runtime create failed: ..." (vllm#18813 quotes the real one). The real check runs in the prestart hook; here it
runs before runc, with the same outcome for docker.

GPUs come from /etc/gpu-llm-testbed/gpus.json and the loaded driver from /run/gpu-llm-testbed/loaded-driver (the
nvidia-smi stand-in's sources); the brand from the GPU's name (GeForce/TITAN, else NVIDIA), as
gpu_llm.plan.versions.gpu_brand.
"""

import json
import os
import sys
import time
from pathlib import Path

GPUS = Path("/etc/gpu-llm-testbed/gpus.json")
LOADED = Path("/run/gpu-llm-testbed/loaded-driver")
LOG = Path("/var/log/gpu-llm-testbed/calls.log")
CUDA = {"570": "12.8", "575": "12.9", "580": "13.0"}  # CUDA version each driver branch reports (as nvidia_smi.py)
OPERATORS = ("<=", ">=", "!=", "<", ">", "=")


def compare_version(have: str, op: str, want: str) -> bool:
    a = [int(p) for p in have.split(".") if p]
    b = [int(p) for p in want.split(".") if p]
    width = max(len(a), len(b))
    a, b = a + [0] * (width - len(a)), b + [0] * (width - len(b))
    return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def brand(name: str) -> str:
    lowered = name.lower()
    return "geforce" if "geforce" in lowered else "titan" if "titan" in lowered else "nvidia"


def rule(expr: str, facts: dict) -> bool:
    for op in OPERATORS:
        key, sep, want = expr.partition(op)
        if sep and key and want and not any(c in key for c in "<>=!"):
            break
    else:
        raise ValueError("invalid expression")
    key = key.lower()
    if key == "brand":
        if op not in ("=", "!="):
            raise ValueError("invalid expression")
        return (facts["brand"].lower() == want.lower()) == (op == "=")
    if key in ("cuda", "driver", "arch"):
        return compare_version(facts[key], op, want)
    raise ValueError("invalid expression")


def satisfied(predicate: str, facts: dict) -> bool:
    """dsl_evaluate: true when any space-separated term has all its comma-separated conditions true."""
    return any(all(rule(cond, facts) for cond in term.split(",") if cond)
               for term in predicate.split(" ") if term)


def requirements(env: dict) -> list[str]:
    reqs = [v for k, v in sorted(env.items()) if k.startswith("NVIDIA_REQUIRE_") and v]
    if "NVIDIA_REQUIRE_CUDA" not in env and env.get("CUDA_VERSION"):
        major_minor = ".".join(env["CUDA_VERSION"].split(".")[:2])
        reqs.append(f"cuda>={major_minor}")
    return reqs


def check(bundle: Path) -> str | None:
    """The requirement error for the container in `bundle`, or None when it may start."""
    config = json.loads((bundle / "config.json").read_text())
    env = dict(item.split("=", 1) for item in (config.get("process") or {}).get("env") or [] if "=" in item)
    visible = env.get("NVIDIA_VISIBLE_DEVICES", "")
    if not visible or visible in ("void", "none"):
        return None
    if env.get("NVIDIA_DISABLE_REQUIRE", "").lower() in ("1", "true", "yes"):
        return None
    driver = LOADED.read_text().strip() if LOADED.exists() else ""
    if not driver:
        return "nvidia-container-cli: initialization error: nvml error: driver not loaded"
    gpus = json.loads(GPUS.read_text()) if GPUS.exists() else []
    wanted = (range(len(gpus)) if visible == "all"
              else [int(i) for i in visible.split(",") if i.strip().isdigit() and int(i) < len(gpus)])
    for req in requirements(env):
        for i in wanted:
            facts = {"cuda": CUDA.get(driver.split(".")[0], "0"), "driver": driver,
                     "arch": gpus[i]["compute_cap"], "brand": brand(gpus[i]["name"])}
            try:
                ok = satisfied(req, facts)
            except ValueError as exc:
                return f"nvidia-container-cli: requirement error: {exc}"
            if not ok:
                first = req.split(" ")[0]
                tail = (", please update your driver to a newer version, or use an earlier cuda container"
                        if first.startswith("cuda>=") else "")
                return f"nvidia-container-cli: requirement error: unsatisfied condition: {first}{tail}"
    return None


SWITCHES = Path("/etc/gpu-llm-testbed/nvswitches.json")
FABRIC = Path("/run/gpu-llm-testbed/fabric-state")


def hand_fabric_state(bundle: Path) -> None:
    """On an NVSwitch host, tell the container's CUDA stand-in the fabric state at its start (the real CUDA asks the
    driver, which answers error 802 "system not yet initialized" until the fabric manager has configured the fabric):
    GPU_LLM_TESTBED_FABRIC in the process environment, read by standins/fake_vllm.py."""
    switches = json.loads(SWITCHES.read_text()) if SWITCHES.exists() else []
    if not switches:
        return
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    process = config.setdefault("process", {})
    env = [e for e in process.get("env") or [] if not e.startswith("GPU_LLM_TESTBED_FABRIC=")]
    visible = dict(e.split("=", 1) for e in env if "=" in e).get("NVIDIA_VISIBLE_DEVICES", "")
    if not visible or visible in ("void", "none"):
        return
    state = FABRIC.read_text().strip() if FABRIC.exists() else "Not Started"
    process["env"] = [*env, f"GPU_LLM_TESTBED_FABRIC={state}"]
    path.write_text(json.dumps(config))


def report(argv: list[str], error: str) -> None:
    """Write the error where containerd reads an OCI runtime's error: the --log file, in runc's JSON lines when
    --log-format json (docker then prints "OCI runtime create failed: <error>: unknown")."""
    log = next((argv[i + 1] for i, a in enumerate(argv) if a == "--log" and i + 1 < len(argv)), None)
    if not log:
        return
    as_json = "json" in [argv[i + 1] for i, a in enumerate(argv) if a == "--log-format" and i + 1 < len(argv)]
    line = (json.dumps({"level": "error", "msg": error, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            if as_json else f"level=error msg={error!r}")
    with open(log, "a") as fh:
        fh.write(line + "\n")


def main(argv: list[str]) -> int:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as log:
        log.write(f"nvidia-container-runtime {' '.join(argv)}\n")
    if "create" in argv:
        bundle = None
        for i, arg in enumerate(argv):
            if arg in ("--bundle", "-b") and i + 1 < len(argv):
                bundle = Path(argv[i + 1])
            elif arg.startswith("--bundle="):
                bundle = Path(arg.split("=", 1)[1])
        if bundle is not None and (bundle / "config.json").exists():
            error = check(bundle)
            if error:
                print(error, file=sys.stderr)
                report(argv, error)
                return 1
            hand_fabric_state(bundle)
    os.execvp("runc", ["runc", *argv])
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
