"""A load client for the local fleet: completions sent back to back (every other one streamed),
counted as a user sees them. Used by the fleet tests and bench/upgrade_fleet.py.

A request fails on any status but 200, a streamed answer without `data: [DONE]`, a plain answer
without choices, or a reset/timeout. Latency: request sent -> last byte read.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time

MODEL = "openai/gpt-oss-20b"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


class Client(threading.Thread):
    """`workers` threads sending to `targets` ("address:port", taken in turn) until stop()."""

    def __init__(self, targets: list[str], key: str, workers: int = 4, max_tokens: int = 8, limit_s: float = 1800):
        super().__init__(daemon=True)
        self.targets, self.key, self.workers, self.max_tokens, self.limit_s = targets, key, workers, max_tokens, limit_s
        self.served = 0
        self.failed: list[tuple[float, str, str]] = []  # (monotonic time, target, why)
        self.in_flight = 0
        self.latencies: list[float] = []
        self._next = itertools.cycle(targets)
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def one(self, stream: bool) -> None:
        with self._lock:
            target = next(self._next)
            self.in_flight += 1
        host, port = target.rsplit(":", 1)
        body = {"model": MODEL, "prompt": "hello", "max_tokens": self.max_tokens, "stream": stream}
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", "/v1/completions", body=json.dumps(body),
                         headers={"content-type": "application/json", "Authorization": f"Bearer {self.key}"})
            r = conn.getresponse()
            data = r.read()
            conn.close()
            ok = r.status == 200 and (b"data: [DONE]" in data if stream else b'"choices"' in data)
            why = None if ok else f"{r.status} {data[:120]!r}"
        except Exception as e:  # noqa: BLE001 - a reset or a timeout is a failed request
            why = f"{type(e).__name__}: {e}"
        took = time.monotonic() - t0
        with self._lock:
            self.in_flight -= 1
            if why:
                self.failed.append((time.monotonic(), target, why))
            else:
                self.served += 1
                self.latencies.append(took)

    def _loop(self, i: int) -> None:
        deadline = time.monotonic() + self.limit_s
        n = i
        while not self._halt.is_set() and time.monotonic() < deadline:
            self.one(stream=n % 2 == 0)
            n += 1

    def run(self) -> None:
        threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def stop(self) -> "Client":
        self._halt.set()
        self.join(120)
        return self

    def summary(self) -> dict:
        ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
        return {"served": self.served, "failed": len(self.failed), "p50_ms": ms(percentile(self.latencies, 50)),
                "p99_ms": ms(percentile(self.latencies, 99)), "first_failures": [f[2] for f in self.failed[:3]]}
