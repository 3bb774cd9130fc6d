"""Settings validation: every bad input names its key, the value and what is allowed."""

import json

import pytest

from gpu_llm.defaults import DEFAULTS
from gpu_llm.settings import SettingsError, from_data, parse_value

BAD = [
    ("vllm_port", 70000, "1 to 65535"),
    ("vllm_port", "8000", "integer"),
    ("vllm_gpu_memory_utilization", 1.2, "at most 0.99"),
    ("vllm_gpu_memory_utilization", 0, "greater than 0.05"),
    ("vllm_gpu_memory_utilization", "high", "number"),
    ("vllm_tensor_parallel_size", 3, "divide Qwen3-32B"),
    ("vllm_tensor_parallel_size", 16, "divide Qwen3-32B"),
    ("vllm_max_model_len", 131072, "rope scaling"),
    ("vllm_max_model_len", 32768.5, "integer"),
    ("vllm_profile", "fast", "'balanced'"),
    ("vllm_max_model_length", 32768, "did you mean 'vllm_max_model_len'"),
    ("nvidia_drvier_version", "570.153.02", "did you mean 'nvidia_driver_version'"),
    ("model_dir", "models/qwen", "absolute path"),
    ("hf_venv", "venv", "absolute path"),
    ("vllm_image", "vllm/vllm-openai", "with a tag"),
    ("vllm_image", "Vllm/VLLM:latest tag", "with a tag"),
    ("vllm_bind", "localhost", "IP address"),
    ("vllm_block_size", 64, "8, 16, 32"),
    ("vllm_dtype", "fp32", "'bfloat16'"),
    ("vllm_kv_cache_dtype", "int8", "'fp8'"),
    ("docker_package_source", "snap", "'docker', 'ubuntu'"),
    ("hf_endpoint", "hf-mirror.com", "http:// or https://"),
    ("nvidia_driver_reboot", "yes", "true or false"),
    ("nvidia_driver_version", "latest", "570.153.02"),
    ("vllm_extra_args", "--enforce-eager", "list of strings"),
    ("vllm_env", {"A": 1}, "strings to strings"),
    ("vllm_instances", [{"name": "qa", "port": 8000, "gpus": [0, 1, 2]}], "GPU count"),
    ("vllm_instances", [{"name": "qa", "port": 8000, "gpus": [0]}, {"name": "qb", "port": 8000, "gpus": [1]}], "distinct"),
    ("vllm_instances", [{"name": "a", "port": 8000, "gpus": [0]}], "2+ letters"),  # docker refuses 1-char names
    ("vllm_container_name", "c", "2+ letters"),
    ("vllm_api_key", "short", "at least 8"),
    ("model_repo", "Qwen3-32B-AWQ", "repo id"),
    ("vllm_cpuset_cpus", "all", "CPU list"),
]


@pytest.mark.parametrize("key,value,allowed", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_input_names_key_value_and_allowed(key, value, allowed):
    with pytest.raises(SettingsError) as err:
        from_data({key: value})
    assert err.value.key == key
    message = str(err.value)
    assert key in message and allowed in message
    if not key.startswith(("vllm_max_model_length", "nvidia_drvier")):
        assert repr(value) in message


def test_defaults_are_valid_and_complete():
    s = from_data({})
    for key, value in DEFAULTS.items():
        assert getattr(s, key) == value or key.endswith(("_url", "endpoint")), key


def test_all_problems_reported_at_once():
    with pytest.raises(SettingsError) as err:
        from_data({"vllm_port": 0, "vllm_profile": "x", "vllm_max_model_lenn": 1})
    assert {k for k, _ in err.value.problems} == {"vllm_port", "vllm_profile", "vllm_max_model_lenn"}


def test_foreign_keys_are_left_alone():
    s = from_data({"ssh_user": "root", "_sudo": True, "my_site_key": 1})
    assert s.vllm_port == 8000


def test_overrides_take_effect():
    s = from_data({"vllm_port": 8888, "vllm_gpu_memory_utilization": 0.9, "vllm_tensor_parallel_size": 4,
                   "vllm_image": "vllm/vllm-openai:v0.10.1", "hf_endpoint": "https://hf-mirror.com/"})
    assert (s.vllm_port, s.vllm_gpu_memory_utilization, s.vllm_tensor_parallel_size) == (8888, 0.9, 4)
    assert s.hf_endpoint == "https://hf-mirror.com"


def test_driver_version_must_match_branch():
    with pytest.raises(SettingsError) as err:
        from_data({"nvidia_driver_version": "575.57.08"})
    assert err.value.key == "nvidia_driver_version" and "nvidia_driver_branch" in str(err.value)


@pytest.mark.parametrize("raw,parsed", [("true", True), ("False", False), ("64", 64), ("0.9", 0.9),
                                        ('["--enforce-eager"]', ["--enforce-eager"]), ("null", None),
                                        ("vllm/vllm-openai:v0.10.1", "vllm/vllm-openai:v0.10.1")])
def test_cli_values_parse_like_pyinfra_data(raw, parsed):
    assert parse_value(raw) == parsed


def test_parse_value_agrees_with_pyinfra_itself():
    import subprocess
    import sys

    raws = ["true", "FALSE", "64", "-3", "0.9", "1e3", '["a", 1]', '{"k": "v"}', "null", "plain", "0x10", ""]
    code = ("import json, sys; from pyinfra_cli.util import parse_cli_arg; "
            "print(json.dumps([parse_cli_arg(a) for a in json.loads(sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(raws)], capture_output=True, text=True, check=True)
    assert [parse_value(r) for r in raws] == json.loads(out.stdout.strip().splitlines()[-1])


def test_readme_lists_every_setting_with_its_default():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {line.split("`")[1]: line for line in readme.splitlines() if line.startswith("| `")}
    missing = [k for k in DEFAULTS if k not in rows]
    assert not missing, f"README's settings table lacks {missing}"


def test_group_data_only_sets_known_settings():
    import runpy
    from pathlib import Path

    data = runpy.run_path(str(Path(__file__).resolve().parents[2] / "group_data" / "all.py"))
    ours = {k: v for k, v in data.items() if not k.startswith("_")}
    assert ours and set(ours) <= set(DEFAULTS)
    from_data(ours)  # and they validate
