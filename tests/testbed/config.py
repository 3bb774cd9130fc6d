"""Names, addresses and paths of one testbed, all derived from GPU_LLM_TESTBED_ID so testbeds run side by side."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
TESTBED_DIR = Path(__file__).resolve().parent
VENDOR_HOSTS = ("developer.download.nvidia.com", "nvidia.github.io", "download.docker.com", "apt.grafana.com")
# Docker Hub's names: `docker pull vllm/vllm-openai:TAG` talks to registry-1.docker.io only (no auth asked by a
# registry whose /v2/ answers 200); the others are in the certificate in case a client asks them.
REGISTRY_HOSTS = ("registry-1.docker.io", "index.docker.io", "docker.io", "auth.docker.io")


def registry_ips() -> list[str]:
    """The registry's address of every possible testbed id (one certificate serves them all)."""
    return [Config(tid, Path()).registry_ip for tid in range(10)]


@dataclass(frozen=True)
class Config:
    """Everything one testbed instance is called; `tid` 0-9 picks subnet 10.213.<tid>.0/24."""

    tid: int
    cache: Path

    @classmethod
    def from_env(cls) -> Config:
        raw = os.environ.get("GPU_LLM_TESTBED_ID", "0")
        if not raw.isdigit() or not 0 <= int(raw) <= 9:
            raise ValueError(f"GPU_LLM_TESTBED_ID={raw!r}: must be an integer 0-9")
        cache = Path(os.environ.get("GPU_LLM_TESTBED_CACHE", "/var/cache/gpu-llm-testbed"))
        return cls(int(raw), cache)

    @property
    def net(self) -> str:
        return f"10.213.{self.tid}"

    @property
    def bridge_ip(self) -> str:
        return f"{self.net}.1"

    @property
    def bridge(self) -> str:
        return f"gltb{self.tid}br"

    @property
    def registry_ip(self) -> str:
        """Second address of the bridge: the registry (Docker Hub's stand-in) and its rate-limiting proxy."""
        return f"{self.net}.2"

    @property
    def prefix(self) -> str:
        """Prefix of netns, veth, machine and cgroup names of this testbed."""
        return f"gltb{self.tid}-"

    @property
    def state(self) -> Path:
        return self.cache / f"state-{self.tid}"

    @property
    def wheels_port(self) -> int:
        return 8080

    def host_name(self, n: int) -> str:
        return f"tb{self.tid}h{n}"

    def host_ip(self, n: int) -> str:
        return f"{self.net}.{10 + n}"
