"""Drift repair: break a converged host, re-run the real deploy.py, assert each thing is repaired and the next run is 0 changes.

Budget: one converged host for the module. The independent breaks of round A are applied together, repaired by
ONE run, then each repair is asserted by its own parametrized test; "container removed" conflicts with round A's
hand-made container of the same name, so it is round B (its own break, repair and 0-change run).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import module_runner, prepared_host
from tests.testbed.harness import Host, Testbed
from tests.testbed.pyinfra_run import DeployResult

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[2]
TEMPLATE = "/etc/gpu-llm/qwen3_nonthinking.jinja"
DAEMON_JSON = "/etc/docker/daemon.json"
SOURCES = "/etc/apt/sources.list.d"
MODEL_DIR = "/home/llm/model/qwen/Qwen3-32B-AWQ"
CONTAINER = "coder"


def sh(host: Host, cmd: str) -> str:
    res = host.ssh(cmd)
    assert res.returncode == 0, f"{cmd!r} on {host.name}: rc {res.returncode}\n{res.stdout}{res.stderr}"
    return res.stdout


def inspect(host: Host, name: str = CONTAINER) -> dict:
    return json.loads(sh(host, f"docker inspect {name}"))[0]


# What each repair test compares (raw output, so a broken host reads as its error). key -> shell command.
PROBES = {
    "container": (f"docker inspect -f '{{{{index .Config.Labels \"gpu-llm.spec-hash\"}}}} {{{{json .Config.Cmd}}}} "
                  f"{{{{.State.Running}}}}' {CONTAINER}"),
    "template": f"sha256sum {TEMPLATE}",
    "runtimes": f"python3 -c 'import json; print(sorted(json.load(open(\"{DAEMON_JSON}\")).get(\"runtimes\", {{}})))'",
    "holds": "apt-mark showhold",
    "model_file": f"f=$(ls -S {MODEL_DIR}/*.safetensors | head -1); stat -c '%n %s' $f; sha256sum < $f",
    "sources": f"cd {SOURCES} && sha256sum *.list",
    "docker_active": "systemctl is-active docker",
}


def state(host: Host) -> dict[str, str]:
    return {key: (lambda r: r.stdout + r.stderr)(host.ssh(cmd)) for key, cmd in PROBES.items()}


# Round A: independent breaks applied together (order matters only for Docker: hand-made container and
# daemon.json edit first, the service stop last). key -> shell command.
BREAKS = {
    # memlock: the guest's own hard limit (runc cannot raise it on a machine without CAP_SYS_RESOURCE)
    "container recreated by hand": (f"docker rm -f {CONTAINER} && l=$(ulimit -Hl) && {{ [ $l = unlimited ] && l=-1 "
                                    f"|| l=$((l * 1024)); }} && docker run -d --name {CONTAINER} --ulimit memlock=$l "
                                    "--entrypoint sleep $(docker images --format '{{.Repository}}:{{.Tag}}' "
                                    "vllm/vllm-openai | head -1) infinity"),
    "template edited on the host": f"echo '{{# edited by hand #}}' >> {TEMPLATE}",
    "nvidia runtime removed from daemon.json": (
        "python3 -c 'import json; p=\"" + DAEMON_JSON + "\"; d=json.load(open(p)); d.pop(\"runtimes\");"
        " json.dump(d, open(p, \"w\"))'"),
    "apt hold removed from the driver": "apt-mark unhold $(apt-mark showhold)",
    "model file truncated": f"truncate -s 1000 $(ls -S {MODEL_DIR}/*.safetensors | head -1)",
    "vendor repo source files deleted": f"rm {SOURCES}/docker.list {SOURCES}/cuda-ubuntu2404-x86_64.list",
    "docker service stopped": "systemctl stop docker.socket docker",
}
# which state() entries each break must have changed, and the repair must restore
TOUCHES = {
    "container recreated by hand": ["container"],
    "template edited on the host": ["template"],
    "nvidia runtime removed from daemon.json": ["runtimes"],
    "apt hold removed from the driver": ["holds"],
    "model file truncated": ["model_file"],
    "vendor repo source files deleted": ["sources"],
    "docker service stopped": ["docker_active"],
}


@dataclass
class Round:
    host: Host
    data: dict[str, dict]
    baseline: dict[str, str]
    broken: dict[str, str] = field(default_factory=dict)
    repaired: dict[str, str] = field(default_factory=dict)
    repair: DeployResult | None = None
    after: DeployResult | None = None


@pytest.fixture(scope="module")
def round_a(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Round]:
    run = module_runner(testbed, tmp_path_factory.mktemp("drift"))
    host, data = prepared_host(testbed)
    first = run([host], data)
    assert first.rc == 0 and first.errors == 0, first.output[-4000:]
    r = Round(host, data, state(host))
    assert r.baseline["container"].rstrip().endswith("true") and "nvidia" in r.baseline["runtimes"] and r.baseline["holds"].strip()
    for cmd in BREAKS.values():
        sh(host, cmd)
    r.broken = state(host)
    r.repair = run([host], data)
    r.repaired = state(host)
    r.after = run([host], data)
    yield r


@pytest.mark.parametrize("what", list(BREAKS))
def test_round_a_repaired(round_a: Round, what: str) -> None:
    assert round_a.repair is not None and round_a.repair.rc == 0 and round_a.repair.errors == 0, \
        round_a.repair.output[-4000:]
    for key in TOUCHES[what]:
        assert round_a.broken[key] != round_a.baseline[key], f"{what}: the break had no effect on {key}"
        assert round_a.repaired[key] == round_a.baseline[key], f"{what}: {key} not repaired"
    if what == "container recreated by hand":
        c = inspect(round_a.host)
        assert c["Config"]["Labels"].get("gpu-llm.managed") == "true" and c["Config"]["Entrypoint"] != ["sleep"]
    if what == "nvidia runtime removed from daemon.json":
        runtimes = json.loads(sh(round_a.host, "docker info --format '{{json .Runtimes}}'"))
        assert "nvidia" in runtimes, f"dockerd was not restarted with the runtime: {runtimes}"


def test_round_a_next_run_changes_nothing(round_a: Round) -> None:
    assert round_a.after is not None and round_a.after.rc == 0, round_a.after.output[-4000:]
    assert round_a.after.changed == 0, f"run after the repair changed: {round_a.after.changed_ops}"


def test_container_removed_is_recreated(round_a: Round, testbed: Testbed,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    host = round_a.host
    run = module_runner(testbed, tmp_path_factory.mktemp("drift-b"))
    sh(host, f"docker rm -f {CONTAINER}")
    assert host.ssh(f"docker inspect {CONTAINER}").returncode != 0
    repair = run([host], round_a.data)
    assert repair.rc == 0 and repair.errors == 0, repair.output[-4000:]
    assert state(host)["container"] == round_a.baseline["container"]
    after = run([host], round_a.data)
    assert after.rc == 0 and after.changed == 0, after.changed_ops or after.output[-4000:]
