"""Collect a snapshot: run every collector concurrently, each bounded and isolated.

A collector is `fn(env) -> {fact key: fact}` listed with the keys it writes; an exception or
a timeout becomes a `failed` fact for each of those keys, never a crash of the doctor. The
default path reads files and runs a few fast commands (nvidia-smi, nvcc); it never imports
torch or vLLM. `deep=True` adds the child-process probe (see `gptoss_doctor.deep`).
"""

from __future__ import annotations

import concurrent.futures as cf
import socket
import time
from datetime import datetime, timezone
from functools import partial

from .. import __version__
from ..redact import redact_tree
from ..snapshot import SCHEMA, Snapshot, failed
from . import cuda, exposure, files, gpu, host, service
from .env import Env
from .venv import VENV_KEYS, VenvError, venv_facts

__all__ = ["Env", "VenvError", "collect", "COLLECTORS"]

COLLECTORS = [*host.COLLECTORS, *gpu.COLLECTORS, *cuda.COLLECTORS, *service.COLLECTORS, *files.COLLECTORS, *exposure.COLLECTORS]
# Slack on top of the per-command timeout for a collector that runs a command or two.
_COLLECTOR_SLACK_S = 3.0


def _run_one(fn, keys: tuple[str, ...], env: Env) -> tuple[dict, float]:
    started = time.perf_counter()
    try:
        facts = fn(env)
    except VenvError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken collector is a failed fact, not a crashed doctor
        facts = {k: failed(f"{type(e).__name__}: {e}") for k in keys}
    return facts, time.perf_counter() - started


def collect(
    env: Env | None = None,
    venv_path: str | None = None,
    deep: bool = False,
    deep_timeout_s: float = 180.0,
) -> Snapshot:
    """The snapshot of this box (or of `env.root`). Raises VenvError when `venv_path` is not a venv."""
    env = env or Env()
    started = time.perf_counter()
    jobs = [(fn.__name__, fn, keys) for fn, keys in COLLECTORS]
    jobs.append(("venv", partial(venv_facts, explicit=venv_path), VENV_KEYS))
    if deep:
        from ..deep import deep_fact  # noqa: PLC0415 - only with --deep

        jobs.append(("deep", partial(deep_fact, venv_path=venv_path, timeout_s=deep_timeout_s), ("deep",)))
    facts: dict[str, dict] = {}
    timings: dict[str, float] = {}
    pool = cf.ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="collect")
    try:
        futures = {name: (pool.submit(_run_one, fn, keys, env), keys) for name, fn, keys in jobs}
        for name, (future, keys) in futures.items():
            limit = (deep_timeout_s + 10 if name == "deep" else env.timeout_s * 2) + _COLLECTOR_SLACK_S
            try:
                got, seconds = future.result(timeout=max(0.1, limit - (time.perf_counter() - started)))
            except cf.TimeoutError:
                got, seconds = {k: failed(f"collector {name} did not finish in {limit:g} s") for k in keys}, limit
            facts.update(got)
            timings[name] = round(seconds, 4)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    hostname = facts.get("host.hostname", {}).get("value") or socket.gethostname()
    ordered = {k: facts[k] for k in sorted(facts)}
    return Snapshot(
        {
            "schema": SCHEMA,
            "doctor_version": __version__,
            "collected_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": hostname,
            "duration_s": round(time.perf_counter() - started, 4),
            "collector_seconds": timings,
            "facts": redact_tree(ordered),
        }
    )
