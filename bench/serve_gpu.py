"""Serving benchmark: how fast a running vLLM OpenAI-compatible server serves a fixed workload.

    python3 bench/serve_gpu.py run --url http://127.0.0.1:8000 --key-file KEY --label ours --out results.jsonl
    python3 bench/serve_gpu.py compare results.jsonl --ours ours   # the verdict: ours vs the best other

The workload is fixed so that runs compare: token-id prompts (dummy weights and
--skip-tokenizer-init need no tokenizer), INPUT_TOKENS in, OUTPUT_TOKENS out with `ignore_eos`,
streamed, at each concurrency of CONCURRENCIES with REQUESTS_PER_CLIENT requests per client (after
a short warm-up that is not counted). Per point it reports output tokens/s (all output tokens over
the point's wall time), time to first token p50/p99 and inter-token latency p50 (per request:
(last token - first token) / (tokens - 1), so `--stream-interval N` chunking does not skew it).

Standard library only: it runs with whatever python3 the GPU box has (tests/gpu/run_e2e.sh's
`serve` phase starts each server and calls `run`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

INPUT_TOKENS = 1024
OUTPUT_TOKENS = 256
CONCURRENCIES = (1, 16, 64)
REQUESTS_PER_CLIENT = {1: 8, 16: 4, 64: 3}
WARMUP_REQUESTS = 4
TOKEN_ID_RANGE = (1000, 100000)  # inside gpt-oss's vocabulary (201088), away from special tokens
TOLERANCE = 0.03  # ours may be at most this much below the best other setting


class BenchError(RuntimeError):
    """A server that did not answer as an OpenAI-compatible completions endpoint does."""


def prompt(seed: int, length: int = INPUT_TOKENS) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(*TOKEN_ID_RANGE) for _ in range(length)]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stream_completion(url: str, key: str | None, model: str, tokens: list[int], max_tokens: int,
                      timeout_s: float = 600) -> dict:
    """One streamed completion: {"ttft_s", "tpot_s", "output_tokens", "latency_s"}."""
    parts = urlsplit(url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=timeout_s)
    body = json.dumps({
        "model": model, "prompt": tokens, "max_tokens": max_tokens, "min_tokens": max_tokens,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0.0,
    })
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise BenchError(f"POST {url}/v1/completions answered {resp.status}: {resp.read(300)!r}")
    first = last = None
    chunks_text = 0
    usage_tokens = None
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            usage_tokens = event["usage"].get("completion_tokens")
        # Under --skip-tokenizer-init the text is empty: an event with a choice is a step's tokens.
        if event.get("choices"):
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
            chunks_text += 1
    conn.close()
    end = time.perf_counter()
    if first is None:
        raise BenchError(f"{url}/v1/completions streamed no text")
    n = usage_tokens or chunks_text
    return {"ttft_s": first - t0, "tpot_s": (last - first) / (n - 1) if n > 1 else 0.0,
            "output_tokens": n, "latency_s": end - t0}


def run_point(url: str, key: str | None, model: str, concurrency: int, per_client: int,
              seed: int, output_tokens: int = OUTPUT_TOKENS, input_tokens: int = INPUT_TOKENS) -> dict:
    """`concurrency` clients, each sending `per_client` requests back to back."""
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(per_client):
            try:
                r = stream_completion(url, key, model, prompt(seed + c * 1000 + i, input_tokens), output_tokens)
            except Exception as e:  # noqa: BLE001 - counted and reported, the point goes on
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if not results:
        raise BenchError(f"concurrency {concurrency}: every request failed ({errors[0] if errors else '?'})")
    ttft = [r["ttft_s"] for r in results]
    return {
        "concurrency": concurrency, "requests": len(results), "failed": len(errors),
        "first_error": errors[0] if errors else None, "wall_s": round(wall, 3),
        "output_tok_s": round(sum(r["output_tokens"] for r in results) / wall, 1),
        "ttft_p50_ms": round(percentile(ttft, 50) * 1000, 1),
        "ttft_p99_ms": round(percentile(ttft, 99) * 1000, 1),
        "itl_p50_ms": round(statistics.median(r["tpot_s"] for r in results) * 1000, 2),
    }


def run(args: argparse.Namespace) -> int:
    key = Path(args.key_file).read_text().strip() if args.key_file else None
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    for i in range(args.warmup):  # compile/capture paths and caches: not measured
        stream_completion(args.url, key, args.model, prompt(10_000 + i, args.input_tokens), args.output_tokens)
    rows = []
    for c in concurrencies:
        row = run_point(args.url, key, args.model, c, args.per_client or REQUESTS_PER_CLIENT.get(c, 3),
                        seed=c, output_tokens=args.output_tokens, input_tokens=args.input_tokens)
        row["label"] = args.label
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 1 if any(r["failed"] for r in rows) else 0


def verdict(rows: list[dict], ours: str, tolerance: float = TOLERANCE) -> tuple[bool, list[str]]:
    """Ours against the best other label at each concurrency, on output tokens/s."""
    by = {}
    for r in rows:
        by.setdefault(r["concurrency"], {})[r["label"]] = r
    ok = True
    lines = []
    for c in sorted(by):
        point = by[c]
        if ours not in point:
            lines.append(f"c={c}: no run labelled {ours!r}")
            ok = False
            continue
        others = {k: v for k, v in point.items() if k != ours}
        if not others:
            lines.append(f"c={c}: nothing to compare with")
            continue
        best_label, best = max(others.items(), key=lambda kv: kv[1]["output_tok_s"])
        mine = point[ours]["output_tok_s"]
        ratio = mine / best["output_tok_s"]
        good = ratio >= 1 - tolerance
        ok = ok and good
        lines.append(f"c={c}: {ours} {mine:.0f} tok/s vs best other ({best_label}) {best['output_tok_s']:.0f} tok/s"
                     f" = {ratio:.3f} {'ok' if good else 'BELOW'} (goal >= {1 - tolerance:.2f})")
    return ok, lines


def table(rows: list[dict]) -> str:
    head = f"{'label':<10} {'conc':>4} {'req':>4} {'fail':>4} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8}"
    out = [head]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["label"])):
        out.append(f"{r['label']:<10} {r['concurrency']:>4} {r['requests']:>4} {r['failed']:>4} {r['output_tok_s']:>10.1f}"
                   f" {r['ttft_p50_ms']:>7.1f}ms {r['ttft_p99_ms']:>7.1f}ms {r['itl_p50_ms']:>6.2f}ms")
    return "\n".join(out)


def compare(args: argparse.Namespace) -> int:
    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    print(table(rows))
    ok, lines = verdict(rows, args.ours)
    print("\n".join(lines))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="benchmark one running server")
    r.add_argument("--url", default="http://127.0.0.1:8000")
    r.add_argument("--key-file", help="file holding the API key (never on the command line)")
    r.add_argument("--model", default="openai/gpt-oss-20b", help="the served model name")
    r.add_argument("--label", required=True, help="what this server is (ours, bare, recipe)")
    r.add_argument("--out", help="append one JSON line per concurrency here")
    r.add_argument("--concurrency", default=",".join(map(str, CONCURRENCIES)))
    r.add_argument("--per-client", type=int, default=0, help="requests per client (default: by concurrency)")
    r.add_argument("--warmup", type=int, default=WARMUP_REQUESTS)
    r.add_argument("--input-tokens", type=int, default=INPUT_TOKENS)
    r.add_argument("--output-tokens", type=int, default=OUTPUT_TOKENS)
    c = sub.add_parser("compare", help="table and verdict from the JSON lines of several runs")
    c.add_argument("results")
    c.add_argument("--ours", default="ours")
    args = p.parse_args(argv)
    try:
        return run(args) if args.cmd == "run" else compare(args)
    except (BenchError, OSError) as e:
        print(f"serve_gpu: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
