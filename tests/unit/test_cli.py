"""`gpu-llm plan`: JSON shape, human output, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_llm.cli import main

H200_CSV = Path(__file__).resolve().parents[1] / "fixtures" / "h200-device" / "plan-query.csv"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_the_documented_keys(capsys):
    code, out, _ = run(capsys, "plan", "--gpus", "4x22528MiB@7.5", "--driver", "570.153.02", "--json")
    data = json.loads(out)
    assert code == 0
    for key in ("vllm_args", "vllm_image", "tensor_parallel_size", "kv_cache_gib_per_gpu", "kv_cache_tokens",
                "max_concurrency", "warnings"):
        assert key in data
    assert data["tensor_parallel_size"] == 4 and isinstance(data["vllm_args"], list)
    assert data["docker_run"][:3] == ["docker", "run", "-d"]


def test_data_is_parsed_like_pyinfra_data(capsys):
    code, out, _ = run(capsys, "plan", "--gpus", "1x80GiB@9.0", "--json", "--data", "vllm_max_num_seqs=64",
                       "--data", "vllm_gpu_memory_utilization=0.9", "--data", "vllm_enable_prefix_caching=false",
                       "--data", 'vllm_extra_args=["--enforce-eager"]')
    args = json.loads(out)["vllm_args"]
    assert code == 0
    assert args[args.index("--max-num-seqs") + 1] == "64" and args[args.index("--gpu-memory-utilization") + 1] == "0.9"
    assert "--no-enable-prefix-caching" in args and args[-1] == "--enforce-eager"


def test_from_nvidia_smi_reads_real_output(capsys):
    code, out, _ = run(capsys, "plan", "--from-nvidia-smi", str(H200_CSV), "--json")
    assert code == 0 and json.loads(out)["tensor_parallel_size"] == 1


def test_human_output_has_docker_run_and_capacity(capsys):
    code, out, _ = run(capsys, "plan", "--gpus", "8x40GiB@8.0:nvlink")
    assert code == 0 and "docker run -d" in out and "KV cache tokens" in out and "max concurrency" in out


@pytest.mark.parametrize("argv,needle", [
    (["--data", "vllm_max_model_length=32768"], "vllm_max_model_len"),
    (["--data", "vllm_gpu_memory_utilization=1.5"], "vllm_gpu_memory_utilization"),
    (["--data", "vllm_tensor_parallel_size=8"], "vllm_tensor_parallel_size"),
    (["--data", "novalue"], "KEY=VALUE"),
])
def test_bad_input_exits_2_with_the_error_on_stderr(capsys, argv, needle):
    code, out, err = run(capsys, "plan", "--gpus", "4x22528MiB@7.5", *argv)
    assert code == 2 and needle in err and out == ""


def test_bad_gpu_spec_and_missing_file_exit_2(capsys, tmp_path):
    assert run(capsys, "plan", "--gpus", "four-gpus")[0] == 2
    assert run(capsys, "plan", "--from-nvidia-smi", str(tmp_path / "missing.csv"))[0] == 2


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "gpu_llm.cli", "plan", "--gpus", "1x80GiB@9.0", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["tensor_parallel_size"] == 1


def test_plan_output_keeps_its_keys_and_the_deployed_spec_hash(capsys):
    argv = ("plan", "--gpus", "1x81559MiB@9.0", "--driver", "570.153.02")
    code, out, _ = run(capsys, *argv, "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == {
        "container_name", "vllm_image", "vllm_version", "vllm_args", "env", "gpu_indices", "port",
        "tensor_parallel_size", "kv_cache_gib_per_gpu", "kv_cache_tokens", "max_concurrency", "capacity",
        "docker_run", "warnings"}
    assert "gpu-llm.spec-hash=cf94f573b43385f2733efda3" in data["docker_run"]  # unchanged since issue 10
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "gpu-llm.spec-hash=cf94f573b43385f2733efda3" in out


def test_plan_never_reads_the_api_key_so_shows_the_keyless_container(capsys):
    code, out, _ = run(capsys, "plan", "--gpus", "1x80GiB@9.0", "--json", "--data", "vllm_api_key=sk-12345678")
    run_args = json.loads(out)["docker_run"]
    assert code == 0 and "127.0.0.1:8000:8000" in run_args and "--env-file" not in run_args
