"""The image pull's shell commands (gpu_llm.operations.image), run by sh against stub docker/systemctl/systemd-run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpu_llm.operations.image import Pull, join_command, start_command

IMAGE = "vllm/vllm-openai:v0.11.0"
UNIT = "gpu-llm-image-pull.service"


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A PATH dir: `docker image inspect` finds the images listed in ./images; `systemctl is-active` answers
    from ./unit-state; `systemd-run` records its arguments and "pulls" by appending to ./images."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "docker": f'#!/bin/sh\n[ "$1 $2" = "image inspect" ] || exit 2\nshift 2\n'
                  f'while [ "${{1#-}}" != "$1" ]; do shift 2; done\n'
                  f'grep -qxF "$1" {tmp_path}/images 2>/dev/null && echo sha256:0123 && exit 0\nexit 1\n',
        "systemctl": f'#!/bin/sh\ncase "$1" in is-active) s=$(cat {tmp_path}/unit-state 2>/dev/null); '
                     f'[ "$2" = --quiet ] || echo "$s"; [ "$s" = active ];; *) exit 0;; esac\n',
        "systemd-run": f'#!/bin/sh\necho "$@" >> {tmp_path}/runs\n'
                       f'[ -f {tmp_path}/pull-ok ] && echo {IMAGE} >> {tmp_path}/images\nexit 0\n',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def sh(command: str, stubs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{stubs}:/usr/bin:/bin"})


def test_start_command_runs_docker_pull_in_a_transient_unit(stubs: Path, tmp_path: Path) -> None:
    p = Pull(UNIT, str(tmp_path / "log" / "image-pull.log"), 600)
    assert sh(start_command(p, [IMAGE]).get_raw_value(), stubs).returncode == 0
    args = (tmp_path / "runs").read_text()
    assert f"--unit={UNIT}" in args and "--collect" in args and "RuntimeMaxSec=600" in args
    assert f"StandardOutput=truncate:{tmp_path}/log/image-pull.log" in args
    assert args.rstrip().endswith(f"-- docker pull {IMAGE}")
    assert (tmp_path / "log").is_dir()


def test_join_fails_naming_the_image_with_the_log_tail(stubs: Path, tmp_path: Path) -> None:
    log = tmp_path / "image-pull.log"
    log.write_text("".join(f"line {i}\n" for i in range(30)) + 'Error response from daemon: Get '
                   '"https://registry-1.docker.io/v2/": connection refused\n')
    p = Pull(UNIT, str(log), 600)
    res = sh(join_command(p, [IMAGE]).get_raw_value(), stubs)
    assert res.returncode == 1
    assert f"docker pull of {IMAGE} failed (unit {UNIT}); the last lines of {log}:" in res.stderr
    assert "registry-1.docker.io" in res.stderr and "line 10\n" not in res.stderr  # the tail only


def test_join_restarts_a_pull_that_ended_without_the_image(stubs: Path, tmp_path: Path) -> None:
    p = Pull(UNIT, str(tmp_path / "image-pull.log"), 600)
    (tmp_path / "pull-ok").touch()
    res = sh(join_command(p, [IMAGE], restart=start_command(p, [IMAGE])).get_raw_value(), stubs)
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "runs").read_text().splitlines()) == 1  # one systemd-run
    (tmp_path / "runs").unlink()
    assert sh(join_command(p, [IMAGE], restart=start_command(p, [IMAGE])).get_raw_value(), stubs).returncode == 0
    assert not (tmp_path / "runs").exists()  # present: no second pull
