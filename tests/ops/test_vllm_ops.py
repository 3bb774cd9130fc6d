"""gpu_llm.operations.vllm: noop/recreate/remove decisions and the commands they yield (host facts faked)."""

from __future__ import annotations

from typing import Any

from contextlib import ExitStack

import pytest
from pyinfra.api import FileUploadCommand, HiddenValue
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.docker import DockerContainers

from gpu_llm.defaults import DEFAULTS
from gpu_llm.facts.container import VllmVerdict, parse_verdict, verify_command
from gpu_llm.facts.files import FileState, FileStates
from gpu_llm.facts.gpu import GpuInventory, NvidiaGpus
from gpu_llm.operations import vllm as ops
from gpu_llm.plan import ServeConfig, plan_instances
from gpu_llm.plan.container import MANAGED_LABEL, SPEC_LABEL, container_spec, spec_hash
from gpu_llm.plan.types import GPU
from gpu_llm.settings import Settings
from tests.ops import opkit

H200 = [GPU(index=0, name="NVIDIA H200", memory_mib=143771, compute_capability=(9, 0),
            driver_version="570.153.02")]
TEMPLATE_SHA = "t" * 64


class FakeHost(opkit.FakeHost):
    """opkit's fake (snapshot parts keyed by fact class name), VllmVerdict answered per URL; records logs."""

    def get_fact(self, cls, *args, **kwargs):
        if cls is VllmVerdict:
            self.verdict_calls = [*getattr(self, "verdict_calls", []), kwargs]
            return self.facts[(cls, kwargs["url"])]
        return super().get_fact(cls, *args, **kwargs)

    def log(self, message: str) -> None:
        self.logs.append(message)


@pytest.fixture
def fake():
    """fake(facts, executing=True) makes a FakeHost the current pyinfra host (facts keyed by fact class)."""
    stack = ExitStack()

    def install(facts: dict[Any, Any], executing: bool = True) -> FakeHost:
        merged = {NvidiaGpus: GpuInventory(smi="ok", gpus=H200), **facts}
        h = FakeHost({k if isinstance(k, (tuple, str)) else k.__name__: v for k, v in merged.items()})
        stack.enter_context(ctx_state.use(opkit.FakeState(is_executing=executing)))
        stack.enter_context(ctx_host.use(h))
        return h

    with stack:
        yield install


def settings(**overrides: Any) -> ServeConfig:
    """The operations' input: the plan input of these settings."""
    return ServeConfig.from_settings(Settings.from_data({**DEFAULTS, "vllm_image": "vllm/vllm-openai:v0.10.1",
                                                         **overrides}))


def wanted_hash(s: ServeConfig, key: str | None = None) -> str:
    import hashlib
    [plan] = plan_instances(H200, s)
    digest = hashlib.sha256(key.encode()).hexdigest() if key else None
    return spec_hash(container_spec(plan, TEMPLATE_SHA, api_key_sha256=digest))


def container(name: str, spec: str, running: bool = True, managed: bool = True) -> dict[str, Any]:
    labels = {SPEC_LABEL: spec, **({MANAGED_LABEL: "true"} if managed else {})}
    return {"Name": "/" + name, "Config": {"Labels": labels},
            "State": {"Running": running, "Status": "running" if running else "exited"}}


def commands(gen) -> list[str]:
    out = []
    for c in gen:
        out.append(f"UPLOAD {c.dest}" if isinstance(c, FileUploadCommand) else c.get_raw_value())
    return out


def run_instances(s, **kwargs) -> list[str]:
    return commands(ops.instances._inner(s, TEMPLATE_SHA, **kwargs))


def verify(s: ServeConfig, health_timeout: int = 1200, smoke_test: bool = True) -> list[str]:
    return commands(ops.verified._inner(s, "/py", "/verify.py", health_timeout, smoke_test))


def test_same_spec_running_is_a_noop(fake):
    s = settings()
    h = fake({DockerContainers: [container("coder", wanted_hash(s))]})
    assert run_instances(s) == []
    assert h.noops == [f"container coder runs spec {wanted_hash(s)[:12]}"]


def test_missing_container_is_created_with_label_on_loopback(fake):
    s = settings()
    fake({DockerContainers: []})
    cmds = run_instances(s)
    run = cmds[-1]
    assert run.startswith("docker run -d --name coder")
    assert f"{SPEC_LABEL}={wanted_hash(s)}" in run
    assert "127.0.0.1:8000:8000" in run and "--env-file" not in run
    assert not any(c.startswith("docker rm") for c in cmds)


