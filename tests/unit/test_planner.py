"""The pure serving planner: rules per arch, profiles, version-aware flags, compat refusals, capacity."""

import dataclasses
import hashlib
import subprocess
import sys
from types import SimpleNamespace

import pytest

from gpu_llm.plan import (
    InstanceConfig,
    Mount,
    PlanError,
    ServeConfig,
    gpus_needed,
    plan_instances,
    template_host_path,
    versions,
)
from gpu_llm.plan.container import container_spec, docker_run_args, spec_hash
from gpu_llm.plan.gpus import parse_compact
from gpu_llm.plan.types import GPU
from gpu_llm.settings import from_data

TURING_4X = parse_compact("4x22528MiB@7.5:pcie:geforce", "570.153.02")  # seed: 4x RTX 2080 Ti 22 GB
H100 = parse_compact("1x81559MiB@9.0", "570.153.02")
A100_8X = parse_compact("8x40960MiB@8.0:nvlink", "570.153.02")
H200 = parse_compact("1x143771MiB@9.0", "580.159.04")


def config(**data) -> ServeConfig:
    return ServeConfig.from_settings(from_data(data))


def plan(gpus, **data):
    [p] = plan_instances(gpus, config(**data))
    return p


def flag(p, name):
    return p.vllm_args[p.vllm_args.index(name) + 1] if name in p.vllm_args else None


def test_turing_gets_half_and_the_awq_kernel_and_an_image_its_driver_runs():
    p = plan(TURING_4X)
    assert flag(p, "--dtype") == "half"  # no bf16 below CC 8.0
    assert flag(p, "--quantization") == "awq"  # Marlin needs CC 8.0
    assert flag(p, "--tensor-parallel-size") == "4"
    assert versions.release(p.vllm_version).cuda <= (12, 8)  # driver 570 = CUDA 12.8
    assert p.image == f"vllm/vllm-openai:v{p.vllm_version}"


def test_pcie_only_tp4_disables_custom_all_reduce_and_nccl_p2p():
    p = plan(TURING_4X)
    assert "--disable-custom-all-reduce" in p.vllm_args and p.env["NCCL_P2P_DISABLE"] == "1"
    nv = plan(A100_8X)
    assert "--disable-custom-all-reduce" not in nv.vllm_args and "NCCL_P2P_DISABLE" not in nv.env


@pytest.mark.parametrize(("gpus", "tp"), [(H100, 1), (A100_8X, 2), (H200, 1)])
def test_ampere_and_newer_do_not_force_a_kernel_or_dtype(gpus, tp):
    p = plan(gpus)
    assert "--quantization" not in p.vllm_args and "--dtype" not in p.vllm_args
    assert flag(p, "--tensor-parallel-size") == str(tp)


def test_forcing_awq_on_ampere_warns_only_where_it_selects_the_slow_kernel():
    old = plan(A100_8X, vllm_quantization="awq", vllm_image="vllm/vllm-openai:v0.10.1")
    assert any("slow AWQ GEMM" in w for w in old.warnings)
    new = plan(H200, vllm_quantization="awq", vllm_image="vllm/vllm-openai:v0.26.0")
    assert not any("GEMM" in w for w in new.warnings)  # 0.26 runs Machete for it (vllm-h200-results.md)


def test_profiles_carry_the_seed_values():
    b = plan(TURING_4X, vllm_profile="balanced", vllm_image="vllm/vllm-openai:v0.8.5")
    assert (flag(b, "--gpu-memory-utilization"), flag(b, "--max-num-batched-tokens"), flag(b, "--block-size")) == \
        ("0.93", "4096", "32")
    m = plan(TURING_4X, vllm_profile="max-context", vllm_image="vllm/vllm-openai:v0.8.5")
    assert (flag(m, "--gpu-memory-utilization"), flag(m, "--max-num-batched-tokens"), flag(m, "--block-size"),
            flag(m, "--max-num-seqs")) == ("0.96", "32768", "16", "64")
    explicit = plan(TURING_4X, vllm_profile="max-context", vllm_max_num_seqs=128)
    assert flag(explicit, "--max-num-seqs") == "128"  # a setting beats the profile


