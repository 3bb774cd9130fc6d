"""Device: where a real vLLM 0.26.0 with the planner's flags puts the answer (content/reasoning/tool_calls)."""
import json, os, sys, requests
url, key = "http://127.0.0.1:8000/v1/chat/completions", open(sys.argv[1]).read().strip()
H = {"Authorization": f"Bearer {key}"}
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London"]}}, "required": ["city"]}}}]
cases = {
    "plain": {},
    "thinking_on": {"chat_template_kwargs": {"enable_thinking": True}},
    "tools_auto": {"tools": WEATHER},
    "tools_required": {"tools": WEATHER, "tool_choice": "required"},
}
out = {}
for name, extra in cases.items():
    body = {"model": "coder", "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "max_tokens": 48, "temperature": 0, **extra}
    r = requests.post(url, json=body, headers=H, timeout=120)
    try:
        m = r.json()["choices"][0]["message"]
        out[name] = {"status": r.status_code, "content_chars": len(m.get("content") or ""),
                     "content_is_null": m.get("content") is None,
                     "reasoning_chars": len(m.get("reasoning") or m.get("reasoning_content") or ""),
                     "tool_calls": m.get("tool_calls"), "finish_reason": r.json()["choices"][0]["finish_reason"]}
    except Exception as exc:  # keep going: record what came back
        out[name] = {"status": r.status_code, "error": str(exc), "body": r.text[:500]}
print(json.dumps(out, indent=1))
