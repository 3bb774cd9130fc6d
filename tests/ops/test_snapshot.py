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
                          "services", "venv", "model", "download_unit", "docker", "verified", "apt_lists"}
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


def test_one_dpkg_query_one_systemctl_one_pci_scan_and_no_apt_cache() -> None:
    """The host's processes per read: dpkg, systemd and the PCI bus are asked once each, apt's lists not at all."""
    command = snapshot_command(Probe(model_dir="/m", download_unit="d.service", hf_venv="/v", packages=("bash",),
                                     services=("docker",)))
    assert command.count("dpkg-query") == 1 and command.count("systemctl") == 1
    assert command.count("/sys/bus/pci/devices/*") == 1 and "apt-cache" not in command
    assert command.count("$(curl ") == 2  # Docker's containers and images in one; the recorded checks (see below)
    assert " wc " not in command and "| tail" not in command and "sed " not in command


def test_driver_dpkg_sections_come_from_the_packages_part() -> None:
    """What the driver fact's own dpkg-queries gave (its packages, headers, kernel metapackages) from one query."""
    from gpu_llm.facts.snapshot import driver_dpkg_sections

    kernel = "6.8.0-60-generic"
    lines = ["kernel-flavour|generic", "hi |nvidia-driver-570-open|570.172.08-0ubuntu1", "ii |docker-ce|5:28.0.1-1",
             "ii |linux-headers-6.8.0-60-generic|6.8.0-60.63", "hi |linux-generic|6.8.0-60.63",
             "ii |linux-image-generic-hwe-24.04|6.8.0-60.63", "un |linux-headers-generic|",
             "ii |libnvidia-compute-570|570.172.08-0ubuntu1"]
    state = parse_snapshot(["##gpu-llm-part:driver", "##gpu-llm:kernel", kernel, "##gpu-llm-part:packages", *lines])
    assert set(state.driver.packages) == {"nvidia-driver-570-open", "libnvidia-compute-570"}
    assert state.driver.packages["nvidia-driver-570-open"].held and state.driver.headers == "installed"
    assert set(state.driver.kernel_meta) == {"linux-generic", "linux-image-generic-hwe-24.04"}
    assert state.driver.kernel_meta["linux-generic"].held
    without = [line for line in lines if "linux-headers-6.8" not in line]
    assert driver_dpkg_sections(without, kernel)[driver_dpkg_sections(without, kernel).index("##gpu-llm:headers") + 1] \
        == "unknown"  # not installed: whether apt has it is asked only by a DKMS install (operations.nvidia)


def test_kernel_flavour_in_the_shell_is_the_planners() -> None:
    """KERNEL_FLAVOUR (shell pattern removal) gives what gpu_llm.plan.datacenter.kernel_flavour gives."""
    from gpu_llm.facts.nvidia import KERNEL_FLAVOUR
    from gpu_llm.plan.datacenter import kernel_flavour

    for kernel in ("6.8.0-60-generic", "6.8.0-1030-aws", "6.8.0-1012-nvidia-64k", "6.8.0-generic",
                   "5.15.0-139-lowlatency-hwe-22.04"):
        out = subprocess.run(["sh", "-c", KERNEL_FLAVOUR.replace("$(uname -r)", kernel) + '; echo "$f"'],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == kernel_flavour(kernel), kernel


def test_recorded_checks_are_read_with_one_curl_and_no_environment(tmp_path: Path) -> None:
    """verified_command on a real shell: the container's id and start time and /health's status come back; its
    inspect answer (which holds the API key) does not."""
    import os

    from gpu_llm.facts.snapshot import parse_verified, verified_command

    bin_dir, run = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    run.mkdir()
    socket = tmp_path / "docker.sock"
    import socket as s

    listener = s.socket(s.AF_UNIX)
    listener.bind(str(socket))  # only has to exist as a socket: curl is a stub
    inspect = ('{"Id":"abc123","Created":"x","State":{"Status":"running","StartedAt":"2026-11-22T01:00:00Z",'
               '"FinishedAt":"0001-01-01T00:00:00Z"},"Config":{"Env":["VLLM_API_KEY=sk-secret"]}}')
    log = tmp_path / "curl.log"
    (bin_dir / "curl").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nprintf '%s\\n' '{inspect}'\n"
                                  "printf '~health=%s' \"$(cat " + str(tmp_path / "health") + ")\"\n")
    (bin_dir / "curl").chmod(0o755)
    (tmp_path / "health").write_text("200")
    (run / "verified-coder").write_text("abc123 2026-11-22T01:00:00Z http://127.0.0.1:8000\n")
    (run / "verified-old").write_text("abc123 2026-11-22T01:00:00Z\n")  # recorded by an older gpu-llm: no url
    command = verified_command(str(run), str(socket))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, env=env).stdout
    assert "sk-secret" not in out and "Env" not in out
    seen = parse_verified(out.splitlines())
    assert seen["coder"].holds("http://127.0.0.1:8000") and not seen["coder"].holds("http://127.0.0.1:9000")
    assert not seen["old"].holds("http://127.0.0.1:8000") and seen["old"].current == ""
    assert len(log.read_text().splitlines()) == 1  # one curl for coder (old has no url to check)
    (tmp_path / "health").write_text("503")
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, env=env).stdout
    assert not parse_verified(out.splitlines())["coder"].holds("http://127.0.0.1:8000")
    listener.close()