def test_removed_flags_are_never_emitted_and_user_flags_are_checked_per_release():
    for image in ("vllm/vllm-openai:v0.8.5", "vllm/vllm-openai:v0.11.0"):
        p = plan(TURING_4X, vllm_profile="max-context", vllm_image=image)
        assert "--swap-space" not in p.vllm_args and "--tokenizer-pool-size" not in p.vllm_args
        assert set(a for a in p.vllm_args if a.startswith("--")) <= versions.known_flags(p.vllm_version)
    with pytest.raises(PlanError) as err:
        plan(TURING_4X, vllm_image="vllm/vllm-openai:v0.11.0", vllm_extra_args=["--tokenizer-pool-size", "56"])
    assert err.value.key == "vllm_extra_args" and "0.11.0" in str(err.value)
    ok = plan(TURING_4X, vllm_image="vllm/vllm-openai:v0.8.5", vllm_extra_args=["--tokenizer-pool-size", "56"])
    assert ok.vllm_args[-2:] == ["--tokenizer-pool-size", "56"]


def test_user_flag_replaces_the_planners_value():
    p = plan(H100, vllm_extra_args=["--max-num-seqs=32"])
    assert "--max-num-seqs" not in p.vllm_args and p.vllm_args[-1] == "--max-num-seqs=32"


def test_image_needing_newer_cuda_than_the_driver_is_refused_naming_both():
    with pytest.raises(PlanError) as err:
        plan(TURING_4X, vllm_image="vllm/vllm-openai:v0.12.0")  # CUDA 12.9 image, driver 570 = CUDA 12.8, GeForce
    assert err.value.key in ("vllm_image", "nvidia_driver_version")
    assert "12.9" in str(err.value) and "12.8" in str(err.value)


def test_fp8_kv_cache_gets_bf16_activations_and_explicit_half_is_refused():
    p = plan(H200, vllm_kv_cache_dtype="fp8", vllm_image="vllm/vllm-openai:v0.26.0")
    assert flag(p, "--dtype") == "bfloat16" and flag(p, "--kv-cache-dtype") == "fp8"
    with pytest.raises(PlanError) as err:
        plan(H200, vllm_kv_cache_dtype="fp8", vllm_dtype="half", vllm_image="vllm/vllm-openai:v0.26.0")
    assert err.value.key in ("vllm_kv_cache_dtype", "vllm_dtype")


def test_bf16_on_turing_is_refused():
    with pytest.raises(PlanError) as err:
        plan(TURING_4X, vllm_dtype="bfloat16")
    assert "vllm_dtype" in str(err.value)


def test_tensor_parallel_rules():
    three = plan(parse_compact("3x24576MiB@8.9", "570.153.02"), vllm_layout="tensor-parallel")
    assert three.tensor_parallel_size == 2 and any("tensor parallel size 2" in w for w in three.warnings)
    with pytest.raises(PlanError) as err:
        plan(parse_compact("2x81559MiB@9.0", "570.153.02"), vllm_tensor_parallel_size=4)
    assert err.value.key == "vllm_tensor_parallel_size"


def test_capacity_matches_vllm_on_the_h200_within_5_percent():
    # vLLM 0.26.0 on a real H200, util 0.93, 8192 batched tokens: 448,880-449,504 tokens, 13.70x at 32K
    # (../shared/reference/vllm-h200-results.md)
    p = plan(H200, vllm_image="vllm/vllm-openai:v0.26.0")
    assert p.capacity.kv_cache_tokens == pytest.approx(448_880, rel=0.05)
    assert p.capacity.max_concurrency == pytest.approx(13.70, rel=0.05)


def test_a_configuration_that_cannot_hold_one_sequence_is_refused_with_numbers():
    with pytest.raises(PlanError) as err:
        plan(parse_compact("1x16384MiB@8.9", "570.153.02"))
    assert "GiB" in str(err.value)


def test_instances_split_the_gpus_and_pin_devices():
    plans = plan_instances(TURING_4X, config(vllm_instances=[
        {"name": "qa", "port": 8000, "gpus": [0, 1]}, {"name": "qb", "port": 8001, "gpus": [2, 3]}]))
    assert [(p.container_name, p.port, p.gpu_indices, p.tensor_parallel_size) for p in plans] == \
        [("qa", 8000, [0, 1], 2), ("qb", 8001, [2, 3], 2)]
    assert container_spec(plans[1], "t")["gpus"] == '"device=2,3"'
    with pytest.raises(PlanError) as err:
        plan_instances(TURING_4X, config(vllm_instances=[{"name": "qa", "port": 8000, "gpus": [4, 5]}]))
    assert err.value.key == "vllm_instances"


