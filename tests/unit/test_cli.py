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
    instance_keys = {
        "container_name", "vllm_image", "vllm_version", "vllm_args", "env", "gpu_indices", "port",
        "tensor_parallel_size", "data_parallel_size", "max_model_len", "kv_cache_gib_per_gpu", "kv_cache_tokens",
        "max_concurrency", "total_kv_cache_tokens", "total_max_concurrency", "capacity", "docker_run", "warnings"}
    # one instance: its keys at the top (as before issue 13) plus the layout and the `instances` list
    assert code == 0 and set(data) == instance_keys | {"layout", "instances"}
    assert [set(i) for i in data["instances"]] == [instance_keys]
    # issue 13 changed it on purpose (test_planner.py explains): cf94f573b43385f2733efda3 before
    assert "gpu-llm.spec-hash=ad9de591598f712a9ce360df" in data["docker_run"]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "gpu-llm.spec-hash=ad9de591598f712a9ce360df" in out


def test_plan_never_reads_the_api_key_so_shows_the_keyless_container(capsys):
    code, out, _ = run(capsys, "plan", "--gpus", "1x80GiB@9.0", "--json", "--data", "vllm_api_key=sk-12345678")
    run_args = json.loads(out)["docker_run"]
    assert code == 0 and "127.0.0.1:8000:8000" in run_args and "--env-file" not in run_args


def test_json_always_lists_instances_with_layout_fields(capsys):
    code, out, _ = run(capsys, "plan", "--gpus", "8x40960MiB@8.0:nvlink", "--driver", "570.172.08", "--json")
    data = json.loads(out)
    assert code == 0 and data["layout"]["mode"] == "data-parallel" and data["layout"]["replicas"] == 4
    [inst] = data["instances"]
    assert (inst["tensor_parallel_size"], inst["data_parallel_size"], inst["gpu_indices"]) == (2, 4, list(range(8)))
    assert inst["vllm_args"][inst["vllm_args"].index("--data-parallel-size") + 1] == "4"
    assert inst["max_concurrency"] >= 4 and inst["total_kv_cache_tokens"] == 4 * inst["kv_cache_tokens"]
    code, out, _ = run(capsys, "plan", "--gpus", "8x40960MiB@8.0:nvlink", "--driver", "570.172.08", "--json",
                       "--data", "vllm_layout=instances")
    items = json.loads(out)["instances"]
    assert [(i["container_name"], i["port"], i["data_parallel_size"]) for i in items] == [
        (f"coder-{n + 1}", 8000 + n, 1) for n in range(4)]
    code, out, _ = run(capsys, "plan", "--gpus", "8x40960MiB@8.0:nvlink", "--driver", "570.172.08")
    assert code == 0 and "layout: data-parallel, 4 replica(s) of tensor parallel size 2" in " ".join(out.split())


def test_bad_layout_names_the_setting_and_its_values(capsys):
    code, _, err = run(capsys, "plan", "--gpus", "1x80GiB@9.0", "--data", "vllm_layout=replicas")
    assert code == 2 and "vllm_layout" in err and "data-parallel" in err and "instances" in err
