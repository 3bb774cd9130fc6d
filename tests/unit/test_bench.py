"""gpu_llm.bench: statistics on known inputs, argument parsing, the plot, and error paths before the sweep."""

from __future__ import annotations

import argparse
import io
import json
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.console import Console

from gpu_llm import bench
from gpu_llm.bench import RequestRecord, percentile, summarise
from test_verify import NONTHINKING_TEMPLATE, fake_vllm  # noqa: F401 -- the stand-in server fixture


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


# ---- statistics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "expected"), [(50, 5.5), (90, 9.1), (99, 9.91), (0, 1.0), (100, 10.0)])
def test_percentile_interpolates_linearly(q: int, expected: float) -> None:
    values = [7, 3, 10, 1, 5, 2, 9, 4, 8, 6]  # unsorted on purpose
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_one_value_and_of_none() -> None:
    assert percentile([0.25], 99) == 0.25
    assert percentile([], 50) is None


def test_record_derives_tpot_and_per_request_speed() -> None:
    record = RequestRecord(ok=True, start_s=1.0, end_s=3.0, ttft_s=0.5, output_tokens=4)
    assert record.latency_s == 2.0
    assert record.tpot_s == pytest.approx(0.5)  # (2.0 - 0.5) / (4 - 1)
    assert record.output_tok_s == pytest.approx(2.0)
    assert RequestRecord(ok=True, start_s=0, end_s=1, ttft_s=0.2, output_tokens=1).tpot_s is None


def test_summarise_counts_errors_and_aggregates_over_the_level_wall_time() -> None:
    records = [
        RequestRecord(ok=True, start_s=0.0, end_s=2.0, ttft_s=0.5, output_tokens=4, prompt_tokens=100),
        RequestRecord(ok=True, start_s=1.0, end_s=4.0, ttft_s=1.0, output_tokens=11, prompt_tokens=102),
        RequestRecord(ok=False, start_s=0.5, end_s=0.6, error="HTTP 500: boom"),
        RequestRecord(ok=False, start_s=0.5, end_s=0.7, error="HTTP 500: boom"),
        RequestRecord(ok=False, start_s=0.5, end_s=0.9, error="no answer within 600s"),
    ]
    s = summarise(records)
    assert (s["requests"], s["ok"], s["errors"]) == (5, 2, 3)
    assert s["error_counts"] == {"HTTP 500: boom": 2, "no answer within 600s": 1}
    assert s["wall_s"] == 4.0
    assert s["output_tokens"] == 15
    assert s["output_tok_s"] == pytest.approx(15 / 4)
    assert s["requests_per_s"] == pytest.approx(0.5)
    assert s["prompt_tokens_mean"] == pytest.approx(101)
    assert s["ttft_s"] == pytest.approx({"p50": 0.75, "p90": 0.95, "p99": 0.995, "mean": 0.75})
    assert s["tpot_s"]["p50"] == pytest.approx((0.5 + 0.2) / 2)  # 1.5/3 and 2.0/10
    assert s["latency_s"]["p99"] == pytest.approx(2.99)
    assert s["request_output_tok_s"]["mean"] == pytest.approx((2.0 + 11 / 3) / 2)


def test_summarise_of_only_failures_has_no_throughput_figures() -> None:
    s = summarise([RequestRecord(ok=False, start_s=0.0, end_s=0.0, error="refused")])
    assert s["errors"] == 1 and s["output_tokens"] == 0
    assert s["output_tok_s"] is None and s["ttft_s"]["p50"] is None


# ---- prompts and arguments -------------------------------------------------------------------------------


def test_prompts_are_distinct_from_the_first_token_and_about_the_asked_length() -> None:
    rng = random.Random(0)
    a = bench.make_prompt(2048, "run-c4-r0", rng)
    b = bench.make_prompt(2048, "run-c4-r1", rng)
    assert a.split()[0] != b.split()[0]
    assert 2000 <= len(a.split()) <= 2100


def test_concurrency_list_is_parsed_sorted_and_deduplicated() -> None:
    args = parse("http://h:8000", "--concurrency", "16, 1,4,4")
    assert args.concurrency == [1, 4, 16]
    assert parse("http://h:8000").concurrency == [1, 4, 16, 64]
    assert parse("http://h:8000").prompt_tokens == 2048