def test_spec_hash_tracks_every_part_of_the_spec_and_nothing_else():
    p = plan(H100)
    base = container_spec(p, "aaa")
    assert spec_hash(base) == spec_hash(dict(reversed(list(base.items()))))  # order-independent
    assert spec_hash(container_spec(p, "bbb")) != spec_hash(base)  # template content
    assert spec_hash(container_spec(plan(H100, vllm_max_num_seqs=64), "aaa")) != spec_hash(base)
    assert spec_hash(container_spec(plan(H100, vllm_restart_policy="unless-stopped"), "aaa")) != spec_hash(base)
    keyed_plan = plan(H100, vllm_api_key="sk-12345678")
    keyed = container_spec(keyed_plan, "aaa", api_key_sha256="k1")
    assert keyed["ports"] == ["0.0.0.0:8000:8000"] and base["ports"] == ["127.0.0.1:8000:8000"]
    assert keyed["env_file"] == "/etc/gpu-llm/coder.env" and base["env_file"] is None
    run = docker_run_args(keyed)
    assert "--env-file" in run and "k1" not in " ".join(run[run.index("--label") + 2:])
    # without the key's digest (gpu-llm plan never reads the key) the spec is the keyless one, as before
    assert container_spec(keyed_plan, "aaa") == base
    with pytest.raises(ValueError, match="without a key"):
        container_spec(p, "aaa", api_key_sha256="k1")


def test_required_cuda_follows_the_image_setting():
    from gpu_llm.plan import required_cuda

    assert required_cuda(config(vllm_image="vllm/vllm-openai:v0.12.0")) == "12.9"
    assert required_cuda(config(vllm_image="vllm/vllm-openai:v0.26.0")) == "13.0"
    assert required_cuda(config()) == "12.4"  # auto: the oldest release in the table (0.8.5)


def test_awq_needs_turing_and_marlin_ampere_whatever_the_setting():
    v100 = parse_compact("2x32768MiB@7.0", "570.153.02")
    for quant in ("auto", "awq", "awq_marlin"):
        with pytest.raises(PlanError) as err:
            plan(v100, vllm_quantization=quant, vllm_image="vllm/vllm-openai:v0.10.1")
        assert err.value.key == "vllm_quantization" and "7.5" in str(err.value) and "7.0" in str(err.value)
    with pytest.raises(PlanError) as err:
        plan(TURING_4X, vllm_quantization="awq_marlin")
    assert err.value.key == "vllm_quantization" and "awq_marlin" in str(err.value) and "8.0" in str(err.value)
    assert flag(plan(TURING_4X, vllm_quantization="awq"), "--quantization") == "awq"


def test_every_compat_error_is_reported_under_the_first_ones_setting():
    v100 = parse_compact("1x32768MiB@7.0", "570.153.02")
    with pytest.raises(PlanError) as err:
        plan(v100, vllm_image="vllm/vllm-openai:v0.26.0")  # CUDA 13.0 image, no sm70 kernels, no AWQ on sm70
    assert err.value.key == "nvidia_driver_version"
    assert "CUDA 13.0" in str(err.value) and "no kernels" in str(err.value) and "AWQ" in str(err.value)


def test_gpus_of_unknown_compute_capability_are_not_planned_for():
    nodrv = [GPU(0, "NVIDIA H200", 143771, (0, 0), None)]
    with pytest.raises(PlanError, match="unknown"):
        plan_instances(nodrv, config())


# Spec hashes of containers deployed by earlier versions: a configuration must keep its spec (a new hash recreates
# every container). Taken from the code before the planner returned the container's inputs (issue 10). With
# vllm_image "auto" the newest release in versions.py is part of the spec: a new release row changes those (and
# recreates containers on deploy, as it should), the pinned-image rows never.
KEYED = {"vllm_image": "vllm/vllm-openai:v0.26.0", "vllm_api_key": "sk-12345678", "vllm_bind": "10.0.0.5",
         "vllm_cpuset_cpus": "0-55"}