def test_changed_flag_recreates_and_says_old_to_new(fake):
    old = wanted_hash(settings())
    s = settings(vllm_max_num_seqs=64)
    h = fake({DockerContainers: [container("coder", old)]})
    cmds = run_instances(s)
    assert "docker rm -f coder" in cmds
    assert "--max-num-seqs 64" in cmds[-1]
    [log] = h.logs
    assert log.startswith(f"container coder: (re)create, spec {old[:12]} -> {wanted_hash(s)[:12]}: ")
    assert "--max-num-seqs 64" in log  # the log shows what the new container runs


def test_stopped_container_is_recreated(fake):
    s = settings()
    h = fake({DockerContainers: [container("coder", wanted_hash(s), running=False)]})
    assert "docker rm -f coder" in run_instances(s)
    assert "stopped (exited)" in h.logs[0]


def test_restored_template_recreates_an_unchanged_spec(fake):
    s = settings()
    fake({DockerContainers: [container("coder", wanted_hash(s))]})
    cmds = run_instances(s, template_restored=lambda: True)
    assert "docker rm -f coder" in cmds and cmds[-1].startswith("docker run")


def test_only_our_labelled_containers_are_removed(fake):
    s = settings()
    h = fake({DockerContainers: [container("coder", wanted_hash(s)), container("old-coder", "x" * 24),
                                  container("someone-elses", "y" * 24, managed=False)]})
    cmds = run_instances(s)
    assert cmds == ["docker rm -f old-coder", "rm -f /etc/gpu-llm/old-coder.env"]
    assert "container old-coder: removed, no longer configured" in h.logs


def test_a_removed_instance_frees_its_port_before_new_ones_start(fake):
    s = settings(vllm_instances=[{"name": "qa", "port": 8000, "gpus": [0]}])
    fake({NvidiaGpus: GpuInventory(smi="ok", gpus=H200), DockerContainers: [container("coder", "x" * 24)]})
    cmds = run_instances(s)
    assert cmds.index("docker rm -f coder") < next(i for i, c in enumerate(cmds) if c.startswith("docker run"))


def test_api_key_goes_to_a_0600_env_file_not_the_command_line(fake):
    key = "sk-very-secret-key"
    s = settings(vllm_api_key=key)
    fake({DockerContainers: []})
    cmds = run_instances(s, api_key=HiddenValue(key))
    assert "UPLOAD /etc/gpu-llm/coder.env" in cmds
    assert any("chmod 600 /etc/gpu-llm/coder.env" in c for c in cmds)
    run = cmds[-1]
    assert key not in " ".join(cmds)
    assert "--env-file /etc/gpu-llm/coder.env" in run and "0.0.0.0:8000:8000" in run


def test_api_key_env_file_in_place_is_a_noop(fake):
    import hashlib
    key = "sk-very-secret-key"
    s = settings(vllm_api_key=key)
    env = "/etc/gpu-llm/coder.env"
    fake({DockerContainers: [container("coder", wanted_hash(s, key))],
          FileStates: {env: FileState("file", 600, "root", "root",
                                      hashlib.sha256(f"VLLM_API_KEY={key}\n".encode()).hexdigest())}})
    assert run_instances(s, api_key=HiddenValue(key)) == []


def test_removed_api_key_deletes_env_file_and_recreates(fake):
    key = "sk-very-secret-key"
    s = settings()
    fake({DockerContainers: [container("coder", wanted_hash(settings(vllm_api_key=key), key))],
          FileStates: {"/etc/gpu-llm/coder.env": FileState("file", 600, "root", "root", "0" * 64)}})
    cmds = run_instances(s)
    assert cmds[0] == "rm -f /etc/gpu-llm/coder.env" and "127.0.0.1:8000:8000" in cmds[-1]


def test_unreadable_gpus_fail_with_a_message(fake):
    fake({NvidiaGpus: GpuInventory(smi="no-driver", message="couldn't communicate")})
    [cmd] = run_instances(settings())
    assert "nvidia-smi state no-driver" in cmd and cmd.endswith("exit 1")


def test_plan_error_fails_naming_the_setting(fake):
    fake({NvidiaGpus: GpuInventory(smi="ok", gpus=H200)})
    [cmd] = run_instances(settings(vllm_instances=[{"name": "qa", "port": 8001, "gpus": [3]}]))
    assert "vllm_instances" in cmd and cmd.endswith("exit 1")


