"""bench/serve_gpu.py: its statistics, its verdict, and one run against a loopback server.

The server below is a STAND-IN for vLLM's streamed /v1/completions (the real one needs a GPU): it
answers exactly what the benchmark relies on — SSE `data:` events with `choices[].text`, a final
usage event when `stream_options.include_usage` is set, `[DONE]` — and checks the API key.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("serve_gpu", ROOT / "bench" / "serve_gpu.py")
serve_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_gpu)

KEY = "test-key-not-secret"


class StreamingCompletions(BaseHTTPRequestHandler):
    delay_s = 0.002
    chunk = 4  # tokens per event, as --stream-interval does
    seen: list[dict] = []

    def log_message(self, *a) -> None:
        pass

    def do_POST(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        n = body["max_tokens"]
        sent = 0
        while sent < n:
            k = min(self.chunk, n - sent)
            time.sleep(self.delay_s * k)
            self.wfile.write(b"data: " + json.dumps({"choices": [{"text": "x" * k}]}).encode() + b"\n\n")
            self.wfile.flush()
            sent += k
        if body.get("stream_options", {}).get("include_usage"):
            self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": {"completion_tokens": n}}).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def server():
    StreamingCompletions.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), StreamingCompletions)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_percentile_interpolates_between_ranks():
    assert serve_gpu.percentile([1, 2, 3, 4], 50) == 2.5
    assert serve_gpu.percentile([5], 99) == 5
    assert serve_gpu.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99) == pytest.approx(9.91)


def test_prompts_are_fixed_token_ids_inside_the_vocabulary():
    p = serve_gpu.prompt(7)
    assert p == serve_gpu.prompt(7) and p != serve_gpu.prompt(8)
    assert len(p) == serve_gpu.INPUT_TOKENS
    assert all(serve_gpu.TOKEN_ID_RANGE[0] <= t < serve_gpu.TOKEN_ID_RANGE[1] for t in p)


def row(label, c, tok_s):
    return {"label": label, "concurrency": c, "output_tok_s": tok_s, "requests": 1, "failed": 0,
            "ttft_p50_ms": 1, "ttft_p99_ms": 1, "itl_p50_ms": 1}


def test_verdict_compares_ours_with_the_best_other_at_each_concurrency():
    rows = [row("ours", 1, 100), row("bare", 1, 102), row("recipe", 1, 90),
            row("ours", 16, 900), row("bare", 16, 1000), row("recipe", 16, 950)]
    ok, lines = serve_gpu.verdict(rows, "ours")
    assert not ok
    assert "c=1" in lines[0] and "ok" in lines[0] and "bare" in lines[0]  # 100/102 is within 3%
    assert "BELOW" in lines[1] and "bare" in lines[1]
    ok, _ = serve_gpu.verdict(rows[:3], "ours")
    assert ok


def test_verdict_fails_where_ours_was_not_run():
    ok, lines = serve_gpu.verdict([row("bare", 1, 100)], "ours")
    assert not ok and "no run labelled 'ours'" in lines[0]


def test_a_run_against_a_streaming_server(server, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    out = tmp_path / "r.jsonl"
    rc = serve_gpu.main(["run", "--url", server, "--key-file", str(key_file), "--label", "ours",
                         "--out", str(out), "--concurrency", "1,4", "--per-client", "2", "--warmup", "1",
                         "--input-tokens", "16", "--output-tokens", "20"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["concurrency"] for r in rows] == [1, 4]
    assert [r["requests"] for r in rows] == [2, 8]
    for r in rows:
        assert r["failed"] == 0 and r["output_tok_s"] > 0
        assert r["ttft_p50_ms"] <= r["ttft_p99_ms"]
        # 4 tokens per event at 2 ms a token: per-token latency, not per-event
        assert 1.5 <= r["itl_p50_ms"] <= 20
    sent = StreamingCompletions.seen
    assert all(b["ignore_eos"] and b["stream"] and len(b["prompt"]) == 16 and b["max_tokens"] == 20 for b in sent)
    assert len(sent) == 1 + 2 + 8  # warm-up, then the two points


def test_a_refused_key_is_one_line_and_exit_2(server, tmp_path, capsys):
    key_file = tmp_path / "key"
    key_file.write_text("wrong")
    rc = serve_gpu.main(["run", "--url", server, "--key-file", str(key_file), "--label", "x", "--warmup", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "answered 401" in err and len(err.strip().splitlines()) == 1
