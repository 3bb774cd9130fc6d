"""Every tunable of gpu-llm, once, prefixed by concern.

Override any key in group_data/<group>.py, in the inventory's host data, or with
`pyinfra --data key=value`. `None` or "auto" means "derive it from the host's GPUs".
Unknown keys with one of these prefixes are refused by gpu_llm.settings (typo guard).
"""

DEFAULTS = {
    # ---- preflight -------------------------------------------------------------------------------
    # Refuse hosts whose OS is not one of these (ID-VERSION_ID from /etc/os-release).
    "preflight_supported_os": ["ubuntu-24.04", "ubuntu-22.04", "debian-12"],
    # Disk space reserved for the vLLM image (GiB), added to the model's size in the free-disk check.
    "preflight_image_gib": 25,
    # Refuse hosts where no NVIDIA GPU is found on the PCI bus (set False to provision GPU-less builders).
    "preflight_require_gpu": True,
    # ---- NVIDIA driver ---------------------------------------------------------------------------
    # Install the NVIDIA driver from NVIDIA's CUDA apt repository.
    "nvidia_driver_install": True,
    # Driver branch (major version); packages are nvidia-driver-<branch>[-open].
    "nvidia_driver_branch": "570",
    # Exact driver version pinned with apt preferences and held. The seed blog ran 570.153.02, which NVIDIA's
    # CUDA apt repo does not carry (its 570 releases: .124.06 .133.20 .148.08 .158.01 .172.08 .195.03).
    "nvidia_driver_version": "570.172.08",
    # Open kernel modules (right for Turing and newer); False installs the proprietary modules.
    "nvidia_driver_open": True,
    # Replace a different apt-installed driver version instead of refusing.
    "nvidia_driver_replace": False,
    # Reboot when the loaded kernel module differs from the installed driver (else stop and say so).
    "nvidia_driver_reboot": True,
    # Seconds to wait for a host to come back after a driver reboot.
    "nvidia_driver_reboot_timeout": 600,
    # Blacklist the nouveau kernel module.
    "nvidia_driver_blacklist_nouveau": True,
    # Base URL of NVIDIA's CUDA apt repositories (distro/arch path is appended).
    "nvidia_cuda_repo_url": "https://developer.download.nvidia.com/compute/cuda/repos",
    # Version of the cuda-keyring package that installs NVIDIA's repo signing key.
    "nvidia_cuda_keyring_version": "1.1-1",
    # ---- CUDA toolkit ----------------------------------------------------------------------------
    # Install the CUDA toolkit on the host (the vLLM container brings its own CUDA runtime).
    "cuda_toolkit_install": True,
    # CUDA toolkit release (package cuda-toolkit-<major>-<minor>).
    "cuda_toolkit_version": "12.8",
    # ---- Docker ----------------------------------------------------------------------------------
    # Where Docker comes from: "docker" (Docker's apt repo, docker-ce) or "ubuntu" (Ubuntu's docker.io).
    "docker_package_source": "docker",
    # Docker's apt repository base URL (distro id is appended).
    "docker_repo_url": "https://download.docker.com/linux",
    # Keys merged into /etc/docker/daemon.json (other keys already there are kept).
    "docker_daemon_config": {
        "default-ulimits": {"memlock": {"Name": "memlock", "Hard": -1, "Soft": -1}},
        "log-driver": "json-file",
        "log-opts": {"max-size": "100m", "max-file": "3"},
    },
    # ---- NVIDIA Container Toolkit ----------------------------------------------------------------
    # Base URL of NVIDIA's libnvidia-container apt repository.
    "container_toolkit_repo_url": "https://nvidia.github.io/libnvidia-container",
    # Pinned nvidia-container-toolkit package version, or None for the repository's newest.
    "container_toolkit_version": None,
    # ---- Model -----------------------------------------------------------------------------------
    # Hugging Face repository of the model to serve.
    "model_repo": "Qwen/Qwen3-32B-AWQ",
    # Revision to download: a commit (pinned) or a branch/tag (resolved to a commit and reported).
    "model_revision": "main",
    # Absolute path on the host where the model snapshot is stored (seed blog's path).
    "model_dir": "/home/llm/model/qwen/Qwen3-32B-AWQ",
    # Owner of model_dir and its files.
    "model_owner": "root",
    # Absolute path of the virtualenv on the host that holds huggingface-hub.
    "hf_venv": "/opt/gpu-llm/hf-venv",
    # pip requirement installed into hf_venv (1.x+ brings hf_xet, its fastest transfer backend).
    "hf_hub_requirement": "huggingface-hub>=1.0,<3",
    # Extra pip options for the venv install (e.g. ["--index-url", "https://mirror/simple"]).
    "hf_pip_args": [],
    # Hugging Face endpoint; set a mirror (e.g. https://hf-mirror.com) where huggingface.co is slow.
    "hf_endpoint": "https://huggingface.co",
    # Hugging Face token for gated/private repos; never printed, stored 0600 on the host.
    "hf_token": None,
    # Parallel download workers.
    "hf_max_workers": 8,
    # "resumable" (LFS files by HTTP Range, continued across runs and reboots) or "xet" (hf_xet; no resume across runs).
    "hf_transfer": "resumable",
    # Seconds one download attempt may take before it is abandoned (it resumes on re-run).
    "hf_download_timeout": 7200,
    # ---- vLLM ------------------------------------------------------------------------------------
    # vLLM OpenAI server image with an explicit tag, or "auto" (newest release the GPUs and driver run).
    "vllm_image": "auto",
    # vLLM release inside vllm_image when its tag is not a version (e.g. "0.10.1"); None: read the tag.
    "vllm_version": None,
    # Tuning profile: "balanced" (seed blog), "max-context" (seed 4x2080 Ti recipe) or "auto" (planner).
    "vllm_profile": "auto",
    # --tensor-parallel-size; "auto" = number of GPUs given to the instance.
    "vllm_tensor_parallel_size": "auto",
    # --gpu-memory-utilization (0 < x <= 0.99); None = profile value.
    "vllm_gpu_memory_utilization": None,
    # --max-model-len in tokens (Qwen3-32B: up to 40960 without rope scaling).
    "vllm_max_model_len": 32768,
    # --max-num-batched-tokens; None = profile value.
    "vllm_max_num_batched_tokens": None,
    # --max-num-seqs; None = profile/planner value.
    "vllm_max_num_seqs": None,
    # --block-size (8, 16 or 32); None = profile value.
    "vllm_block_size": None,
    # --enable-prefix-caching; None = profile value.
    "vllm_enable_prefix_caching": None,
    # --enable-chunked-prefill; None = profile value (always on in the V1 engine).
    "vllm_enable_chunked_prefill": None,
    # --dtype: "auto" (half below CC 8.0, else the model's), "half", "bfloat16", "float16".
    "vllm_dtype": "auto",
    # --quantization: "auto" (planner picks per arch and release), "awq", "awq_marlin" or None (omit).
    "vllm_quantization": "auto",
    # --kv-cache-dtype: "auto", "fp8", "fp8_e4m3" or "fp8_e5m2".
    "vllm_kv_cache_dtype": "auto",
    # Name clients use in the API (seed: coder).
    "vllm_served_model_name": "coder",
    # Container name (seed: coder); instances get "<name>-<n>" unless named in vllm_instances.
    "vllm_container_name": "coder",
    # Host port of the OpenAI-compatible API (seed: 8000).
    "vllm_port": 8000,
    # Address the port is published on when an API key is set (without a key: 127.0.0.1 only).
    "vllm_bind": "0.0.0.0",
    # API key required by the server (--api-key), or None.
    "vllm_api_key": None,
    # Path of a file on the deploying machine holding the API key (alternative to vllm_api_key).
    "vllm_api_key_file": None,
    # Instances per host: None = one with all GPUs, or a list of {"name", "port", "gpus": [indices]}.
    "vllm_instances": None,
    # Extra vLLM flags appended verbatim (checked against the image's vLLM release).
    "vllm_extra_args": [],
    # Extra environment variables for the container.
    "vllm_env": {},
    # Docker restart policy of the container (seed: always).
    "vllm_restart_policy": "always",
    # --cpuset-cpus for the container (seed: "0-55"), or None for all CPUs.
    "vllm_cpuset_cpus": None,
    # Container ulimits (seed: memlock=-1, stack=67108864).
    "vllm_ulimits": {"memlock": "-1", "stack": "67108864"},
    # Directory on the host holding the chat template and env files.
    "vllm_config_dir": "/etc/gpu-llm",
    # Chat template shipped in templates/ that turns Qwen3's thinking off.
    "vllm_chat_template": "qwen3_nonthinking.jinja",
    # Seconds to wait for /health after the container (re)starts (a 32B model takes minutes).
    "vllm_health_timeout": 1200,
    # Send one chat completion after start and fail if it thinks or names the wrong model.
    "vllm_smoke_test": True,
}