def test_verify_passing_yields_nothing_and_logs_the_reply(fake):
    s = settings()
    ok = parse_verdict(['{"ok": true, "model": "coder", "reply": "ready", "latency_s": 0.4}',
                        "gpu-llm-verify-rc=0"])
    h = fake({(VllmVerdict, "http://127.0.0.1:8000"): ok})
    assert verify(s) == []
    assert h.logs == ["coder on 127.0.0.1:8000 verified: coder answered 'ready' in 0.4s"]


def test_verify_failure_fails_the_op_with_the_message(fake):
    s = settings()
    bad = parse_verdict(['{"ok": false, "error": "/health not healthy after 1200s"}', "gpu-llm-verify-rc=1"])
    fake({(VllmVerdict, "http://127.0.0.1:8000"): bad})
    [cmd] = verify(s)
    assert "not healthy after 1200s" in cmd and cmd.endswith("exit 1")


def test_verify_takes_a_holding_check_from_the_host_snapshot_without_a_command(fake):
    """A no-op re-run: the snapshot read the recorded container, its start time and /health; nothing else runs."""
    from gpu_llm.facts import snapshot
    from gpu_llm.facts.snapshot import Verified

    s = settings()
    url = "http://127.0.0.1:8000"
    holds = {"coder": Verified("abc 2026-11-22T01:00:00Z", url, "abc 2026-11-22T01:00:00Z", "200")}
    h = fake({"Verified": holds})  # no VllmVerdict in the fixture: reading it would raise
    snapshot.current(h)  # the run's first read (an earlier op's)
    assert verify(s) == [] and not getattr(h, "verdict_calls", [])
    assert h.logs == ["coder on 127.0.0.1:8000 healthy; this container (not restarted since) passed the full "
                      "check before"]
    ok = parse_verdict(['{"ok": true, "model": "coder"}', "gpu-llm-verify-rc=0"])
    for why, seen in [("restarted since", Verified("abc t1", url, "abc t2", "200")),
                      ("/health down", Verified("abc t1", url, "abc t1", "000")),
                      ("another port", Verified("abc t1", "http://127.0.0.1:9000", "abc t1", "200")),
                      ("old marker without url", Verified("abc t1", "", "", ""))]:
        h = fake({"Verified": {"coder": seen}, (VllmVerdict, url): ok})
        snapshot.current(h)
        assert verify(s) == [] and len(getattr(h, "verdict_calls", [])) == 1, why
    restarted = {"coder": Verified("abc t1", url, "abc t2", "200")}
    h = fake({"Verified": opkit.Reads([holds, restarted]), (VllmVerdict, url): ok})
    snapshot.current(h)
    snapshot.invalidate(h)  # an op changed the host in this run: the check goes by a read taken after that
    assert verify(s) == [] and len(h.verdict_calls) == 1 and h.reads["HostSnapshot"] == 2


@pytest.mark.parametrize("keyed", [False, True])
def test_verify_is_given_the_timeout_smoke_test_and_env_file_of_the_plan(fake, keyed):
    s = settings(vllm_api_key="sk-very-secret-key") if keyed else settings()
    ok = parse_verdict(['{"ok": true, "model": "coder"}', "gpu-llm-verify-rc=0"])
    h = fake({(VllmVerdict, "http://127.0.0.1:8000"): ok})
    assert verify(s, health_timeout=77, smoke_test=False) == []
    [call] = h.verdict_calls
    assert (call["timeout_s"], call["smoke_test"], call["model"], call["container"]) == (77, False, "coder", "coder")
    assert call["env_file"] == ("/etc/gpu-llm/coder.env" if keyed else None)


def test_verify_does_not_run_while_predicting(fake):
    fake({}, executing=False)
    assert verify(settings()) == []


def test_verify_command_reads_key_from_env_file_not_argv():
    cmd = verify_command("/v/bin/python", "/v/verify.py", "http://127.0.0.1:8000", "coder", 1200, False,
                         "/etc/gpu-llm/coder.env").get_raw_value()
    assert cmd.startswith("VLLM_API_KEY=\"$(sed -n 's/^VLLM_API_KEY=//p' /etc/gpu-llm/coder.env)\" /v/bin/python")
    assert "--no-smoke-test" in cmd and "--api-key" not in cmd


def test_verdict_without_json_reports_exit_status():
    v = parse_verdict(["Traceback ...", "gpu-llm-verify-rc=2"])
    assert not v.ok and "exited 2" in v.error