INSTANCES = {"vllm_image": "vllm/vllm-openai:v0.11.0", "vllm_instances": [
    {"name": "qa", "port": 8000, "gpus": [0, 1]}, {"name": "qb", "port": 8001, "gpus": [2, 3]}]}


# Issue 13 changed the defaults on purpose, so these containers are recreated once by the first deploy of it:
# the tool-call/reasoning parser flags (vllm_tool_calls, vllm_reasoning), the positional model on vLLM >= 0.26, and
# vllm_image "auto" on driver 570 for data-center cards (v0.21.0-cu129 instead of v0.11.0). The rows deployed before
# keep their hashes with the two new features off (OLD_API), where neither the image nor the model form changed;
# the rows marked "issue 13" pin the new defaults from now on.
OLD_API = {"vllm_tool_calls": False, "vllm_reasoning": False}


@pytest.mark.parametrize(("gpus", "data", "hashes"), [
    # `gpu-llm plan --gpus 1x81559MiB@9.0 --driver 570.153.02` prints spec-hash=ad9de591598f712a9ce360df (issue 13;
    # cf94f573b43385f2733efda3 before, with v0.11.0)
    (H100, {}, {"coder": ("ad9de591598f712a9ce360df", "e55e83613ccc2b56ac617b07")}),  # issue 13
    (H200, {}, {"coder": ("ee4df6db300e7b7185f0ae08", "b7ede0b9e797cd596a4736ce")}),  # issue 13
    (TURING_4X, OLD_API, {"coder": ("465bc1b6490d86cdf4ab078c", "90a63670c4b085989e94b491")}),
    (TURING_4X, {}, {"coder": ("14de5dc126f9acb9c13b8e0a", "b85af4099bd366cff706bf79")}),  # issue 13
    (H200, KEYED, {"coder": ("9a2b584435d7936e639b603c", "b7ff4262b70ddc24b155caa8")}),  # issue 13
    (TURING_4X, {**INSTANCES, **OLD_API}, {"qa": ("d5023dc5b86419ef0ebaf954", "05de379e2b8e3fe356c353bc"),
                                          "qb": ("23b61c5bc6bbf59892a8a446", "1d774a9d3f3dcf77aca3977d")}),
    (TURING_4X, INSTANCES, {"qa": ("fa8087b22370c3b997637fdb", "eb14bc3e48dc66848c9dd846"),  # issue 13
                            "qb": ("50cb8ed73c7e1f214c85d2e0", "ad49feffede033f07d97e76b")}),
])
def test_spec_hashes_of_deployed_configurations_do_not_change(gpus, data, hashes):
    digest = hashlib.sha256(b"secret-key").hexdigest() if "vllm_api_key" in data else None
    got = {p.container_name: (spec_hash(container_spec(p, "<template>")),  # what `gpu-llm plan` shows
                              spec_hash(container_spec(p, "0" * 64, api_key_sha256=digest)))  # what a deploy labels
           for p in plan_instances(gpus, config(**data))}
    assert got == hashes


def test_keyed_spec_is_exactly_the_one_deployed_before():
    [p] = plan_instances(H200, config(**KEYED))
    assert container_spec(p, "0" * 64, api_key_sha256=hashlib.sha256(b"secret-key").hexdigest()) == {
        "name": "coder", "image": "vllm/vllm-openai:v0.26.0",
        # issue 13: the model positionally (0.26 deprecates --model) and the tool-call/reasoning parsers
        "args": ["/model/Qwen3-32B-AWQ", "--served-model-name", "coder", "--tensor-parallel-size", "1",
                 "--max-model-len", "32768", "--max-num-batched-tokens", "8192", "--gpu-memory-utilization", "0.93",
                 "--block-size", "16", "--max-num-seqs", "256", "--chat-template", "/app/qwen3_nonthinking.jinja",
                 "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3",
                 "--default-chat-template-kwargs", '{"enable_thinking": false}'],
        "env": {}, "env_file": "/etc/gpu-llm/coder.env",
        "api_key_sha256": "85dbe15d75ef9308c7ae0f33c7a324cc6f4bf519a2ed2f3027bd33c140a4f9aa",
        "mounts": ["/home/llm/model/qwen/Qwen3-32B-AWQ:/model/Qwen3-32B-AWQ:ro",
                   "/etc/gpu-llm/qwen3_nonthinking.jinja:/app/qwen3_nonthinking.jinja:ro"],
        "template_sha256": "0" * 64, "ports": ["10.0.0.5:8000:8000"], "runtime": "nvidia", "gpus": "all",
        "ipc": "host", "ulimits": {"memlock": "-1", "stack": "67108864"}, "restart": "always", "cpuset_cpus": "0-55"}


