"""Settings: one declaration per setting, and every bad input names its key, the value and what is allowed."""

import dataclasses
import json
import types
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpu_llm import settings
from gpu_llm.defaults import DEFAULTS
from gpu_llm.settings import Settings, SettingsError, api_key, for_host, from_data, parse_value

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


def test_group_data_only_sets_known_settings():
    import runpy
    from pathlib import Path

    data = runpy.run_path(str(Path(__file__).resolve().parents[2] / "group_data" / "all.py"))
    ours = {k: v for k, v in data.items() if not k.startswith("_")}
    assert ours and set(ours) <= set(DEFAULTS)
    from_data(ours)  # and they validate


# ---- one declaration per setting --------------------------------------------------------------------------------


def test_defaults_come_from_the_declaration():
    fields = dataclasses.fields(Settings)
    assert list(DEFAULTS) == [f.name for f in fields]
    assert DEFAULTS == dataclasses.asdict(Settings())  # the fields' defaults, nothing else
    assert settings.DEFAULTS is DEFAULTS  # gpu_llm.defaults re-exports it


def test_mutable_defaults_are_fresh_copies():
    a, b = from_data({}), from_data({})
    assert a.docker_daemon_config == b.docker_daemon_config == DEFAULTS["docker_daemon_config"]
    a.docker_daemon_config["log-opts"]["max-size"] = "1k"
    a.hf_pip_args.append("--pre")
    assert DEFAULTS["docker_daemon_config"]["log-opts"]["max-size"] == "100m" and DEFAULTS["hf_pip_args"] == []
    assert from_data({}).docker_daemon_config["log-opts"]["max-size"] == "100m" and from_data({}).hf_pip_args == []


def _declaration_problems(cls: type) -> list[str]:
    problems = []
    for f in dataclasses.fields(cls):
        doc, check = f.metadata.get("doc"), f.metadata.get("check")
        if not (isinstance(doc, str) and doc.strip() and "\n" not in doc and doc.rstrip().endswith((".", ")"))):
            problems.append(f"{f.name}: no one-line doc")
        if not (callable(check) and getattr(check, "allowed", "")):
            problems.append(f"{f.name}: no validator saying what it allows")
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{f.name}: no default")
    return problems


def test_every_declaration_has_default_doc_and_validator():
    assert _declaration_problems(Settings) == []

    @dataclasses.dataclass
    class Broken:
        plain: int = 1
        no_doc: int = dataclasses.field(default=1, metadata={"check": settings._int(), "doc": ""})
        no_check: int = dataclasses.field(default=1, metadata={"doc": "Documented."})

    assert _declaration_problems(Broken) == ["plain: no one-line doc", "plain: no validator saying what it allows",
                                             "no_doc: no one-line doc", "no_check: no validator saying what it allows"]


@pytest.mark.parametrize("check,doc", [(settings._int(), ""), (settings._int(), "two\nlines."),
                                       (lambda v: v, "A validator without an allowed text.")])
def test_setting_refuses_a_declaration_without_doc_or_validator(check, doc):
    with pytest.raises(TypeError, match="setting"):
        settings.setting(1, check, doc)


def _has_any(tp) -> bool:
    if tp is typing.Any:
        return True
    if typing.is_typeddict(tp):
        return any(_has_any(h) for h in typing.get_type_hints(tp).values())
    return any(_has_any(a) for a in typing.get_args(tp))


def test_field_types_are_real_types_without_any():
    hints = typing.get_type_hints(Settings)
    assert set(hints) == set(DEFAULTS)
    assert [k for k, tp in hints.items() if _has_any(tp)] == []
    assert _has_any(list[dict[str, typing.Any]] | None)  # the check itself finds a nested Any


def _conforms(value, tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is object:
        return True
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_conforms(k, args[0]) and _conforms(v, args[1])
                                               for k, v in value.items())
    if typing.is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        return isinstance(value, dict) and set(value) <= set(hints) and all(_conforms(v, hints[k])
                                                                             for k, v in value.items())
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (bool, float, str):
        return isinstance(value, tp)
    raise AssertionError(f"_conforms does not know {tp!r}")


OVERRIDES = {"vllm_gpu_memory_utilization": 0.9, "vllm_tensor_parallel_size": 4, "vllm_block_size": 16,
             "vllm_enable_prefix_caching": False, "vllm_quantization": None, "vllm_api_key": "k" * 12,
             "vllm_instances": [{"name": "qa", "port": 8001, "gpus": [0, 1]},
                                {"name": "qb", "port": 8002, "gpus": [2, 3], "served_model_name": "b"}],
             "vllm_env": {"NCCL_DEBUG": "WARN"}, "hf_pip_args": ("--pre",), "hf_token": "hf_x",
             "container_toolkit_version": "1.17.8-1", "vllm_cpuset_cpus": "0-55", "hf_transfer": "xet"}


@pytest.mark.parametrize("data", [{}, OVERRIDES], ids=["defaults", "overrides"])
def test_values_conform_to_the_field_types(data):
    hints, s = typing.get_type_hints(Settings), from_data(data)
    assert [k for k in DEFAULTS if not _conforms(getattr(s, k), hints[k])] == []
    assert [k for k, v in DEFAULTS.items() if not _conforms(v, hints[k])] == []
    assert not _conforms(1, hints["vllm_profile"]) and not _conforms([{"name": 1}], hints["vllm_instances"])


