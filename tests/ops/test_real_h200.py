"""Regression tests from a real Ubuntu 24.04 host with an H200 and a driver not installed by apt (issue 6).

Fixtures: tests/fixtures/h200-device/ (SOURCE.md says how they were captured).
"""

import json
from pathlib import Path

import pytest

from gpu_llm.facts.gpu import parse_inventory
from gpu_llm.facts.host import parse_preflight
from gpu_llm.facts.nvidia import parse_driver_state
from gpu_llm.operations.nvidia import decide_driver, driver_spec
from gpu_llm.plan import ServeConfig, plan_instances, versions
from gpu_llm.plan.gpus import parse_query_csv
from gpu_llm.settings import from_data

HERE = Path(__file__).resolve().parents[1] / "fixtures" / "h200-device"
RAW = json.loads((HERE / "raw-facts.json").read_text())


def test_gpu_fact_reads_the_real_h200():
    inv = parse_inventory(RAW["NvidiaGpus"]["stdout"])
    assert inv.smi == "ok"
    [gpu] = inv.gpus
    assert (gpu.name, gpu.memory_mib, gpu.compute_capability, gpu.driver_version) == \
        ("NVIDIA H200", 143771, (9, 0), "580.159.04")
    assert gpu.pci_bus_id == "00000000:00:06.0"
    assert [p.device_id for p in inv.pci] == ["0x2335"]


def test_fact_results_serialise_for_pyinfra_fact_cli():
    # `pyinfra @local fact gpu_llm.facts.gpu.NvidiaGpus` crashed with "Cannot serialize: GpuInventory" there.
    # pyinfra_cli.util.json_encode serialises objects through their to_json(); it is not imported here because
    # importing pyinfra_cli monkey-patches the whole test process with gevent.
    def json_encode(obj):
        return obj.to_json()

    for value in (parse_inventory(RAW["NvidiaGpus"]["stdout"]), parse_driver_state(RAW["NvidiaDriver"]["stdout"]),
                  parse_preflight(RAW["Preflight"]["stdout"])):
        text = json.dumps(value, default=json_encode)
        assert "580.159.04" in text or "ubuntu" in text


def test_preflight_passes_on_the_real_host():
    pre = parse_preflight(RAW["Preflight"]["stdout"])
    assert (pre.os_id, pre.codename, pre.arch, pre.uid) == ("ubuntu-24.04", "noble", "x86_64", 0)
    assert pre.free_kib > 44 * 1024 * 1024 and len(pre.pci_gpus) == 1


def test_non_apt_newer_driver_is_kept_with_a_warning():
    state = parse_driver_state(RAW["NvidiaDriver"]["stdout"])
    assert state.module_version == "580.159.04" and not state.drivers  # libxnvctrl0 is not a driver
    spec = driver_spec("ubuntu2404", "570", "570.153.02", True)
    decision = decide_driver(state, spec, replace=False, required_cuda="12.8")
    assert decision.kind == "foreign", decision.detail
    assert "580.159.04" in decision.detail and "not installed by apt" in decision.detail


def test_plan_from_real_nvidia_smi_is_h200_appropriate():
    gpus = parse_query_csv((HERE / "plan-query.csv").read_text())
    [plan] = plan_instances(gpus, ServeConfig.from_settings(from_data({})))
    args = plan.vllm_args
    assert plan.tensor_parallel_size == 1 and args[args.index("--tensor-parallel-size") + 1] == "1"
    assert "--quantization" not in args and "--dtype" not in args
    assert "--swap-space" not in args and "--tokenizer-pool-size" not in args
    image_cuda = versions.release(plan.vllm_version).cuda
    assert image_cuda <= versions.cuda_for_driver("580.159.04") == (13, 0)


@pytest.mark.parametrize("image", ["vllm/vllm-openai:v0.8.5", "vllm/vllm-openai:v0.10.1"])
def test_pinned_older_images_also_run_on_the_real_driver(image):
    gpus = parse_query_csv((HERE / "plan-query.csv").read_text())
    [plan] = plan_instances(gpus, ServeConfig.from_settings(from_data({"vllm_image": image})))
    assert plan.image == image and "--tensor-parallel-size" in plan.vllm_args


def test_apt_only_steps_are_skipped_where_the_non_apt_driver_is_kept():
    """The pin, unattended-upgrades and nouveau steps run `_if=` not keeps_foreign_driver(): on the real host
    (580 not from apt) they are skipped; on a driver-less Ubuntu host they run."""
    from pyinfra.context import ctx_host, ctx_state

    from gpu_llm.operations.nvidia import keeps_foreign_driver
    from tests.ops.opkit import FakeHost, FakeState

    args = {"branch": "570", "version": "570.172.08", "open_modules": True, "replace": False, "required_cuda": "12.4"}
    distro = {"name": "Ubuntu", "major": 24, "minor": 4, "release_meta": {"ID": "ubuntu", "VERSION_ID": "24.04"}}
    real = FakeHost({"NvidiaDriver": RAW["NvidiaDriver"]["stdout"], "LinuxDistribution": distro}, name="h200")
    bare = FakeHost({"NvidiaDriver": ["##gpu-llm:smi", "missing"], "LinuxDistribution": distro}, name="bare")
    with ctx_state.use(FakeState()):
        with ctx_host.use(real):
            assert keeps_foreign_driver(**args) is True
        with ctx_host.use(bare):
            assert keeps_foreign_driver(**args) is False
