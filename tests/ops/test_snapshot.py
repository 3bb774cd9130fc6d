"""The host snapshot: one shell command gathers every part, each part parsed by its own fact's parser."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from gpu_llm.facts.snapshot import HostSnapshot, Probe, parse_snapshot, snapshot_command, split_parts

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_one_command_reads_every_part_on_a_real_shell(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    conf = tmp_path / "x.conf"
    conf.write_bytes(b"blacklist nouveau\n")
    source = tmp_path / "docker.list"
    source.write_text("deb [signed-by=/k.asc] https://download.docker.com/linux/ubuntu noble stable\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".gpu-llm-requirements").write_text("requests\n")
    probe = Probe(model_dir=str(model), download_unit="gpu-llm-test.service", hf_venv=str(venv),
                  paths=(str(conf), str(tmp_path / "absent")), packages=("bash",), sources=(str(source),),
                  services=("gpu-llm-test",))
    out = subprocess.run(["sh", "-c", snapshot_command(probe)], capture_output=True, text=True, check=True)
    parts = split_parts(out.stdout.splitlines())
    assert set(parts) == {"preflight", "systemd", "driver", "gpus", "packages", "files", "sources", "daemon",
                          "services", "venv", "model", "docker"}
    state = HostSnapshot().process(out.stdout.splitlines())
    assert state.preflight.uid >= 0 and state.preflight.arch and state.preflight.release.get("ID")
    assert state.files[str(conf)].sha256 == hashlib.sha256(b"blacklist nouveau\n").hexdigest()
    assert state.files[str(tmp_path / "absent")].kind == "absent"
    assert state.sources[str(source)] == [source.read_text().strip()]
    assert state.venv_marker == "requests"
    assert state.model.sizes == {"config.json": 2} and state.model.manifest is None
    assert "bash" in state.packages  # dpkg-query answered for an installed package
    assert state.distro["release_meta"]["ID"] == state.preflight.release["ID"]


def test_parts_are_parsed_apart_even_when_docker_is_missing() -> None:
    lines = ["##gpu-llm-part:preflight", "##gpu-llm:uid", "0", "##gpu-llm-part:systemd", "yes",
             "##gpu-llm-part:services", "Id=docker.service", "ActiveState=active", "UnitFileState=enabled", "",
             "Id=gpu-llm-watchdog.service", "ActiveState=failed", "UnitFileState=", "##gpu-llm-part:docker",
             "ctr|coder|running|0123abcd|true", "ctr|other|exited||", "image vllm/vllm-openai:v0.11.0",
             "##gpu-llm-part:packages", "ii |docker-ce|5:28.0.1-1~ubuntu.24.04~noble", "rc |docker.io|1",
             "hi |nvidia-driver-570-open|570.172.08-0ubuntu1"]
    state = parse_snapshot(lines)
    assert state.systemd and state.preflight.uid == 0
    assert state.service("docker").active == "active" and state.service("other").active == ""
    assert state.service("gpu-llm-watchdog.service") == state.service("gpu-llm-watchdog")
    assert state.service("gpu-llm-watchdog").active == "failed"
    assert [c["Name"] for c in state.containers] == ["/coder", "/other"] and state.images == ["vllm/vllm-openai:v0.11.0"]
    assert state.containers[0]["Config"]["Labels"] == {"gpu-llm.spec-hash": "0123abcd", "gpu-llm.managed": "true"}
    assert state.containers[1]["State"] == {"Running": False, "Status": "exited"}
    assert state.packages == {"docker-ce": ["5:28.0.1-1~ubuntu.24.04~noble"],
                              "nvidia-driver-570-open": ["570.172.08-0ubuntu1"]}
    empty = parse_snapshot([])
    assert empty.containers == [] and not empty.systemd and empty.gpus.smi == "missing"


def test_every_path_the_deploys_manage_is_in_the_probe() -> None:
    """A path an op reads but the probe lacks would read as unknown (and refuse): the probe lists them all."""
    from gpu_llm import layout
    from gpu_llm.settings import from_data

    s = from_data({"vllm_instances": [{"name": "a1", "port": 8001, "gpus": [0]}, {"name": "a2", "port": 8002,
                                                                                    "gpus": [1]}]})
    p = layout.probe(s)
    for path in (layout.template_path(s), layout.env_file_path(s.vllm_config_dir, "a1"),
                 layout.env_file_path(s.vllm_config_dir, "a2"), layout.token_path(s), layout.UDEV_RULE,
                 layout.DRIVER_PIN, layout.keyring_deb(s.nvidia_cuda_keyring_version), s.model_dir):
        assert path in p.paths
    assert "/etc/apt/sources.list.d/docker.list" in p.sources and "docker" in p.services


def test_a_part_ending_without_newline_does_not_swallow_the_next_marker(tmp_path: Path, monkeypatch) -> None:
    """daemon.json is often written without a trailing newline: the next part's marker must still start a line."""
    from gpu_llm.facts import docker_daemon

    daemon = tmp_path / "daemon.json"
    daemon.write_text('{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}')  # no newline at the end
    monkeypatch.setattr(docker_daemon.DockerDaemonJson, "command",
                        lambda self: f"echo present; cat {daemon}")
    probe = Probe(model_dir=str(tmp_path), download_unit="x.service", hf_venv=str(tmp_path / "v"),
                  services=("gpu-llm-test",))
    out = subprocess.run(["sh", "-c", snapshot_command(probe)], capture_output=True, text=True, check=True)
    state = parse_snapshot(out.stdout.splitlines())
    assert state.daemon.error == "" and "nvidia" in state.daemon.data["runtimes"]
    assert "services" in split_parts(out.stdout.splitlines())  # the marker after daemon.json's last line


