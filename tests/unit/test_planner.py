"""The pure serving planner: rules per arch, profiles, version-aware flags, compat refusals, capacity."""

import pytest

from gpu_llm.plan import PlanError, plan_instances, versions
from gpu_llm.plan.container import container_spec, docker_run_args, spec_hash
from gpu_llm.plan.gpus import parse_compact
from gpu_llm.settings import from_data

TURING_4X = parse_compact("4x22528MiB@7.5:pcie", "570.153.02")  # seed: 4x RTX 2080 Ti 22 GB
H100 = parse_compact("1x81559MiB@9.0", "570.153.02")
A100_8X = parse_compact("8x40960MiB@8.0:nvlink", "570.153.02")
H200 = parse_compact("1x143771MiB@9.0", "580.159.04")


def plan(gpus, **data):
    [p] = plan_instances(gpus, from_data(data))
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


@pytest.mark.parametrize("gpus", [H100, A100_8X, H200])
def test_ampere_and_newer_do_not_force_a_kernel_or_dtype(gpus):
    p = plan(gpus)
    assert "--quantization" not in p.vllm_args and "--dtype" not in p.vllm_args
    assert flag(p, "--tensor-parallel-size") == str(len(gpus))


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
        plan(H100, vllm_image="vllm/vllm-openai:v0.12.0")  # CUDA 12.9 image, driver 570 = CUDA 12.8
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
    three = plan(parse_compact("3x24576MiB@8.9", "570.153.02"))
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
    plans = plan_instances(TURING_4X, from_data({"vllm_instances": [
        {"name": "qa", "port": 8000, "gpus": [0, 1]}, {"name": "qb", "port": 8001, "gpus": [2, 3]}]}))
    assert [(p.container_name, p.port, p.gpu_indices, p.tensor_parallel_size) for p in plans] == \
        [("qa", 8000, [0, 1], 2), ("qb", 8001, [2, 3], 2)]
    spec = container_spec(plans[1], from_data({"vllm_instances": [{"name": "qb", "port": 8001, "gpus": [2, 3]}]}), "t")
    assert spec["gpus"] == '"device=2,3"'
    with pytest.raises(PlanError) as err:
        plan_instances(TURING_4X, from_data({"vllm_instances": [{"name": "qa", "port": 8000, "gpus": [4, 5]}]}))
    assert err.value.key == "vllm_instances"


def test_spec_hash_tracks_every_part_of_the_spec_and_nothing_else():
    s = from_data({})
    p = plan(H100)
    base = container_spec(p, s, "aaa")
    assert spec_hash(base) == spec_hash(dict(reversed(list(base.items()))))  # order-independent
    assert spec_hash(container_spec(p, s, "bbb")) != spec_hash(base)  # template content
    assert spec_hash(container_spec(plan(H100, vllm_max_num_seqs=64), s, "aaa")) != spec_hash(base)
    assert spec_hash(container_spec(p, from_data({"vllm_restart_policy": "unless-stopped"}), "aaa")) != spec_hash(base)
    keyed = container_spec(p, s, "aaa", api_key_sha256="k1", env_file="/etc/gpu-llm/coder.env")
    assert keyed["ports"] == ["0.0.0.0:8000:8000"] and base["ports"] == ["127.0.0.1:8000:8000"]
    run = docker_run_args(keyed)
    assert "--env-file" in run and "k1" not in " ".join(run[run.index("--label") + 2:])


def test_required_cuda_follows_the_image_setting():
    from gpu_llm.plan import required_cuda

    assert required_cuda(from_data({"vllm_image": "vllm/vllm-openai:v0.12.0"})) == "12.9"
    assert required_cuda(from_data({"vllm_image": "vllm/vllm-openai:v0.26.0"})) == "13.0"
    assert required_cuda(from_data({})) == "12.4"  # auto: the oldest release in the table (0.8.5)
