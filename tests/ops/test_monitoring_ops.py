"""gpu_llm.operations.monitoring: packages, configured services and the DCGM exporter container, decided from the
host snapshot (facts faked)."""

from __future__ import annotations

import hashlib

from gpu_llm.facts.files import FileState
from gpu_llm.facts.snapshot import Service
from gpu_llm.operations import monitoring as ops
from gpu_llm.operations import packages
from gpu_llm.plan.container import SPEC_LABEL, spec_hash
from tests.ops import opkit
from tests.ops.test_gateway_ops import run

CONF = "/etc/prometheus/prometheus.yml"
ENV = "/etc/gpu-llm/grafana.env"


def _facts(files: dict[str, FileState], active: str = "active", enabled: str = "enabled",
           unit: str = "prometheus", containers: list | None = None, packages: dict | None = None) -> dict:
    return {"Systemd": True, "FileStates": files, "Services": {unit: Service(active, enabled)},
            "DockerContainers": containers or [], "DebPackages": packages or {}}


def _same(content: bytes, mode: int = 644) -> FileState:
    return FileState("file", mode, "root", "root", hashlib.sha256(content).hexdigest())


def test_installed_packages_are_a_noop_and_missing_ones_refresh_lists_first():
    r = opkit.run(packages.packages, _facts({}, packages={"prometheus": ["2.45.3"]}), packages=["prometheus"],
                  update=True)
    assert r.commands == [] and r.noops
    r = opkit.run(packages.packages, _facts({}, packages={"prometheus": ["2.45.3"]}),
                  packages=["prometheus", "prometheus-node-exporter"], update=True)
    assert "apt-get" in r.commands[0] and r.commands[0].endswith(" update")
    assert r.commands[1].endswith("install prometheus-node-exporter")


def test_unchanged_config_and_running_service_is_a_noop():
    r = run(ops.configured_service, _facts({CONF: _same(b"x")}), unit="prometheus", files={CONF: (b"x", "644")},
            check=["promtool", "check", "config", CONF], ready_url="http://10.0.0.9:9090/-/ready")
    assert r.commands == [] and r.noops == ["prometheus is active with its current configuration"]


def test_changed_config_is_backed_up_once_checked_restarted_and_waited_for():
    r = run(ops.configured_service, _facts({CONF: _same(b"old")}), unit="prometheus", files={CONF: (b"new", "644")},
            check=["promtool", "check", "config", CONF], backup=(CONF,), ready_url="http://10.0.0.9:9090/-/ready")
    text = "\n".join(r.commands)
    assert f"[ -e {CONF}.before-gpu-llm ] || [ ! -f {CONF} ] || cp -p {CONF} {CONF}.before-gpu-llm" in text
    assert r.commands.index(f"promtool check config {CONF}") < r.commands.index("systemctl restart prometheus")
    assert "daemon-reload" not in text  # no unit file changed
    assert "curl -sf -o /dev/null http://10.0.0.9:9090/-/ready" in r.commands[-1]


def test_a_stopped_service_with_its_config_is_started_not_rewritten():
    r = run(ops.configured_service, _facts({CONF: _same(b"x")}, active="inactive", enabled="disabled"),
            unit="prometheus", files={CONF: (b"x", "644")})
    assert r.commands == ["systemctl enable prometheus", "systemctl start prometheus"]


def test_secret_file_is_made_0600_before_its_content_and_a_dropin_reloads_systemd():
    dropin = "/etc/systemd/system/grafana-server.service.d/gpu-llm.conf"
    r = run(ops.configured_service, _facts({}, active="inactive", enabled="disabled", unit="grafana-server"),
            unit="grafana-server", files={ENV: (b"GF_SECURITY_ADMIN_PASSWORD=s3cret-pw\n", "600"),
                                          dropin: (b"[Service]\n", "644")}, secret=(ENV,))
    text = "\n".join(r.commands)
    assert "s3cret-pw" not in text  # the content goes in an upload, never on a command line
    umask = r.commands.index(f"( umask 077 && touch {ENV} ) && chmod 600 {ENV}")
    assert umask < r.commands.index(f"chmod 600 {ENV}", umask + 1)
    assert "systemctl daemon-reload" in r.commands and r.commands[-1] == "systemctl start grafana-server"


def test_ready_loop_fails_naming_the_unit():
    loop = ops.ready_loop("http://127.0.0.1:3000/api/health", 5, "grafana-server did not answer")
    assert loop.startswith("for i in $(seq 5); do curl -sf -o /dev/null http://127.0.0.1:3000/api/health && exit 0;")
    assert loop.endswith("echo 'grafana-server did not answer' >&2; exit 1")


def test_dcgm_exporter_container_follows_its_spec():
    spec = ops.exporter_spec("gpu-llm-dcgm-exporter", "nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3-4.1.3-ubuntu22.04",
                             "10.0.0.5", 9400, "-1")
    running = {"Name": "/gpu-llm-dcgm-exporter", "Config": {"Labels": {SPEC_LABEL: spec_hash(spec)}},
               "State": {"Running": True, "Status": "running"}}
    r = run(ops.exporter_container, _facts({}, containers=[running]), spec=spec)
    assert r.commands == [] and r.noops
    stopped = {**running, "State": {"Running": False, "Status": "exited"}}
    assert run(ops.exporter_container, _facts({}, containers=[stopped]), spec=spec).commands == \
        ["docker start gpu-llm-dcgm-exporter"]
    other = {**running, "Config": {"Labels": {SPEC_LABEL: "old"}}}
    r = run(ops.exporter_container, _facts({}, containers=[other]), spec=spec)
    assert r.commands[1] == "docker rm -f gpu-llm-dcgm-exporter"
    run_line = r.commands[2]
    assert "--gpus all" in run_line and "--cap-add SYS_ADMIN" in run_line and "-p 10.0.0.5:9400:9400" in run_line
    assert "gpu-llm.managed" not in run_line  # the vLLM step must never take it for one of its instances
    assert run_line.endswith(spec["image"]) and "--ulimit memlock=-1" in run_line
    r = run(ops.exporter_container, _facts({}), spec=spec)
    assert r.commands[0].startswith("docker image inspect") and "docker pull --quiet" in r.commands[0]