def test_docker_and_recorded_checks_through_real_curl(tmp_path: Path) -> None:
    """The docker and verified parts with the real curl (its -w text, --next, --unix-socket) against a stand-in
    Docker API on a unix socket and a /health on TCP; the answers split and parse as Docker's own would."""
    import http.server
    import json as js
    import os
    import shutil
    import socketserver
    import threading

    import pytest

    from gpu_llm.facts.snapshot import containers_command, parse_docker, parse_verified, verified_command

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    answers = {
        "/containers/json?all=1": [{"Id": "abc123", "Names": ["/coder"], "State": "running",
                                    "Labels": {"gpu-llm.spec-hash": "h1", "gpu-llm.managed": "true"}}],
        "/images/json": [{"RepoTags": ["vllm/vllm-openai:v0.11.0"], "RepoDigests": []}],
        "/containers/coder/json": {"Id": "abc123", "State": {"StartedAt": "2026-11-22T01:00:00Z"},
                                   "Config": {"Env": ["VLLM_API_KEY=sk-secret"]}},
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            found = self.path in answers or self.path == "/health"
            # compact, as Docker's Go encoder writes it (the shell matches "Id":" and "StartedAt":")
            answer = answers.get(self.path)
            body = (js.dumps(answer, separators=(",", ":")) + "\n").encode() if answer is not None else b""
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

        def address_string(self) -> str:
            return "local"

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    sock = str(tmp_path / "docker.sock")
    servers = [UnixServer(sock, Handler), http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{servers[1].server_address[1]}"
        run = tmp_path / "run"
        run.mkdir()
        (run / "verified-coder").write_text(f"abc123 2026-11-22T01:00:00Z {url}\n")
        command = containers_command(sock) + "; " + verified_command(str(run), sock)
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True,
                             env={**os.environ, "NO_PROXY": "*"}).stdout
        assert "sk-secret" not in out
        lines = out.splitlines()
        containers, images = parse_docker(lines)
        assert [c["Name"] for c in containers] == ["/coder"] and images == ["vllm/vllm-openai:v0.11.0"]
        assert parse_verified(lines)["coder"].holds(url)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_snapshot_cpu_benchmark_times_the_whole_read_and_every_part() -> None:
    from benchmarks.snapshot_cpu import commands

    from gpu_llm.facts.snapshot import PRELUDE

    cmds = commands()
    assert set(cmds) >= {"whole", "prelude", "gpus", "packages", "docker", "verified"}
    assert all(c.startswith(PRELUDE) for name, c in cmds.items() if name != "whole")
    assert cmds["whole"].startswith("o=$(" + PRELUDE)  # the whole read collects its output, printed at the end
    assert cmds["whole"].count("dpkg-query") == 1 and "dpkg-query" in cmds["packages"]


def test_systemctl_is_asked_only_for_units_with_a_unit_file(tmp_path: Path) -> None:
    """Units without a file in any unit directory get systemctl's not-found block from the shell; the others (a
    transient one included) come from one systemctl; both parse alike."""
    import os

    from gpu_llm.facts.snapshot import _services_command, parse_services

    etc, transient, lib = (tmp_path / d for d in ("etc", "transient", "lib"))
    for d in (etc, transient, lib):
        d.mkdir()
    (lib / "docker.service").write_text("[Unit]\n")
    (transient / "gpu-llm-model-download.service").write_text("[Unit]\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "asked"
    # a systemctl that records what it was asked and answers like `systemctl show` for each unit
    (bin_dir / "systemctl").write_text(
        f'#!/bin/sh\necho "$@" > {asked}\nshift 7\nfor u in "$@"; do case "$u" in *.*) ;; *) u=$u.service;; esac\n'
        'printf "Id=%s\\nActiveState=active\\nUnitFileState=enabled\\n\\n" "$u"; done\n')
    (bin_dir / "systemctl").chmod(0o755)
    units = ("docker", "prometheus", "gpu-llm-model-download.service", "grafana-server")
    command = _services_command(units, (str(etc), str(transient), str(lib)), booted=str(tmp_path))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, env=env).stdout
    assert asked.read_text().split() == ["show", "-p", "Id", "-p", "ActiveState", "-p", "UnitFileState", "--",
                                         "docker", "gpu-llm-model-download.service"]
    services = parse_services(out.splitlines())
    assert services["docker"].active == "active" and services["docker.service"].enabled == "enabled"
    assert services["gpu-llm-model-download.service"].active == "active"
    assert services["prometheus"].active == "inactive" and services["prometheus.service"].enabled == ""
    assert services["grafana-server"].active == "inactive"
    (etc / "grafana-server.service").symlink_to("/dev/null")  # a masked unit has a file: systemctl is asked
    asked.unlink()
    subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, env=env)
    assert "grafana-server" in asked.read_text().split()
    for f in (lib / "docker.service", transient / "gpu-llm-model-download.service", etc / "grafana-server.service"):
        f.unlink()
    asked.unlink()
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, env=env).stdout
    assert not asked.exists() and set(parse_services(out.splitlines())) >= {"docker", "prometheus.service"}
    # without systemd running, systemctl is asked for every unit, as before
    command = _services_command(units, (str(etc), str(transient), str(lib)), booted=str(tmp_path / "no-systemd"))
    subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, env=env)
    assert asked.read_text().split()[8:] == list(units)