def test_the_plan_holds_every_input_of_the_container_spec():
    p = plan(H100, model_dir="/srv/models/Qwen-X", vllm_config_dir="/opt/gpu", vllm_chat_template="t.jinja",
             vllm_port=9000, vllm_bind="10.0.0.5", vllm_api_key="sk-12345678", vllm_cpuset_cpus="0-7",
             vllm_restart_policy="no", vllm_ulimits={"memlock": "-1"}, vllm_env={"NCCL_DEBUG": "WARN"})
    assert p.model_mount == Mount("/srv/models/Qwen-X", "/model/Qwen-X") and flag(p, "--model") == "/model/Qwen-X"
    assert p.template_mount == Mount("/opt/gpu/t.jinja", "/app/t.jinja")
    assert flag(p, "--chat-template") == "/app/t.jinja"
    assert p.template_mount.host == template_host_path("/opt/gpu", "t.jinja")  # the deploy puts the template there
    assert (p.port, p.container_port, p.bind, p.env_file) == (9000, 8000, "10.0.0.5", "/opt/gpu/coder.env")
    assert (p.gpus_request, p.ulimits, p.restart_policy, p.cpuset_cpus) == ("all", {"memlock": "-1"}, "no", "0-7")
    spec = container_spec(p, "x", api_key_sha256="d")
    assert spec["mounts"] == ["/srv/models/Qwen-X:/model/Qwen-X:ro", "/opt/gpu/t.jinja:/app/t.jinja:ro"]
    assert (spec["ports"], spec["env_file"], spec["env"]) == (["10.0.0.5:9000:8000"], "/opt/gpu/coder.env",
                                                               {"NCCL_DEBUG": "WARN"})
    assert plan(H100).env_file is None  # no key, no env file


def test_serve_config_reads_every_value_by_name_from_any_settings_object():
    s = from_data({"vllm_api_key_file": "/keys/vllm", "vllm_extra_args": ["--enforce-eager"], "vllm_instances": [
        {"name": "qa", "port": 8000, "gpus": [0, 1]},
        {"name": "qb", "port": 8001, "gpus": [2], "served_model_name": "b"}]})
    c = ServeConfig.from_settings(s)
    assert c.vllm_instances == (InstanceConfig("qa", 8000, (0, 1)), InstanceConfig("qb", 8001, (2,), "b"))
    assert c.keyed and c.vllm_extra_args == ("--enforce-eager",) and c.model_dir == s.model_dir
    for f in dataclasses.fields(ServeConfig):
        if f.name not in ("keyed", "vllm_instances", "vllm_extra_args"):
            assert getattr(c, f.name) == getattr(s, f.name), f.name
    assert not config().keyed and config(vllm_api_key="sk-12345678").keyed
    # plain attributes (instances as objects too) give the same config: no dependency on gpu_llm.settings' types
    values = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    values["vllm_instances"] = [SimpleNamespace(name="qa", port=8000, gpus=[0, 1]),
                                SimpleNamespace(name="qb", port=8001, gpus=[2], served_model_name="b")]
    assert ServeConfig.from_settings(SimpleNamespace(**values)) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.vllm_port = 1  # type: ignore[misc]
    del values["vllm_max_model_len"]
    with pytest.raises(AttributeError, match="vllm_max_model_len"):
        ServeConfig.from_settings(SimpleNamespace(**values))


