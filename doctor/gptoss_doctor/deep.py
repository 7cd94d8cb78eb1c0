"""--deep: run collect/deep_probe.py in the TARGET venv's python, in a child process with a time limit.

The probe imports torch, initialises CUDA, runs a small matmul and a tiny Triton kernel, and
prints one JSON line per step as it goes, so a hang or a crash still leaves the steps before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .snapshot import absent, failed, value

PROBE = Path(__file__).parent / "collect" / "deep_probe.py"
STEPS = ("torch_import", "cuda_init", "matmul", "triton_kernel")


def python_of(venv: str) -> Path | None:
    for name in ("python", "python3"):
        exe = Path(venv) / "bin" / name
        if exe.exists():
            return exe
    return None


def parse_probe_output(stdout: str) -> dict:
    """{step: result} from the probe's JSON lines; other lines (a library's prints) are ignored."""
    steps = {}
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step") in STEPS:
            steps[row.pop("step")] = row
    return steps


def run_probe(python: Path, timeout_s: float, environ: dict | None = None) -> dict:
    started = time.perf_counter()
    note = None
    try:
        # -I: the target's own site-packages only, never the doctor's PYTHONPATH
        proc = subprocess.run(
            [str(python), "-I", str(PROBE)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            env=environ,
            stdin=subprocess.DEVNULL,
        )
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc, note = None, f"timed out after {timeout_s:g} s"
    steps = parse_probe_output(stdout)
    for name in STEPS:
        if name not in steps:
            # the probe died or hung before this step: say so, with the end of what it printed
            tail = stderr.strip()[-600:] or "no output on stderr"
            why = note or (f"the probe died (exit {rc}) before this step: {tail}" if rc else "not reached")
            steps[name] = {"ok": False, "seconds": None, "error": why, "detail": None}
    steps["python"] = str(python)
    steps["seconds"] = round(time.perf_counter() - started, 3)
    return steps


def deep_fact(env, venv_path: str | None = None, timeout_s: float = 180.0) -> dict:
    from .collect.venv import find_venv  # noqa: PLC0415

    found = find_venv(env, venv_path)
    if found is None:
        return {"deep": absent("no target venv for --deep: pass --venv PATH")}
    path, rule, box_path = found
    venv = str(env.path(path)) if box_path else path
    python = python_of(venv)
    if python is None:
        return {"deep": failed(f"no bin/python in {path} (from {rule})")}
    return {"deep": value(run_probe(python, timeout_s, dict(env.environ)), f"{python} -I {PROBE.name}")}


if __name__ == "__main__":  # a manual run: python -m gptoss_doctor.deep VENV
    print(json.dumps(run_probe(python_of(sys.argv[1]) or Path(sys.executable), 180.0), indent=2))
