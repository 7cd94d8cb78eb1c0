"""CUDA_HOME, resolved in the order torch.utils.cpp_extension uses, and its toolkit version."""

from __future__ import annotations

import json
import os
import re

from ..snapshot import absent, value
from .env import CommandError, Env

_NVCC_RELEASE = re.compile(r"release (\d+\.\d+)")


def resolve_cuda_home(env: Env) -> tuple[str, str] | None:
    """(path, rule) as torch's _find_cuda_home: CUDA_HOME or CUDA_PATH, nvcc on PATH, /usr/local/cuda."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if env.environ.get(name):
            return env.environ[name], name
    nvcc = env.which("nvcc")
    if nvcc:
        # torch resolves symlinks here (realpath) only implicitly; keep the PATH form, as users see it
        return os.path.dirname(os.path.dirname(nvcc)), "nvcc-on-PATH"
    if env.exists("/usr/local/cuda"):
        return "/usr/local/cuda", "/usr/local/cuda"
    return None


def version_from_json(env: Env, home: str) -> str | None:
    path = f"{home}/version.json"
    if not env.exists(path):
        return None
    data = json.loads(env.read_text(path))
    full = (data.get("cuda") or {}).get("version") or ""
    m = re.match(r"(\d+\.\d+)", full)
    return m.group(1) if m else None


def cuda_home(env: Env) -> dict:
    found = resolve_cuda_home(env)
    if found is None:
        return {"cuda_home": absent("CUDA_HOME and CUDA_PATH unset, no nvcc on PATH, no /usr/local/cuda")}
    home, rule = found
    exists = env.path(home).is_dir()
    nvcc = f"{home.rstrip('/')}/bin/nvcc"
    has_nvcc = env.path(nvcc).is_file()
    version, version_from, nvcc_error = None, None, None
    if exists:
        version = version_from_json(env, home)
        version_from = "version.json" if version else None
    if version is None and has_nvcc:
        try:
            done = env.run([nvcc, "--version"])
            m = _NVCC_RELEASE.search(done.stdout)
            if m:
                version, version_from = m.group(1), "nvcc"
            else:
                nvcc_error = f"nvcc --version exited {done.returncode}: {done.tail(200)}"
        except CommandError as e:
            nvcc_error = str(e)
    fact = {
        "path": home,
        "rule": rule,
        "exists": exists,
        "nvcc": nvcc if has_nvcc else None,
        "version": version,
        "version_from": version_from,
        # a wrapper nvcc on PATH (/usr/local/bin/nvcc) makes torch pick a home without headers
        "has_cuda_h": env.path(f"{home.rstrip('/')}/include/cuda.h").is_file(),
    }
    if nvcc_error:
        fact["nvcc_error"] = nvcc_error
    return {"cuda_home": value(fact, rule if rule != "/usr/local/cuda" else "default")}


COLLECTORS = [(cuda_home, ("cuda_home",))]