def test_instances_serve_the_default_name_unless_they_name_their_own():
    plans = plan_instances(TURING_4X, config(vllm_served_model_name="m", vllm_instances=[
        {"name": "qa", "port": 8000, "gpus": [0, 1]}, {"name": "qb", "port": 8001, "gpus": [2, 3],
                                                       "served_model_name": "b"}]))
    assert [(p.served_model_name, flag(p, "--served-model-name")) for p in plans] == [("m", "m"), ("b", "b")]


def test_gpus_needed_names_the_setting_that_asks():
    assert gpus_needed(config()) == (1, "vllm_tensor_parallel_size")
    assert gpus_needed(config(vllm_tensor_parallel_size=4)) == (4, "vllm_tensor_parallel_size")
    assert gpus_needed(config(vllm_instances=[{"name": "qa", "port": 8000, "gpus": [0]},
                                              {"name": "qb", "port": 8001, "gpus": [3]}])) == (4, "vllm_instances")


def test_the_planner_imports_neither_settings_nor_pyinfra():
    code = ("import sys, gpu_llm.plan, gpu_llm.plan.container, gpu_llm.plan.gpus; "
            "print(sorted(m for m in sys.modules if m == 'gpu_llm.settings' or m.split('.')[0] == 'pyinfra'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- issue 13: layout over the GPUs, newest image for the driver, the API coding clients need ---------------------

H100_8X = parse_compact("8x81559MiB@9.0:nvlink", "570.172.08")
A100_40_1 = parse_compact("1x40960MiB@8.0", "570.172.08")


def test_a_model_that_fits_one_gpu_is_replicated_with_vllms_data_parallelism():
    [p] = plan_instances(H100_8X, config())
    assert (p.tensor_parallel_size, p.data_parallel_size, p.layout) == (1, 8, "data-parallel")
    assert flag(p, "--tensor-parallel-size") == "1" and flag(p, "--data-parallel-size") == "8"
    assert p.gpu_indices == list(range(8)) and p.gpus_request == "all"
    assert p.capacity.max_concurrency >= 4  # each replica holds vllm_min_full_sequences sequences of 32768


def test_tp_is_the_smallest_size_whose_replica_holds_the_full_sequences():
    # seed: 4x 2080 Ti 22 GB -> TP4, because TP2 holds only ~2.5 sequences of 32768
    tp2 = plan(TURING_4X, vllm_tensor_parallel_size=2, vllm_layout="tensor-parallel")
    assert 2 <= tp2.capacity.max_concurrency < 3
    p = plan(TURING_4X)
    assert (p.tensor_parallel_size, p.data_parallel_size) == (4, 1) and p.capacity.max_concurrency >= 4
    # 8x A100 40 GB -> TP2 x 4 (TP1 holds ~2)
    assert plan(A100_40_1, vllm_min_full_sequences=1).capacity.max_concurrency < 4
    [a] = plan_instances(A100_8X, config())
    assert (a.tensor_parallel_size, a.data_parallel_size) == (2, 4) and a.capacity.max_concurrency >= 4
    # asking for more full sequences moves the choice up
    [more] = plan_instances(H100_8X, config(vllm_min_full_sequences=10))
    assert (more.tensor_parallel_size, more.data_parallel_size) == (2, 4)


def test_layout_instances_runs_one_container_per_replica_on_its_own_port_and_gpus():
    plans = plan_instances(A100_8X, config(vllm_layout="instances", vllm_port=9000))
    assert [(p.container_name, p.port, p.gpu_indices, p.gpus_request, p.data_parallel_size) for p in plans] == [
        (f"coder-{n + 1}", 9000 + n, [2 * n, 2 * n + 1], f'"device={2 * n},{2 * n + 1}"', 1) for n in range(4)]
    assert all("--data-parallel-size" not in p.vllm_args for p in plans)


def test_layout_tensor_parallel_and_explicit_instances_keep_the_old_rule():
    [tp] = plan_instances(H100_8X, config(vllm_layout="tensor-parallel"))
    assert (tp.tensor_parallel_size, tp.data_parallel_size) == (8, 1)
    plans = plan_instances(H100_8X, config(vllm_instances=[{"name": "qa", "port": 8000, "gpus": [0, 1, 2, 3]}]))
    assert [(p.container_name, p.tensor_parallel_size, p.data_parallel_size) for p in plans] == [("qa", 4, 1)]


def test_gpus_that_do_not_split_into_replicas_are_reported_idle():
    three = parse_compact("3x81559MiB@9.0", "570.172.08")
    [p] = plan_instances(three, config(vllm_tensor_parallel_size=2))
    assert (p.tensor_parallel_size, p.data_parallel_size, p.gpus_request) == (2, 1, '"device=0,1"')
    assert any("[2] left idle" in w for w in p.warnings)


def test_max_model_len_auto_is_the_largest_context_keeping_the_full_sequences():
    p = plan(H200, vllm_max_model_len="auto")
    assert p.max_model_len == 40960 and flag(p, "--max-model-len") == "40960"  # the model's own limit
    small = plan(A100_40_1, vllm_max_model_len="auto")
    n = small.max_model_len
    assert n < 40960 and n % 16 == 0 and flag(small, "--max-model-len") == str(n)
    assert small.capacity.max_concurrency >= 4
    longer = plan(A100_40_1, vllm_max_model_len=n + 16, vllm_min_full_sequences=1)
    assert longer.capacity.max_concurrency < 4  # one block more per sequence no longer keeps 4
    with pytest.raises(PlanError) as err:
        plan(parse_compact("1x24576MiB@8.9", "570.172.08"), vllm_max_model_len="auto", vllm_min_full_sequences=256)
    assert err.value.key == "vllm_min_full_sequences"


def test_throughput_profile_is_fp8_kv_and_bf16_where_the_gpu_has_fp8():
    p = plan(H200, vllm_profile="throughput", vllm_image="vllm/vllm-openai:v0.26.0")
    assert flag(p, "--kv-cache-dtype") == "fp8" and flag(p, "--dtype") == "bfloat16"
    base = plan(H200, vllm_image="vllm/vllm-openai:v0.26.0")
    assert p.capacity.kv_cache_tokens == pytest.approx(2 * base.capacity.kv_cache_tokens, rel=0.01)
    ampere = plan(A100_40_1, vllm_profile="throughput", vllm_min_full_sequences=1)
    assert "--kv-cache-dtype" not in ampere.vllm_args and any("no fp8" in w for w in ampere.warnings)


@pytest.mark.parametrize(("image", "expected"), [
    ("vllm/vllm-openai:v0.8.5", ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--enable-reasoning",
                                 "--reasoning-parser", "qwen3"]),
    ("vllm/vllm-openai:v0.11.0", ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]),
    ("vllm/vllm-openai:v0.21.0", ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]),  # parser not checked
    ("vllm/vllm-openai:v0.26.0", ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser",
                                  "qwen3", "--default-chat-template-kwargs", '{"enable_thinking": false}']),
])
def test_tool_and_reasoning_parsers_per_release(image, expected):
    p = plan(H200, vllm_image=image)
    tail = p.vllm_args[p.vllm_args.index("--chat-template") + 2:]
    assert tail == expected
    off = plan(H200, vllm_image=image, vllm_tool_calls=False, vllm_reasoning=False)
    assert off.vllm_args[off.vllm_args.index("--chat-template") + 2:] == []


def test_the_model_is_positional_where_vllm_deprecates_model():
    assert plan(H200, vllm_image="vllm/vllm-openai:v0.26.0").vllm_args[0] == "/model/Qwen3-32B-AWQ"
    old = plan(H200, vllm_image="vllm/vllm-openai:v0.21.0")
    assert old.vllm_args[:2] == ["--model", "/model/Qwen3-32B-AWQ"]


@pytest.mark.parametrize(("gpus", "image"), [
    (H100, "vllm/vllm-openai:v0.21.0-cu129"),  # data-center card: the CUDA 12.9 image's driver-570 clause
    (TURING_4X, "vllm/vllm-openai:v0.11.0"),  # GeForce: no clause, the newest CUDA 12.8 image
    (parse_compact("1x81559MiB@9.0", "575.57.08"), "vllm/vllm-openai:v0.21.0-cu129"),  # 575 runs 12.9 itself
    (H200, f"vllm/vllm-openai:v{versions.NEWEST.version}"),  # 580 = CUDA 13.0
])
def test_auto_image_is_the_newest_the_driver_starts(gpus, image):
    assert plan_instances(gpus, config())[0].image == image
