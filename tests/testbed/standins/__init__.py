"""Stand-ins for outside services in end-to-end tests: vLLM OpenAI server, Hugging Face Hub, chat template rendering."""