def _stub(bin_dir, name, body):
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def test_verify_fast_path_runs_in_a_real_shell(tmp_path):
    """A container that passed the full check and was not restarted since is only health-checked next time."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    _stub(bin_dir, "docker", f'echo docker >> {log}; cat {tmp_path}/container')  # "<id> <StartedAt>"
    _stub(bin_dir, "curl", f'echo curl >> {log}; exit $(cat {tmp_path}/health_rc)')
    _stub(bin_dir, "py", f'echo full >> {log}; cat {tmp_path}/verify_out; exit $(cat {tmp_path}/verify_rc)')
    (tmp_path / "container").write_text("abc 2026-11-22T01:00:00Z\n")
    (tmp_path / "health_rc").write_text("0")
    (tmp_path / "verify_out").write_text('{"ok": true, "model": "coder", "reply": "ready", "latency_s": 0.1}\n')
    (tmp_path / "verify_rc").write_text("0")
    state = tmp_path / "run"
    cmd = verify_command("py", "/v.py", "http://127.0.0.1:8000", "coder", 60, True, None, "coder",
                         verified_dir=str(state)).get_raw_value()

    def run():
        log.write_text("")
        out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
        return parse_verdict(out.stdout.splitlines()), log.read_text().split()

    first, calls = run()  # nothing recorded yet: the full check, which records the container
    assert first.ok and first.result.get("reply") == "ready" and "full" in calls
    assert (state / "verified-coder").read_text().strip() == "abc 2026-11-22T01:00:00Z http://127.0.0.1:8000"
    again, calls = run()  # same container, healthy: no Python
    assert again.ok and again.result.get("verified_before") and "full" not in calls and "curl" in calls
    (tmp_path / "container").write_text("abc 2026-11-22T02:00:00Z\n")  # restarted since: full check again
    (tmp_path / "verify_out").write_text('{"ok": false, "error": "thinks"}\n')
    (tmp_path / "verify_rc").write_text("1")
    failed, calls = run()
    assert not failed.ok and "full" in calls
    # failure records nothing
    assert (state / "verified-coder").read_text().strip() == "abc 2026-11-22T01:00:00Z http://127.0.0.1:8000"
    (tmp_path / "container").write_text("abc 2026-11-22T01:00:00Z\n")
    (tmp_path / "health_rc").write_text("7")  # recorded but /health down: full check (which waits)
    _, calls = run()
    assert "full" in calls


# ---- issue 13: the layout decides the containers -------------------------------------------------------------

H100_8X = [GPU(index=i, name="NVIDIA H100 80GB HBM3", memory_mib=81559, compute_capability=(9, 0),
               driver_version="570.172.08") for i in range(8)]


def test_data_parallel_layout_is_one_container_for_all_gpus(fake):
    s = settings(vllm_image="auto")
    fake({NvidiaGpus: GpuInventory(smi="ok", gpus=H100_8X), DockerContainers: []})
    cmds = run_instances(s)
    [run] = [c for c in cmds if c.startswith("docker run")]
    assert "--name coder " in run and "--gpus all" in run and "vllm/vllm-openai:v0.21.0-cu129" in run
    assert "--tensor-parallel-size 1 --data-parallel-size 8" in run


def test_instances_layout_replaces_the_single_container_and_shares_one_key_file(fake):
    import hashlib
    key = "sk-very-secret-key"
    s = settings(vllm_image="auto", vllm_layout="instances", vllm_api_key=key)
    env = "/etc/gpu-llm/coder.env"  # in the host snapshot (gpu_llm.layout.instance_names)
    fake({NvidiaGpus: GpuInventory(smi="ok", gpus=H100_8X), DockerContainers: [container("coder", "x" * 24)],
          FileStates: {env: FileState("file", 600, "root", "root",
                                      hashlib.sha256(f"VLLM_API_KEY={key}\n".encode()).hexdigest())}})
    cmds = run_instances(s, api_key=HiddenValue(key))
    assert "docker rm -f coder" in cmds and f"rm -f {env}" not in cmds  # the old container goes, its key file stays
    runs = [c for c in cmds if c.startswith("docker run")]
    assert [r.split("--name ")[1].split()[0] for r in runs] == [f"coder-{n}" for n in range(1, 9)]
    assert all(f"--env-file {env}" in r for r in runs) and not any(c.startswith("UPLOAD") for c in cmds)
    assert [r.split(":8000 ")[0].rsplit(":", 1)[1] for r in runs] == [str(8000 + n) for n in range(8)]
    assert '--gpus \'"device=3"\'' in runs[3]
