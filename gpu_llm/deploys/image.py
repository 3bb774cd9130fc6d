"""vLLM image: start its pull in the background as soon as Docker is up, join it before the container starts.

deploy.py calls image_pull_start() right after docker() (the pull runs in a transient systemd unit while the model
download goes on: on a fresh host the two big downloads overlap) and image_pull_wait() right before vllm().
The image is the one the planner picks for the host's GPUs (gpu_llm.operations.vllm.host_plans).
"""

from __future__ import annotations

from pyinfra.api import deploy

from gpu_llm.deploys import host_settings
from gpu_llm.layout import IMAGE_PULL_LOG, IMAGE_PULL_UNIT
from gpu_llm.operations import image as image_ops
from gpu_llm.plan import ServeConfig

UNIT = IMAGE_PULL_UNIT
LOG_FILE = IMAGE_PULL_LOG
# One attempt's limit (RuntimeMaxSec): a ~10 GB image over a slow link; a re-run keeps the layers already pulled.
PULL_TIMEOUT_S = 4 * 3600
PULL = image_ops.Pull(unit=UNIT, log_file=LOG_FILE, timeout_s=PULL_TIMEOUT_S)


@deploy("Start the vLLM image pull")
def image_pull_start() -> None:
    image_ops.pull_started(name="Start pulling the vLLM image in the background",
                           config=ServeConfig.from_settings(host_settings()), p=PULL)


@deploy("Wait for the vLLM image pull")
def image_pull_wait() -> None:
    image_ops.pull_joined(name="Wait for the vLLM image pull", config=ServeConfig.from_settings(host_settings()),
                          p=PULL)
