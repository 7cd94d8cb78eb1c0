#!/usr/bin/env python3
"""Benchmark: the doctor against a real vLLM's source, its HTTP surface parsed (cold) or cached (warm).

    python3 bench/http_surface_vllm.py [--version 0.26.0] [--runs N] [--doctor "CMD ..."]

`vllm.http_surface` parses every file under the installed vLLM's `entrypoints` packages with
`ast` (180 files in 0.26.0); the result is cached, keyed by the dist-info's RECORD. This bench
gets the real wheel (`pip download vllm==VERSION --no-deps` into .work/wheels, kept), unpacks
only what the doctor reads of it (vllm/__init__.py, vllm/entrypoints/, the dist-info) into a
venv-shaped folder `.work/vllm-VERSION-venv` (no torch: the doctor reports that, it is still a
full run), and times:

  in process:  parse_http_surface (what a miss costs) and cached_http_surface on a hit;
  the doctor:  <doctor> --venv V --json as a fresh process, cold (the surface's cache file
               removed before the run; the knowledge's cache stays warm) and warm, alternating.

The doctor is .work/bench-doctor-venv/bin/gptoss-doctor, installed from this checkout as
bench/doctor_vs_collect_env.py does, unless --doctor names another. The cache is a temporary
folder (GPTOSS_DOCTOR_CACHE) of this run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".work" / "wheels"
sys.path.insert(0, str(REPO / "doctor"))
sys.path.insert(0, str(REPO / "bench"))


def wheel_of(version: str) -> Path:
    found = sorted(glob.glob(str(WHEELS / f"vllm-{version}-*.whl")))
    if not found:
        print(f"pip download vllm=={version} --no-deps -d {WHEELS}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", f"vllm=={version}", "--no-deps", "-d", str(WHEELS)],
                       check=True)
        found = sorted(glob.glob(str(WHEELS / f"vllm-{version}-*.whl")))
    if not found:
        sys.exit(f"vllm=={version}: pip download left no wheel in {WHEELS}")
    return Path(found[0])


def venv_with_vllm_source(version: str) -> Path:
    """A venv-shaped folder holding what the doctor reads of the wheel (made once, kept)."""
    venv = REPO / ".work" / f"vllm-{version}-venv"
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if (site / f"vllm-{version}.dist-info" / "RECORD").is_file():
        return venv
    with zipfile.ZipFile(wheel_of(version)) as whl:
        wanted = [n for n in whl.namelist()
                  if n == "vllm/__init__.py" or n.startswith(("vllm/entrypoints/", f"vllm-{version}.dist-info/"))]
        whl.extractall(site, wanted)
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        (venv / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    (venv / "pyvenv.cfg").write_text(f"home = {Path(os.path.realpath(sys.executable)).parent}\n"
                                     "include-system-site-packages = false\n"
                                     f"version = {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}\n")
    return venv


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def describe(name: str, times: list[float]) -> str:
    return (f"{name:<28} median {statistics.median(times) * 1000:8.1f} ms   min {min(times) * 1000:8.1f} ms"
            f"   max {max(times) * 1000:8.1f} ms   ({len(times)} runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="0.26.0", help="the vLLM release whose wheel is read (default 0.26.0)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--doctor", help="doctor command (default: gptoss-doctor of .work/bench-doctor-venv)")
    args = parser.parse_args()
    venv = venv_with_vllm_source(args.version)
    cache = tempfile.TemporaryDirectory(prefix="gptoss-surface-bench-")
    os.environ["GPTOSS_DOCTOR_CACHE"] = cache.name

    from gptoss_doctor.collect import exposure
    from gptoss_doctor.collect.venv import site_packages_dirs

    vllm_dir = exposure.installed_vllm(site_packages_dirs(venv))
    surface = exposure.parse_http_surface(vllm_dir)
    print(f"vLLM {args.version}: {surface['files_read']} files parsed, {len(surface['routes'])} routes, "
          f"key check {'found' if surface['guard'] else 'NOT found'} ({vllm_dir})")
    parse = [timed(exposure.parse_http_surface, vllm_dir) for _ in range(args.runs)]
    assert exposure.cached_http_surface(vllm_dir) == surface  # stores it
    hit = [timed(exposure.cached_http_surface, vllm_dir) for _ in range(args.runs)]
    assert exposure.cached_http_surface(vllm_dir) == surface

    if args.doctor:
        doctor = shlex.split(args.doctor)
    else:
        from doctor_vs_collect_env import DOCTOR_VENV, make_doctor_venv

        doctor = [str(make_doctor_venv(DOCTOR_VENV))]
    argv = [*doctor, "--venv", str(venv), "--json"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")}

    def run() -> float:
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - started
        if proc.returncode not in (0, 1):
            sys.exit(f"`{shlex.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        fact = json.loads(proc.stdout)["facts"]["vllm.http_surface"]
        if fact.get("source") != str(vllm_dir) or "value" not in fact:
            # the served venv wins over --venv (what listens is the deployed service's vLLM)
            sys.exit(f"the doctor read the HTTP surface of {fact.get('source')}, not {vllm_dir} ({fact}): "
                     "a deployment on this machine (/etc/gptoss) takes precedence; run where there is none")
        return elapsed

    def drop_surface_cache() -> None:
        for f in Path(cache.name).glob("http-surface-*.json"):
            f.unlink()

    run()  # warm-up: bytecode, the knowledge's cache
    cold, warm = [], []
    for _ in range(args.runs):
        drop_surface_cache()
        cold.append(run())
        warm.append(run())
    print(f"doctor: {shlex.join(argv)}   (1-min load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print(describe("parse (a cache miss)", parse))
    print(describe("cached (a hit)", hit))
    print(describe("doctor, surface cold", cold))
    print(describe("doctor, surface warm", warm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