@pytest.mark.parametrize("bad", ["0", "1,x", "", "-4"])
def test_bad_concurrency_is_refused_naming_the_value(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("http://h:8000", f"--concurrency={bad}")
    assert f"--concurrency {bad!r}" in capsys.readouterr().err


# ---- plot ------------------------------------------------------------------------------------------------


def test_plot_writes_a_png(tmp_path: Path) -> None:
    levels = []
    for c in (1, 4, 16):
        records = [RequestRecord(ok=True, start_s=0.0, end_s=1.0 + c / 10, ttft_s=0.05 * c, output_tokens=64)] * c
        levels.append({"concurrency": c, "summary": summarise(records)})
    results = {"url": "http://h:8000", "model": "coder", "label": "unit test",
               "settings": {"prompt_tokens": 128, "max_tokens": 64}, "levels": levels}
    out = tmp_path / "bench.png"
    bench.plot(results, str(out))
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 1000


def test_plot_without_matplotlib_exits_2_before_the_sweep_naming_the_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    png, out = tmp_path / "bench.png", tmp_path / "r.json"
    # An unreachable URL: the check comes first, so no connection is tried and nothing is written.
    code, text = run_quiet(parse("http://127.0.0.1:9", "--plot", str(png), "--out", str(out)))
    assert code == 2
    assert text == "error: gpu-llm bench --plot needs matplotlib: pip install 'gpu-llm[plot]'\n"
    assert not png.exists() and not out.exists()
    with pytest.raises(RuntimeError, match=r"pip install 'gpu-llm\[plot\]'"):
        bench.plot({"levels": []}, str(png))


def test_bench_without_plot_does_not_need_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, text = run_quiet(parse("localhost:8000"))  # fails later, on the URL, not on matplotlib
    assert code == 2 and "bad URL" in text and "matplotlib" not in text


# ---- errors before the sweep -----------------------------------------------------------------------------


def run_quiet(args: argparse.Namespace) -> tuple[int, str]:
    buffer = io.StringIO()
    code = bench.run(args, Console(file=buffer, width=200))
    return code, buffer.getvalue()


def test_connection_refused_exits_2_before_the_sweep(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "r.json"
    code, text = run_quiet(parse(f"http://127.0.0.1:{port}", "--out", str(out)))
    assert code == 2
    assert text.count("\n") == 1 and "cannot connect (Connection refused)" in text
    assert not out.exists()


def test_bad_scheme_exits_2_naming_the_url() -> None:
    code, text = run_quiet(parse("localhost:8000"))
    assert code == 2 and "bad URL 'localhost:8000'" in text


# ---- against the stand-in vLLM server ----------------------------------------------------------------------


def test_sweep_writes_json_and_png_with_every_level(fake_vllm: Any, tmp_path: Path) -> None:
    url = fake_vllm(NONTHINKING_TEMPLATE, "--api-key", "sk-test")
    (tmp_path / "key").write_text("sk-test")
    out, png = tmp_path / "results.json", tmp_path / "bench.png"
    code, text = run_quiet(parse(
        url + "/v1", "--api-key-file", str(tmp_path / "key"), "--concurrency", "1,4", "--requests-per-level", "6",
        "--prompt-tokens", "300", "--max-tokens", "20", "--out", str(out), "--plot", str(png),
    ))
    assert code == 0, text
    results = json.loads(out.read_text())
    assert results["model"] == "coder" and [lv["concurrency"] for lv in results["levels"]] == [1, 4]
    for level in results["levels"]:
        s = level["summary"]
        assert (s["ok"], s["errors"], s["output_tokens"]) == (6, 0, 6 * 20)  # ignore_eos: exactly max_tokens each
        assert 270 <= s["prompt_tokens_mean"] <= 330  # the server's own count of the ~300-token prompts
        assert 0 < s["ttft_s"]["p50"] <= s["ttft_s"]["p99"] and s["tpot_s"]["p50"] > 0
        assert len(level["records"]) == 6
    with Image.open(png) as image:
        assert image.format == "PNG"


def test_wrong_key_and_unserved_model_stop_before_the_sweep(fake_vllm: Any, tmp_path: Path) -> None:
    url = fake_vllm(NONTHINKING_TEMPLATE, "--api-key", "sk-test")
    (tmp_path / "key").write_text("sk-wrong")
    out = tmp_path / "results.json"
    code, text = run_quiet(parse(url, "--api-key-file", str(tmp_path / "key"), "--out", str(out)))
    assert code == 2 and "401 Unauthorized: the API key was rejected" in text and not out.exists()
    (tmp_path / "key").write_text("sk-test")
    code, text = run_quiet(parse(url, "--api-key-file", str(tmp_path / "key"), "--model", "gpt-4"))
    assert code == 2 and "'gpt-4' is not served" in text and "lists: coder" in text


def test_failed_requests_are_counted_not_raised(fake_vllm: Any, tmp_path: Path) -> None:
    url = fake_vllm(NONTHINKING_TEMPLATE, "--max-model-len", "512")
    out = tmp_path / "results.json"
    code, _ = run_quiet(parse(url, "--concurrency", "2", "--requests-per-level", "4", "--prompt-tokens", "1000",
                              "--max-tokens", "8", "--out", str(out)))
    assert code == 1
    summary = json.loads(out.read_text())["levels"][0]["summary"]
    assert (summary["ok"], summary["errors"]) == (0, 4)
    [(message, count)] = summary["error_counts"].items()
    assert count == 4 and "HTTP 400" in message and "maximum context length is 512" in message


# ---- benchmarks/rerun.py runs without pytest ---------------------------------------------------------------


def test_rerun_benchmark_imports_without_pytest() -> None:
    """benchmarks/rerun.py shares the e2e data through tests/testbed, not tests/e2e/conftest.py (which imports
    pytest): `--help` works where pytest cannot be imported."""
    project = Path(__file__).resolve().parents[2]
    code = ("import sys, runpy; sys.modules['pytest'] = sys.modules['_pytest'] = None; "
            "sys.argv = ['rerun.py', '--help']; runpy.run_path('benchmarks/rerun.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: rerun.py" in proc.stdout and "--hosts" in proc.stdout


def test_piped_table_is_printed_at_full_width(capsys: pytest.CaptureFixture[str]) -> None:
    # the H200 run's level: piped through rich's 80 columns it printed `128/…` and `1505…` (issue 13)
    level = {"concurrency": 64, "summary": {
        "ok": 128, "requests": 128, "prompt_tokens_mean": 1041.2, "output_tok_s": 1505.43,
        "request_output_tok_s": {"p50": 23.71}, "ttft_s": {"p50": 2.216, "p99": 5.916},
        "tpot_s": {"p50": 0.0308, "p99": 0.0411}, "latency_s": {"p99": 14.5}}}
    buffer = io.StringIO()  # not a terminal
    bench.print_table(bench.results_table([level]), file=buffer)
    text = buffer.getvalue()
    assert "128/128" in text and "1505.4" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) > 80
    bench.print_table(bench.results_table([level]))  # stdout, captured by pytest: not a terminal either
    assert "1505.4" in capsys.readouterr().out
