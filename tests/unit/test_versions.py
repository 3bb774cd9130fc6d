"""gpu_llm.plan.versions: image refs, release table, flag sets, driver -> CUDA."""

import pytest

from gpu_llm.plan import versions as v


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("vllm/vllm-openai:v0.10.1", ("vllm/vllm-openai", "v0.10.1")),
        ("localhost:5000/vllm/vllm-openai:v0.10.1", ("localhost:5000/vllm/vllm-openai", "v0.10.1")),
        ("vllm/vllm-openai:v0.9.2@sha256:" + "a" * 64, ("vllm/vllm-openai", "v0.9.2")),
        ("  vllm/vllm-openai:latest ", ("vllm/vllm-openai", "latest")),
    ],
)
def test_parse_image(ref, expected):
    assert v.parse_image(ref) == expected


@pytest.mark.parametrize(
    "ref", ["vllm/vllm-openai", "localhost:5000/vllm-openai", "vllm/vllm-openai@sha256:" + "b" * 64, "x:", ""]
)
def test_parse_image_without_tag_is_refused(ref):
    with pytest.raises(ValueError, match="vllm_image"):
        v.parse_image(ref)


def test_version_of_image():
    assert v.version_of_image("vllm/vllm-openai:v0.10.1") == "0.10.1"
    assert v.version_of_image("vllm/vllm-openai:v0.20.0-cu129") == "0.20.0"
    assert v.version_of_image("reg:5000/mirror/vllm:latest", declared="0.10.1") == "0.10.1"
    with pytest.raises(ValueError, match="vllm_version"):
        v.version_of_image("vllm/vllm-openai:latest")
    with pytest.raises(ValueError, match="contradicts"):
        v.version_of_image("vllm/vllm-openai:v0.10.1", declared="0.9.2")


def test_cuda_of_image_reads_suffix():
    rel = v.release("0.20.0")
    assert v.cuda_of_image("vllm/vllm-openai:v0.20.0", rel) == (13, 0)
    assert v.cuda_of_image("vllm/vllm-openai:v0.20.0-cu129", rel) == (12, 9)


def test_release_unknown_lists_known():
    assert v.release("0.10.1").version == "0.10.1"
    with pytest.raises(ValueError, match="0.8.5.*0.26.0"):
        v.release("0.7.3")


def test_required_releases_present_and_ordered():
    for ver in ("0.8.5", "0.9.0", "0.9.2", "0.10.0", "0.10.1", "0.10.2", "0.11.0", "0.26.0"):
        assert ver in v.VLLM_RELEASES
    keys = [r.key for r in v.VLLM_RELEASES.values()]
    assert keys == sorted(keys)
    assert v.NEWEST.key >= (0, 26, 0)


PLANNER_FLAGS = (
    "--model --served-model-name --tensor-parallel-size --dtype --quantization --max-model-len "
    "--max-num-batched-tokens --max-num-seqs --gpu-memory-utilization --block-size --enable-chunked-prefill "
    "--no-enable-chunked-prefill --enable-prefix-caching --no-enable-prefix-caching --disable-custom-all-reduce "
    "--kv-cache-dtype --chat-template --host --port --api-key --enforce-eager --generation-config "
    "--trust-remote-code --uvicorn-log-level --max-log-len --reasoning-parser --enable-auto-tool-choice "
    "--tool-call-parser"
).split()


@pytest.mark.parametrize("version", list(v.VLLM_RELEASES))
def test_core_flags_everywhere(version):
    missing = [f for f in PLANNER_FLAGS if f not in v.known_flags(version)]
    assert missing == []


def test_flags_that_come_and_go():
    has = lambda ver, flag: flag in v.known_flags(ver)  # noqa: E731
    assert has("0.9.2", "--tokenizer-pool-size") and not has("0.10.0", "--tokenizer-pool-size")
    assert not has(v.NEWEST.version, "--tokenizer-pool-size")
    assert has("0.17.1", "--swap-space") and not has("0.18.0", "--swap-space")
    assert not any(has(r.version, "--swap-space") for r in v.VLLM_RELEASES.values() if r.key >= (0, 18, 0))
    assert not has("0.10.0", "--enable-log-requests") and has("0.10.1", "--enable-log-requests")
    assert has("0.16.0", "--disable-log-requests") and not has("0.17.0", "--disable-log-requests")
    assert not has("0.13.0", "--default-chat-template-kwargs") and has("0.14.0", "--default-chat-template-kwargs")
    assert not has("0.8.5", "--made-up-flag")


