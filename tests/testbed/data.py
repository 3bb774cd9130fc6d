"""Inventory data shared by the e2e tests (tests/e2e/conftest.py) and the re-run benchmark (benchmarks/rerun.py).

No pytest here: benchmarks/rerun.py imports this module and runs outside the test environment."""

from __future__ import annotations

from .harness import Host, Testbed
from .images import build_vllm_image, push_vllm_image, start_fake_hf

CAP_SYS_RESOURCE = 24
# Driver 570 = CUDA 12.8: the stand-in vLLM image is the newest release built for it.
DRIVER_CUDA = (12, 8)


def memlock_limit() -> dict:
    """Without CAP_SYS_RESOURCE on this machine (some CI sandboxes) no process can raise its hard memlock limit,
    so runc fails on the default memlock=-1: keep the containers within the limit we have, and say so."""
    with open("/proc/self/status") as status:
        capbnd = int(next(line.split()[1] for line in status if line.startswith("CapBnd:")), 16)
    if capbnd >> CAP_SYS_RESOURCE & 1:
        return {}
    import resource

    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    print(f"[testbed] no CAP_SYS_RESOURCE here: vllm_ulimits memlock={hard} instead of -1")
    return {"vllm_ulimits": {"memlock": str(hard), "stack": "67108864"}}


def base_data(testbed: Testbed) -> dict:
    """Data every e2e inventory gets: the offline wheel source (hf_pip_args), where needed a memlock limit, and the
    stand-in image's size for the disk check: every host's / is this machine's disk, shared by a whole session of
    hosts, and the stand-in vLLM image is 64 MiB, not the real image's 25 GiB (the model's 19 GiB are still asked)."""
    return {"hf_pip_args": testbed.pip_args, "preflight_image_gib": 1, **memlock_limit()}


def stage_host(testbed: Testbed, host: Host, *hub_args: str, min_cc: float = 9.0,
               image_from_registry: bool = False) -> dict:
    """Put the stand-in vLLM image the 570 driver runs on `host` (the image is there before the deploy) or, with
    `image_from_registry`, only in the testbed's registry (the deploy pulls it from registry-1.docker.io), and
    start the host's own fake HF hub (extra `hub_args` for fake_hf.py); returns its host data."""
    from gpu_llm.plan.versions import newest_release_for

    version = newest_release_for(DRIVER_CUDA, min_cc).version
    image = f"vllm/vllm-openai:v{version}"
    if image_from_registry:
        push_vllm_image(testbed, image, version)
    else:
        build_vllm_image(host, image, version)
    endpoint = start_fake_hf(testbed, 8090 + host.n, "--shard-mib", "1", *hub_args)
    return {"hf_endpoint": endpoint, "vllm_image": image, "vllm_health_timeout": 120}