def test_container_part_carries_no_environment() -> None:
    """The API key reaches the container through its env file: the snapshot must not read Config.Env back."""
    from gpu_llm.facts.snapshot import CONTAINERS_COMMAND

    assert "/containers/json" in CONTAINERS_COMMAND and "docker ps" in CONTAINERS_COMMAND
    assert "inspect" not in CONTAINERS_COMMAND and "Env" not in CONTAINERS_COMMAND
    assert "Env" not in (FIXTURES / "docker" / "snapshot-api.txt").read_text()


def test_docker_api_and_cli_answers_parse_to_the_same_state() -> None:
    """Recorded on a converged testbed host (tests/fixtures/docker/README.md): curl on Docker's socket, and the CLI
    where curl is missing."""
    from gpu_llm.facts.snapshot import parse_docker

    api = parse_docker((FIXTURES / "docker" / "snapshot-api.txt").read_text().splitlines())
    cli = parse_docker((FIXTURES / "docker" / "snapshot-cli.txt").read_text().splitlines())
    assert api == cli
    (coder,), images = api
    assert coder["Name"] == "/coder" and coder["State"] == {"Running": True, "Status": "running"}
    assert set(coder["Config"]["Labels"]) == {"gpu-llm.spec-hash", "gpu-llm.managed"}
    assert images == ["vllm/vllm-openai:v0.11.0"]
    stopped = parse_docker(['docker-api containers [{"Names": ["/x"], "State": "exited", "Labels": {}}]',
                            'docker-api images [{"RepoTags": ["<none>:<none>"], "RepoDigests": ["a/b@sha256:1"]}]'])
    assert stopped == ([{"Name": "/x", "Config": {"Labels": {}}, "State": {"Running": False, "Status": "exited"}}],
                       ["a/b@sha256:1"])
    assert parse_docker(["docker-api containers ", "docker-api images "]) == ([], [])  # daemon down: curl -f fails


def _snapshot_with_gpu_part(smi: list[str], rc: str) -> list[str]:
    from gpu_llm.facts.snapshot import PART

    return [f"{PART}driver", "##gpu-llm:dpkg", "##gpu-llm:module", "##gpu-llm:kernel", "6.8.0-60-generic",
            f"{PART}gpus", "##gpu-llm:pci", "##gpu-llm:smi", *smi, "##gpu-llm:rc", rc]


def test_nvidia_smi_runs_once_and_the_driver_state_comes_from_the_gpu_part() -> None:
    """The driver part asks no nvidia-smi of its own: its state, version and CUDA come from the GPU part's query."""
    from gpu_llm.facts.nvidia import driver_cuda

    command = snapshot_command(Probe(model_dir="/m", download_unit="d.service", hf_venv="/v"))
    assert command.count("nvidia-smi --query-gpu=index,name") == 1 and "out=$(nvidia-smi 2>&1)" not in command
    # the real H200 host (tests/fixtures/h200-host/smi-q.txt): driver 580.159.04 shows "CUDA Version : 13.0"
    real = (FIXTURES / "h200-host" / "smi-q.txt").read_text()
    assert "580.159.04" in real and "CUDA Version                                           : 13.0" in real
    assert driver_cuda("580.159.04") == "13.0" and driver_cuda("570.172.08") == "12.8" and driver_cuda(None) is None
    ok = parse_snapshot(_snapshot_with_gpu_part(
        ["0, NVIDIA H200, GPU-eb3db77d, 143771, 9.0, 580.159.04, 00000000:00:06.0"], "0"))
    assert (ok.driver.smi, ok.driver.smi_driver, ok.driver.smi_cuda) == ("ok", "580.159.04", "13.0")
    assert ok.driver.kernel == "6.8.0-60-generic" and ok.gpus.gpus[0].name == "NVIDIA H200"
    no_driver = (FIXTURES / "nvidia-smi" / "smi-no-driver.txt").read_text().splitlines()
    down = parse_snapshot(_snapshot_with_gpu_part(no_driver, "9"))
    assert down.driver.smi == "no-driver" == down.gpus.smi and down.driver.smi_driver is None
    assert "couldn't communicate with the NVIDIA driver" in down.driver.smi_message
    mismatch = (FIXTURES / "nvidia-smi" / "smi-mismatch.txt").read_text().splitlines()
    assert parse_snapshot(_snapshot_with_gpu_part(mismatch, "18")).driver.smi == "mismatch"
    assert parse_snapshot([]).driver.smi == "missing"