def test_release_behaviour_switches():
    r = v.release
    assert r("0.10.1").v1_min_cc == 8.0 and r("0.10.1").v0_fallback
    assert r("0.10.2").v1_min_cc is None
    assert not r("0.11.0").v0_fallback
    assert r("0.23.0").awq_flag_forces_gemm and not r("0.24.0").awq_flag_forces_gemm
    assert not r("0.26.0").awq_flag_forces_gemm  # measured: MacheteLinearKernel with --quantization awq
    assert r("0.17.1").swap_space_per_gpu and not r("0.18.0").swap_space_per_gpu
    assert r("0.26.0").fp8_kv_fp16_fails is True and r("0.25.1").fp8_kv_fp16_fails is None
    assert r("0.19.1").image_min_cc == 7.0 and r("0.20.0").image_min_cc == 7.5


@pytest.mark.parametrize(
    ("driver", "cuda"),
    [
        ("525.60.13", (12, 0)),
        ("535.104.05", (12, 2)),
        ("550.54.14", (12, 4)),
        ("560.35.03", (12, 6)),
        ("570.26", (12, 8)),
        ("570.153.02", (12, 8)),
        ("575.51.02", (12, 8)),  # one below 12.9's floor 575.51.03
        ("575.57.08", (12, 9)),
        ("580.65.06", (13, 0)),
        ("580.159.04", (13, 0)),
    ],
)
def test_cuda_for_driver(driver, cuda):
    assert v.cuda_for_driver(driver) == cuda


def test_driver_branch_table_agrees_with_floors():
    for branch, cuda in v.DRIVER_CUDA.items():
        if cuda in v.CUDA_MIN_DRIVER:
            assert v.cuda_for_driver(f"{branch}.999.99") == cuda


@pytest.mark.parametrize("bad", ["", "abc", "570.x", "470.256.02"])
def test_cuda_for_driver_refuses(bad):
    with pytest.raises(ValueError, match="nvidia_driver_version"):
        v.cuda_for_driver(bad)


def test_newest_release_for_driver_570_fits_cuda_12_8():
    rel = v.newest_release_for(v.cuda_for_driver("570.153.02"), 9.0)
    assert rel.cuda <= (12, 8)
    assert not any(r.cuda <= (12, 8) and r.key > rel.key for r in v.VLLM_RELEASES.values())


def test_newest_release_for_580_is_newest_and_volta_stops_at_cuda12():
    assert v.newest_release_for((13, 0), 9.0) == v.NEWEST
    assert v.newest_release_for((13, 0), 7.0).cuda[0] == 12


def test_newest_release_for_old_driver_refused():
    with pytest.raises(ValueError, match="nvidia_driver_version"):
        v.newest_release_for((12, 2), 9.0)


def test_image_requirement_is_the_cuda_12_9_images_own():
    # tests/fixtures/nvidia_require_cuda_12.9.txt: the env of a vLLM 0.16.0 (CUDA 12.9.1) image
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia_require_cuda_12.9.txt"
    [line] = [ln for ln in fixture.read_text().splitlines() if ln.startswith("NVIDIA_REQUIRE_CUDA=")]
    assert v.image_requirement((12, 9)) == line.split("=", 1)[1]
    assert v.image_requirement((13, 0)) == "cuda>=13.0"


def test_driver_runs_follows_the_requirement_clauses():
    assert v.driver_runs((12, 8), "570.172.08", {"geforce"})
    assert v.driver_runs((12, 9), "570.172.08", {"nvidia"})
    assert not v.driver_runs((12, 9), "570.172.08", {"geforce"})
    assert not v.driver_runs((12, 9), "570.172.08", {"nvidia", "geforce"})  # every GPU must pass
    assert not v.driver_runs((13, 0), "570.172.08", {"nvidia"})
    assert v.driver_runs((13, 0), "580.159.04", {"geforce"})


def test_variant_images_are_only_those_a_source_names():
    variants = [r.version for r in v.VLLM_RELEASES.values() if r.cu129_variant]
    assert variants == ["0.20.0", "0.20.2", "0.21.0"]
    assert [i.ref for i in v.images_of(v.release("0.21.0"))] == [
        "vllm/vllm-openai:v0.21.0", "vllm/vllm-openai:v0.21.0-cu129"]
    assert v.gpu_brand("NVIDIA GeForce RTX 2080 Ti") == "geforce"
    assert v.gpu_brand("NVIDIA H100 80GB HBM3") == "nvidia"