def _literal_values(tp) -> set | None:
    """The values a Literal/bool/None (union) type allows; None if it allows more (str, int, ...)."""
    if typing.get_origin(tp) is typing.Literal:
        return set(typing.get_args(tp))
    if tp is type(None):
        return {None}
    if tp is bool:
        return {True, False}
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        parts = [_literal_values(a) for a in typing.get_args(tp)]
        return None if None in parts else set().union(*parts)
    return None


def test_literal_types_and_choice_validators_agree():
    hints = typing.get_type_hints(Settings)
    checked = 0
    for f in dataclasses.fields(Settings):
        choices = getattr(f.metadata["check"], "choices", None)
        if choices is not None or hints[f.name] is not bool and _literal_values(hints[f.name]) is not None:
            assert _literal_values(hints[f.name]) == set(choices or ()), f.name
            checked += 1
    assert checked >= 9
    assert settings.PROFILES == ("auto", "balanced", "max-context", "throughput")


def test_every_setting_has_our_prefix_and_sections_are_contiguous():
    names = list(DEFAULTS)
    assert all(n.startswith(settings.OUR_PREFIXES) for n in names)
    order = [settings.section(n) for n in names]
    runs = [s for i, s in enumerate(order) if i == 0 or order[i - 1] != s]
    assert runs == ["preflight", "NVIDIA driver", "CUDA toolkit", "Docker", "NVIDIA Container Toolkit", "Model", "vLLM",
                    "Watchdog (GPU hosts)", "Gateway (hosts in group gateways)", "Monitoring (hosts in group monitoring)"]


def test_markdown_table_has_every_setting_with_default_allowed_values_and_doc():
    rows = [r for r in settings.markdown_table().splitlines() if r.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(DEFAULTS)
    port = next(r for r in rows if r.startswith("| `vllm_port` "))
    assert port == "| `vllm_port` | `8000` | an integer from 1 to 65535 | Host port of the OpenAI-compatible API. |"
    assert "| **NVIDIA Container Toolkit** | | | |" in settings.markdown_table()
    assert all(r.count(" | ") == 3 for r in rows)  # no unescaped | inside a cell


def test_settings_from_data_is_from_data():
    assert Settings.from_data({"vllm_port": 8001}) == from_data({"vllm_port": 8001})
    with pytest.raises(SettingsError):
        Settings.from_data({"vllm_port": 0})


# ---- for_host: validated once per host object --------------------------------------------------------------------


def test_for_host_validates_once_per_host(monkeypatch):
    calls = []
    real = settings.from_data
    monkeypatch.setattr(settings, "from_data", lambda data: calls.append(data) or real(data))
    a, b = SimpleNamespace(data={"vllm_port": 8001}), SimpleNamespace(data={"vllm_port": 8002})

    first = for_host(a)
    assert for_host(a) is first and for_host(a).vllm_port == 8001 and len(calls) == 1
    assert for_host(b).vllm_port == 8002 and len(calls) == 2  # another host: its own validation
    assert for_host(b) is for_host(b) and for_host(a) is first and len(calls) == 2


def test_for_host_resolves_pyinfra_host_proxy(monkeypatch):
    from pyinfra import host
    from pyinfra.context import ctx_host

    calls = []
    real = settings.from_data
    monkeypatch.setattr(settings, "from_data", lambda data: calls.append(data) or real(data))
    a, b = SimpleNamespace(data={"vllm_port": 8001}), SimpleNamespace(data={"vllm_port": 8002})
    with ctx_host.use(a):
        assert for_host(host).vllm_port == 8001 and for_host(host) is for_host(a)
    with ctx_host.use(b):
        assert for_host(host).vllm_port == 8002
    assert len(calls) == 2


def test_for_host_does_not_keep_a_failed_validation(monkeypatch):
    calls = []
    real = settings.from_data
    monkeypatch.setattr(settings, "from_data", lambda data: calls.append(data) or real(data))
    bad = SimpleNamespace(data={"vllm_port": 0})
    for _ in range(2):
        with pytest.raises(SettingsError, match="vllm_port"):
            for_host(bad)
    assert len(calls) == 2


# ---- api_key: vllm_api_key or the file named by vllm_api_key_file ------------------------------------------------


def test_api_key_from_setting_file_or_none(tmp_path: Path):
    assert api_key(from_data({})) is None
    assert api_key(from_data({"vllm_api_key": "s3cret-key"})) == "s3cret-key"
    key_file = tmp_path / "key"
    key_file.write_text("file-key-123\n")
    assert api_key(from_data({"vllm_api_key_file": str(key_file)})) == "file-key-123"


@pytest.mark.parametrize("content,message", [(None, "cannot read"), ("short", "at least 8"),
                                             ("two keys-here", "at least 8")])
def test_api_key_file_problems_name_the_setting(tmp_path: Path, content, message):
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(SettingsError) as err:
        api_key(from_data({"vllm_api_key_file": str(key_file)}))
    assert err.value.key == "vllm_api_key_file" and message in str(err.value) and str(key_file) in str(err.value)


def test_api_key_and_file_together_refused():
    with pytest.raises(SettingsError) as err:
        from_data({"vllm_api_key": "k" * 8, "vllm_api_key_file": "/k"})
    assert err.value.key == "vllm_api_key" and "not both" in str(err.value)


def test_vllm_deploy_reexports_api_key():
    from gpu_llm.deploys import vllm

    assert vllm.api_key is api_key
