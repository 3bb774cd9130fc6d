"""Device: start `vllm serve` with the planner's vllm_args from plan26.json (paths mapped to the device), as a list
(no shell quoting of '{"enable_thinking": false}'). Prints the command; runs in its own session."""
import json, os, subprocess, sys
plan, model, template, log = sys.argv[1:5]
args = [a.replace("/model/Qwen3-32B-AWQ", model).replace("/app/qwen3_nonthinking.jinja", template)
        for a in json.load(open(plan))["vllm_args"]]
cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *args, "--port", "8000"]
print(json.dumps(cmd), flush=True)
p = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                     start_new_session=True)
print(p.pid, flush=True)
