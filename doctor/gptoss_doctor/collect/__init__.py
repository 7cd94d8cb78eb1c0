"""Collect a snapshot: run every collector concurrently, each bounded and isolated.

A collector is `fn(env) -> {fact key: fact}` listed with the keys it writes; an exception or
a timeout becomes a `failed` fact for each of those keys, never a crash of the doctor. The
default path reads files and runs a few fast commands (nvidia-smi, nvcc); it never imports
torch or vLLM. `deep=True` adds the child-process probe (see `gptoss_doctor.deep`).
"""

from __future__ import annotations

import _thread
import os
import time
from functools import partial

from .. import __version__
from ..redact import redact_tree
from ..snapshot import SCHEMA, Snapshot, absent, failed
from . import cuda, exposure, files, gpu, host, live, service
from .env import Env
from .venv import VENV_KEYS, VenvError, venv_facts

__all__ = ["Env", "VenvError", "collect", "COLLECTORS"]

COLLECTORS = [*host.COLLECTORS, *gpu.COLLECTORS, *cuda.COLLECTORS, *service.COLLECTORS, *files.COLLECTORS, *live.COLLECTORS,
              *exposure.COLLECTORS]
# Collectors that run a command (their time is mostly waiting): each runs in a thread of its own.
RUN_COMMANDS = {"nvidia_gpus", "nvidia_cuda_max", "fabric_manager", "rocm_gpus", "cuda_home", "service_manager",
                "service_facts", "deep"}
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


def judge_venv_on_its_own(facts: dict) -> None:
    """`--venv X` on a deployed host, X not the deployed venv: the manifest describes the
    deployed venv, not X, so X is judged by its own vLLM (the manifest steps aside)."""
    venv = facts.get("venv", {}).get("value")
    manifest = facts.get("manifest", {})
    if isinstance(venv, dict) and venv.get("rule") == "--venv" and venv.get("deployed") is False and "value" in manifest:
        deployed = manifest["value"].get("venv") if isinstance(manifest["value"], dict) else None
        facts["manifest"] = absent(f"--venv {venv.get('path')} is not the deployed venv ({deployed or 'see the manifest'}): "
                                   "judged by its own vLLM, not the manifest", manifest.get("source"))


def collect(
    env: Env | None = None,
    venv_path: str | None = None,
    deep: bool = False,
    deep_timeout_s: float = 180.0,
) -> Snapshot:
    """The snapshot of this box (or of `env.root`). Raises VenvError when `venv_path` is not a venv."""
    env = env or Env()
    env.forget()  # a collection reads the box afresh, each file once
    started = time.perf_counter()
    jobs = [(fn.__name__, fn, keys) for fn, keys in COLLECTORS]
    jobs.append(("venv", partial(venv_facts, explicit=venv_path), VENV_KEYS))
    jobs.append(("http_surface_fact", partial(exposure.http_surface_fact, explicit=venv_path), exposure.HTTP_SURFACE_KEYS))
    if deep:
        from ..deep import deep_fact  # noqa: PLC0415 - only with --deep

        jobs.append(("deep", partial(deep_fact, venv_path=venv_path, timeout_s=deep_timeout_s), ("deep",)))
    facts: dict[str, dict] = {}
    timings: dict[str, float] = {}
    results: dict[str, tuple[dict, float]] = {}

    def work(group):
        for name, fn, keys in group:
            try:
                results[name] = _run_one(fn, keys, env)
            except BaseException as e:  # noqa: BLE001 - VenvError, re-raised below in this thread
                results[name] = ({"__error__": e}, 0.0)

    # A collector that runs a command (nvidia-smi, nvcc, systemctl, the --deep probe) gets a
    # thread of its own: they wait in parallel. The ones that only read files run one after
    # the other in one more thread: under the GIL, a thread each made them slower (measured
    # 25 ms threaded against 13 ms in turn). Bare `_thread` threads, each releasing a lock when
    # done: threading.Thread.start() waits until the new thread has run, a context switch per
    # thread that a loaded 2-CPU box made 24 ms of the collection (concurrent.futures' import
    # pulls in logging). A hung collector is left behind when its time is up, never waited for.
    groups = [[job] for job in jobs if job[0] in RUN_COMMANDS] + [[job for job in jobs if job[0] not in RUN_COMMANDS]]
    done_of: dict[str, object] = {}
    for group in filter(None, groups):
        done = _thread.allocate_lock()
        done.acquire()

        def run_group(group=group, done=done):
            try:
                work(group)
            finally:
                done.release()

        _thread.start_new_thread(run_group, ())
        done_of.update((name, done) for name, _, _ in group)
    finished: set = set()
    for name, _, keys in jobs:
        limit = (deep_timeout_s + 10 if name == "deep" else env.timeout_s * 2) + _COLLECTOR_SLACK_S
        done = done_of[name]
        if done not in finished and done.acquire(timeout=max(0.0, limit - (time.perf_counter() - started))):
            finished.add(done)
        if name not in results:
            got, seconds = {k: failed(f"collector {name} did not finish in {limit:g} s") for k in keys}, limit
        else:
            got, seconds = results[name]
            if "__error__" in got:
                raise got["__error__"]
        facts.update(got)
        timings[name] = round(seconds, 4)
    judge_venv_on_its_own(facts)
    hostname = facts.get("host.hostname", {}).get("value") or os.uname().nodename
    ordered = {k: facts[k] for k in sorted(facts)}
    return Snapshot(
        {
            "schema": SCHEMA,
            "doctor_version": __version__,
            # datetime's isoformat, without importing datetime (and socket) on the doctor's path
            "collected_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "host": hostname,
            "duration_s": round(time.perf_counter() - started, 4),
            "collector_seconds": timings,
            "facts": redact_tree(ordered),
        }
    )
