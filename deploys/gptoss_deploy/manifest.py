"""/etc/gptoss/manifest.json: what was deployed, so the doctor can report drift.

Deterministic (no timestamps): the same config writes the same bytes, so a re-run is a no-op.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptoss_doctor.redact import redact_url
from pyinfra.api import deploy

from gptoss_doctor.layout import PID_FILE, UNIT_PATH

from . import config as C
from .ops import ManagedFile, files_in_place

SCHEMA = "gptoss-deploy/manifest@1"


def manifest(cfg: C.HostConfig) -> dict:
    return {
        "schema": SCHEMA,
        "stack": cfg.stack,
        "versions": cfg.stack_versions,
        "gpu_family": cfg.family,
        "vendor": cfg.vendor,
        "model": cfg.model,
        "venv": cfg.venv,
        "current": C.CURRENT,
        "python": cfg.python,
        "cuda_home": cfg.cuda_home,
        "cuda_home_source": cfg.cuda_home_source,
        # mirror URLs may carry credentials; the manifest is world-readable
        "indexes": [{"name": ix.name, "url": redact_url(ix.url)} for ix in cfg.indexes],
        "index_strategy": cfg.index_strategy,
        "prerelease": cfg.prerelease,
        "torch_backend": cfg.torch_backend,
        "requirements": list(cfg.requirements),
        "env": dict(sorted(cfg.env.items())),
        "env_file": C.ENV_FILE,
        "api_key_file": C.KEY_FILE,
        "flags": list(cfg.serve_flags),
        "argv": cfg.serve_argv(),
        "unit": C.UNIT,
        "unit_path": UNIT_PATH,
        "user": C.SERVICE_USER,
        "host": cfg.vllm_address,  # vLLM's own socket; the front's below
        "port": cfg.vllm_port,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "tool_servers": list(cfg.tool_servers),
        "recipe_source": cfg.recipe_source,
        "extra_stack_files": [stack_file_dest(f) for f in cfg.extra_stack_files],
        # only with a front: a host without one keeps its manifest byte for byte
        **({"front": {"address": cfg.front.bind_address, "port": cfg.front.port}} if cfg.front else {}),
        **service_manager_fields(cfg),
        **airgap_fields(cfg),
    }


def service_manager_fields(cfg: C.HostConfig) -> dict:
    """Who runs the unit: systemd, or gptoss-supervise with its pid and log files (the doctor
    names the right restart command and reads the right log from these)."""
    sc = cfg.service
    if not sc.supervised:
        return {"service_manager": sc.manager, "service_log": None, "service_pid_file": None, "supervise": None}
    return {"service_manager": sc.manager, "service_log": sc.log_file, "service_pid_file": PID_FILE,
            "supervise": sc.supervise}


def airgap_fields(cfg: C.HostConfig) -> dict:
    """Where the stack came from when it was not an index: the wheelhouse (and --no-deps), and the
    base Python whose torch the venv layers on (the doctor compares the venv's torch with it)."""
    air = cfg.airgap
    if air is None:
        return {"wheelhouse": None, "base_python": None}
    base = None
    if air.base_python:
        base = {"path": air.base_python, "version": air.base_version, "torch": air.torch_build,
                "is_venv": air.base_is_venv, "site_packages": list(air.base_site)}
    return {"wheelhouse": {"path": air.wheelhouse, "no_deps": air.no_deps}, "base_python": base}


def stack_file_dest(path: str) -> str:
    return f"{C.STACKS_D}/{os.path.basename(path)}"


def manifest_text(cfg: C.HostConfig) -> str:
    return json.dumps(manifest(cfg), indent=2, sort_keys=False) + "\n"


@deploy("gptoss manifest")
def apply(cfg: C.HostConfig):
    # The site's own stacks go along, so the doctor can judge a host deployed from one of them.
    stacks = tuple(ManagedFile(stack_file_dest(f), Path(f).read_text()) for f in cfg.extra_stack_files)
    return files_in_place(name="manifest (and the site's extra stack files)",
                          files=(ManagedFile(C.MANIFEST, manifest_text(cfg)), *stacks))
