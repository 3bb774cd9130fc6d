"""Hang watchdog on each GPU host (gpu_llm/remote/watchdog.py as a systemd service): restarts a vLLM container whose
engine stopped producing tokens or answering while its /health still says 200."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy

from gpu_llm.deploys import host_settings
from gpu_llm.layout import (WATCHDOG_LOG, WATCHDOG_STATE, WATCHDOG_UNIT, WATCHDOG_UNIT_FILE, watchdog_config_path,
                            watchdog_script_path)
from gpu_llm.monitoring import TEXTFILE_DIR
from gpu_llm.operations import warn
from gpu_llm.operations.watchdog import watchdog as watchdog_op
from gpu_llm.plan import ServeConfig

SCRIPT = Path(__file__).resolve().parents[1] / "remote" / "watchdog.py"


@deploy("Run the hang watchdog")
def watchdog() -> None:
    s = host_settings()
    if s.watchdog_enabled and s.vllm_restart_policy in ("no", "on-failure"):
        # vLLM 0.26.0's API server exits with status 0 when its engine dies (tests/fixtures/vllm_hang/README.md)
        warn(host, f"vllm_restart_policy={s.vllm_restart_policy!r}: when the engine dies vLLM exits with status 0, "
                   "so Docker does not restart it and the watchdog leaves stopped containers alone; use 'always'")
    watchdog_op(
        name="Run the vLLM hang watchdog (gpu-llm-watchdog.service)",
        config=ServeConfig.from_settings(s),
        enabled=s.watchdog_enabled,
        unit=WATCHDOG_UNIT,
        unit_file=WATCHDOG_UNIT_FILE,
        python=f"{s.hf_venv}/bin/python",
        script_path=watchdog_script_path(s),
        script=SCRIPT.read_bytes(),
        config_path=watchdog_config_path(s),
        settings={"interval": s.watchdog_interval, "stall_seconds": s.watchdog_stall_seconds,
                  "start_grace": s.watchdog_start_grace, "probe_timeout": s.watchdog_probe_timeout,
                  "probe_failures": s.watchdog_probe_failures,
                  "max_restarts_per_hour": s.watchdog_max_restarts_per_hour,
                  # its restart counter for the node exporter's textfile collector (read when monitoring runs)
                  "metrics_file": f"{TEXTFILE_DIR}/gpu-llm-watchdog.prom"},
        log_file=WATCHDOG_LOG,
        state_file=WATCHDOG_STATE,
    )
