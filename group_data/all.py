"""Site-wide choices for every host. Every key here is declared in gpu_llm/settings.py (which documents it);
set only what differs from the defaults, per group in group_data/<group>.py or per host in the inventory."""

# The choices of github.com/jackypanster/deploy-qwen3-32b-awq, spelled out so a site can see and change them in one place.
vllm_served_model_name = "coder"
vllm_port = 8000
vllm_profile = "auto"
model_repo = "Qwen/Qwen3-32B-AWQ"
model_dir = "/home/llm/model/qwen/Qwen3-32B-AWQ"
