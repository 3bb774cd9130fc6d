"""hf_token and vllm_api_key never leak: not in pyinfra's output at any verbosity, `ps`, readable files or docker's command line.

One host for the module. The converging run is at --debug; before each of the -v, -vv and -vvv runs the token
file, the API-key env file, the container and one model file are removed/truncated, so every run handles both
secrets again (token -> download, key -> env file, container, verify). `ps -eo args` is sampled on the host
every 0.2 s through all four runs by one ssh session streaming to the test.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.e2e.conftest import base_data, prepared_host
from tests.testbed.harness import Host, Testbed
from tests.testbed.pyinfra_run import DeployResult, run_deploy, write_inventory

pytestmark = pytest.mark.e2e

TOKEN = f"hf_e2eSecretToken{uuid.uuid4().hex}"
API_KEY = f"sk-e2e-secret-key-{uuid.uuid4().hex}"
MODEL_DIR = "/home/llm/model/qwen/Qwen3-32B-AWQ"
SEARCHED = "/etc /opt /var/log /home /tmp /root"
VERBOSITIES = ("--debug", "-v", "-vv", "-vvv")
REDO = ("rm -f /etc/gpu-llm/hf-token /etc/gpu-llm/coder.env && docker rm -f coder >/dev/null && "
        f"truncate -s 10 $(ls -S {MODEL_DIR}/*.safetensors | head -1)")


class PsSampler:
    """One ssh session printing `ps -eo args` every 0.2 s on the host; `lines` collects what it printed."""

    def __init__(self, host: Host) -> None:
        loop = "while :; do ps -eo args; echo '--- sample'; sleep 0.2; done"
        self.proc = subprocess.Popen([*host.ssh_args(), loop], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=10)

    @property
    def samples(self) -> int:
        return self.lines.count("--- sample")


@dataclass
class Secrets:
    host: Host
    runs: dict[str, DeployResult] = field(default_factory=dict)
    ps: list[str] = field(default_factory=list)
    ps_samples: int = 0


@pytest.fixture(scope="module")
def secrets(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secrets]:
    host, data = prepared_host(testbed, "h200-x1", "--require-token", TOKEN, hf_token=TOKEN, vllm_api_key=API_KEY)
    inv = write_inventory(tmp_path_factory.mktemp("secrets") / "inventory.py", [host], data, base_data(testbed))
    s = Secrets(host)
    sampler = PsSampler(host)
    try:
        for flag in VERBOSITIES:
            if s.runs:
                assert host.ssh(REDO).returncode == 0
            s.runs[flag] = run_deploy(inv, "deploy.py", flag)
    finally:
        sampler.stop()
    s.ps, s.ps_samples = sampler.lines, sampler.samples
    yield s


@pytest.mark.parametrize("flag", VERBOSITIES)
def test_not_in_pyinfra_output(secrets: Secrets, flag: str) -> None:
    res = secrets.runs[flag]
    assert res.rc == 0 and res.errors == 0, res.output[-4000:]
    assert res.changed > 0  # the run really handled the secrets again
    assert TOKEN not in res.output and API_KEY not in res.output


def test_not_in_ps_during_the_runs(secrets: Secrets) -> None:
    print(f"[secrets] {secrets.ps_samples} ps samples over {len(VERBOSITIES)} runs")
    # the sampler really ran through the deploys: it sampled repeatedly and caught the step that uses the token
    assert secrets.ps_samples >= 4 * len(VERBOSITIES)
    assert any("gpu-llm-download.py" in line for line in secrets.ps), "no sample caught the model download"
    leaks = [line for line in secrets.ps if TOKEN in line or API_KEY in line]
    assert not leaks, leaks[:5]


def test_not_in_world_readable_files(secrets: Secrets) -> None:
    found = secrets.host.ssh(f"grep -rlsF -e {TOKEN} -e {API_KEY} {SEARCHED} | xargs -r stat -c '%a %U %n'").stdout
    modes = [line.split(" ", 2) for line in found.splitlines()]
    print("[secrets] files holding a secret (mode owner path):", *(" ".join(m) for m in modes), sep="\n  ")
    assert {m[2] for m in modes} >= {"/etc/gpu-llm/hf-token", "/etc/gpu-llm/coder.env"}  # the grep does find them
    exposed = [m for m in modes if (m[0], m[1]) != ("600", "root")]
    assert not exposed, exposed


def test_not_in_the_container_command_line(secrets: Secrets) -> None:
    c = json.loads(secrets.host.ssh("docker inspect coder").stdout)[0]
    cmdline = json.dumps([c["Path"], c["Args"], c["Config"]["Cmd"], c["Config"]["Entrypoint"]])
    assert "--served-model-name" in cmdline
    assert API_KEY not in cmdline and TOKEN not in cmdline


def test_api_refuses_requests_without_the_key(secrets: Secrets) -> None:
    curl = "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/v1/models"
    without = secrets.host.ssh(curl).stdout
    wrong = secrets.host.ssh(curl + " -H 'Authorization: Bearer wrong-key-123'").stdout
    with_key = secrets.host.ssh(curl + " -H @-", input=f"Authorization: Bearer {API_KEY}\n").stdout
    assert (without, wrong, with_key) == ("401", "401", "200")
