#!/usr/bin/env python3
"""Benchmark: loading the knowledge with and without the parse cache keyed by the files' hashes.

    python3 bench/knowledge_load.py [--runs N]

Each mode runs --runs times (default 7) as a fresh process, the two alternating so both see the
same machine load, after one warm-up run each (the warm-up writes the cache):
  cached:    GPTOSS_DOCTOR_CACHE=<a temporary folder>  python -c "knowledge.load()"
  uncached:  GPTOSS_DOCTOR_CACHE=""                    (every run parses all TOML)
It prints the median / min / max time load() takes inside the process (interpreter start and
imports excluded, measured with perf_counter around the call) and of the whole process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE = (
    "import time; t = time.perf_counter(); from gptoss_doctor.knowledge import load; t1 = time.perf_counter(); "
    "load(); print(time.perf_counter() - t1, t1 - t)"
)


def run_once(cache: str) -> tuple[float, float]:
    env = {**os.environ, "GPTOSS_DOCTOR_CACHE": cache,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "doctor"), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True).stdout
    total = time.perf_counter() - started
    return float(out.split()[0]), total


def describe(name: str, times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return f"{name:<22} median {statistics.median(ms):7.1f} ms   min {min(ms):7.1f} ms   max {max(ms):7.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        run_once(cache), run_once("")  # warm-up: bytecode, and the cache file
        cached, uncached = [], []
        for _ in range(args.runs):
            cached.append(run_once(cache))
            uncached.append(run_once(""))
    sizes = sum(p.stat().st_size for p in (REPO / "doctor" / "gptoss_doctor" / "knowledge").glob("*.toml"))
    print(f"knowledge data: {sizes / 1024:.0f} KiB of TOML; 1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(describe("load(), cached", [c[0] for c in cached]))
    print(describe("load(), no cache", [u[0] for u in uncached]))
    print(describe("process, cached", [c[1] for c in cached]))
    print(describe("process, no cache", [u[1] for u in uncached]))
    ratio = statistics.median(u[0] for u in uncached) / statistics.median(c[0] for c in cached)
    print(f"load() no cache / cached = {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
