"""CUDA_HOME, resolved in the order torch.utils.cpp_extension uses, and its toolkit version.

`cuda_home` is the doctor's own shell's; `service_cuda_home_fact` resolves the same way from the
deployed service's environment (collect/service.py calls it), because the service, not the
shell that runs the doctor, is what compiles kernels while serving.
"""

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


# What a systemd service gets when its unit sets no PATH (systemd.exec(5), "Environment variables
# in spawned processes"): the service finds nvcc only there.
SYSTEMD_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cuda_home(env: Env) -> dict:
    return {"cuda_home": cuda_home_fact(env)}


def service_cuda_home_fact(env: Env, environment: dict[str, str], source: str) -> dict:
    """The CUDA_HOME the service resolves: its own environment (unredacted), systemd's PATH if it
    sets none, the box's files; `source` says where that environment was read."""
    # the same box: what one collection already ran (nvcc --version) is shared, not run again
    service_env = Env(root=env.root, environ={"PATH": SYSTEMD_DEFAULT_PATH, **environment}, timeout_s=env.timeout_s,
                      _memo=env._memo, _memo_lock=env._memo_lock)
    fact = cuda_home_fact(service_env)
    fact["source"] = f"{source}: {fact['source']}" if fact.get("source") else source
    return fact


def cuda_home_fact(env: Env) -> dict:
    """One fact: the toolkit `env.environ` resolves to, as torch would."""
    found = resolve_cuda_home(env)
    if found is None:
        return absent("CUDA_HOME and CUDA_PATH unset, no nvcc on PATH, no /usr/local/cuda")
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
            done = env.once(f"nvcc --version: {nvcc}", lambda: env.run([nvcc, "--version"]))
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
    return value(fact, rule if rule != "/usr/local/cuda" else "default")


COLLECTORS = [(cuda_home, ("cuda_home",))]
