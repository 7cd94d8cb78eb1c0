#!/usr/bin/env python3
"""Benchmark: gptoss-doctor's default diagnosis against PyTorch's collect_env, on the same venv.

    python3 bench/doctor_vs_collect_env.py [--venv V] [--runs N] [--doctor "CMD ..."]

Without --venv it makes one the way a user would get CPU torch on this project's machines,
with `python3.11 -m venv` and pip (not uv): `.work/bench-torch-venv`, `pip install torch==2.13.0`
(the CPU build; pip finds it through this machine's pip configuration). The venv is kept, so a
second run measures only.

The doctor runs as it does on a deployed host: from its own venv (`.work/bench-doctor-venv`,
made with `uv venv` + `uv pip install ./doctor` from this checkout each time, as the deploy
installs it into /opt/gptoss/doctor), not from a Python whose site-packages import other
things at start-up.

Each tool runs --runs times (default 5) after one warm-up run, as a fresh process, the two
alternating so that both see the same machine load (the load average is printed):
  doctor:       <doctor> --venv V --json     (default: .work/bench-doctor-venv/bin/gptoss-doctor)
  collect_env:  V/bin/python -m torch.utils.collect_env
It prints min / median / max wall time of each and the ratio of the medians; the goal is >= 20x.
The doctor exits 0 or 1 (1: it found an error, e.g. a CPU torch build): both count as a run.
PYTHONDONTWRITEBYTECODE is dropped for the runs, so the warm-up writes the bytecode an
installed package has (torch's came with pip install); the measured runs then load it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO / ".work" / "bench-torch-venv"
DOCTOR_VENV = REPO / ".work" / "bench-doctor-venv"
GOAL = 20.0


def make_venv(venv: Path) -> None:
    if (venv / "bin" / "python").exists() and any(venv.glob("lib/python*/site-packages/torch/version.py")):
        return
    print(f"making {venv}: python3.11 -m venv + pip install torch==2.13.0", file=sys.stderr)
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0"], check=True)


def make_doctor_venv(venv: Path) -> Path:
    """The doctor in a venv of its own, from this checkout (reinstalled: the sources may have changed)."""
    if not (venv / "bin" / "python").exists():
        subprocess.run(["uv", "venv", "-q", "--python", "python3.11", str(venv)], check=True)
    subprocess.run(["uv", "pip", "install", "-q", "--compile-bytecode", "--reinstall-package", "gptoss-doctor", "--python",
                    str(venv / "bin" / "python"), str(REPO / "doctor")], check=True)
    return venv / "bin" / "gptoss-doctor"


def run_once(argv: list[str], env: dict, ok_codes: tuple[int, ...]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if proc.returncode not in ok_codes:
        sys.exit(f"`{shlex.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed


def time_interleaved(a: list[str], b: list[str], runs: int, env: dict) -> tuple[list[float], list[float]]:
    """Alternate the two commands so that both see the same machine load; one warm-up run each."""
    run_once(a, env, (0, 1))  # the doctor exits 1 when it finds an error: still a run
    run_once(b, env, (0,))
    times_a, times_b = [], []
    for _ in range(runs):
        times_a.append(run_once(a, env, (0, 1)))
        times_b.append(run_once(b, env, (0,)))
    return times_a, times_b


def describe(name: str, times: list[float]) -> str:
    return f"{name:<12} median {statistics.median(times):7.3f} s   min {min(times):7.3f} s   max {max(times):7.3f} s   ({len(times)} runs)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="a venv with torch (default: make .work/bench-torch-venv)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--doctor", help="doctor command (default: gptoss-doctor of .work/bench-doctor-venv)")
    args = parser.parse_args()
    venv = args.venv or DEFAULT_VENV
    if args.venv is None:
        make_venv(venv)
    if not (venv / "bin" / "python").exists():
        sys.exit(f"--venv {venv}: no bin/python there; pass a venv with torch installed")
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    # An installed package has its bytecode compiled (pip and uv do it, or the first run writes it);
    # a shell with PYTHONDONTWRITEBYTECODE=1 would make every doctor run recompile its sources.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    doctor = shlex.split(args.doctor) if args.doctor else [str(make_doctor_venv(DOCTOR_VENV))]
    doctor_argv = [*doctor, "--venv", str(venv), "--json"]
    collect_env_argv = [str(venv / "bin" / "python"), "-m", "torch.utils.collect_env"]

    load_before = os.getloadavg()[0]
    doctor_times, collect_env_times = time_interleaved(doctor_argv, collect_env_argv, args.runs, env)
    load_after = os.getloadavg()[0]
    ratio = statistics.median(collect_env_times) / statistics.median(doctor_times)
    print(f"venv: {venv}   (1-min load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs)")
    print(f"doctor:      {shlex.join(doctor_argv)}")
    print(f"collect_env: {shlex.join(collect_env_argv)}")
    print(describe("doctor", doctor_times))
    print(describe("collect_env", collect_env_times))
    print(f"ratio        collect_env / doctor = {ratio:.1f}x  (goal >= {GOAL:g}x: {'met' if ratio >= GOAL else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
