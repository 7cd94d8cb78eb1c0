"""Validators of the host's facts against the stack: the OS, the GPU family, the driver, the
host's Python and where CUDA_HOME comes from (pure: facts and knowledge rows in, a value or one
`ConfigError` out). Below the key table (`keys.py` calls them), above the field parsers.
"""

from __future__ import annotations

from typing import Any, Mapping

from .fields import ConfigError, bad, check_abs_path, field, version_tuple

SUPPORTED_OS = ("debian", "ubuntu")


def check_os(host: str, facts: Mapping[str, Any]) -> None:
    os_id = facts.get("os_id") or "unknown"
    like = (facts.get("os_like") or "").split()
    if os_id not in SUPPORTED_OS and not any(x in SUPPORTED_OS for x in like):
        raise ConfigError(
            f"host {host}: operating system {os_id!r} ({facts.get('os_pretty') or '?'}) is unsupported: "
            f"this deploy uses apt; fix: use Debian or Ubuntu hosts, or leave this host out of the inventory"
        )


def detect_family(host: str, data_family: Any, facts: Mapping[str, Any], kb: Any) -> Any:
    """The GPU family: from the GPUs on the host, or `gptoss_gpu_family` where there are none."""
    key = "gptoss_gpu_family"
    families = getattr(kb, "gpu_families", {}) or {}
    names = ", ".join(families) or "none known"
    gpus = facts.get("gpus") or []
    detected = []
    for g in gpus:
        fam = kb.family_for_gpu(g.get("name", ""), compute_cap=g.get("compute_cap"), gfx=g.get("gfx"))
        if fam is None:
            raise ConfigError(
                f"host {host}: GPU {g.get('name') or g.get('gfx')!r} matches no GPU family in the knowledge; "
                f"fix: add it to the knowledge's GPU families, or set gptoss_gpu_family to one of {names}"
            )
        detected.append(fam)
    if detected:
        found = {field(f, "name") for f in detected}
        if len(found) > 1:
            raise ConfigError(
                f"host {host}: mixed GPU families {sorted(found)}; fix: serve one family per host "
                f"(use CUDA_VISIBLE_DEVICES outside this deploy)"
            )
        fam = detected[0]
        if data_family is not None and data_family != field(fam, "name"):
            raise bad(
                host, key, data_family, f"the host has {field(fam, 'name')} GPUs",
                "remove gptoss_gpu_family (it is detected) or fix it",
            )
        return fam
    if data_family is None:
        raise bad(
            host, key, data_family, "no GPU found (no nvidia-smi, no ROCm devices)",
            f"install the GPU driver, or for an image build without GPUs set gptoss_gpu_family to one of {names}",
        )
    if data_family not in families:
        raise bad(host, key, data_family, "unknown GPU family", f"use one of {names}")
    return families[data_family]


def check_driver(host: str, vendor: str, facts: Mapping[str, Any], min_driver: str | None, install: bool) -> None:
    if vendor != "nvidia" or not min_driver:
        return
    drv = facts.get("driver_version")
    if not drv or install:
        return  # no GPU (image build) or we install it
    if version_tuple(drv) < version_tuple(min_driver):
        raise ConfigError(
            f"host {host}: NVIDIA driver {drv} is older than {min_driver}, which this stack needs; "
            f"fix: upgrade the driver to >= {min_driver} and reboot, or set gptoss_install_driver=True"
        )


def check_python(host: str, facts: Mapping[str, Any], spec: str, stack: str) -> str:
    from packaging.specifiers import SpecifierSet

    ver = facts.get("python_version")
    path = facts.get("python_path") or "/usr/bin/python3"
    if ver and spec and ver not in SpecifierSet(spec):
        raise ConfigError(
            f"host {host}: python3 {ver} ({path}) is outside stack {stack}'s Python range {spec}; "
            f"fix: install a python3 in that range as /usr/bin/python3, or pick a stack that supports {ver}"
        )
    return path


def choose_cuda_home(host: str, value: Any, vendor: str, stack: Any, venv: str, facts: Mapping[str, Any]) -> tuple[str | None, str]:
    """(CUDA_HOME, how): "pip" (the stack's nvcc wheel in its venv), "system" (/usr/local/cuda,
    at least the stack's CUDA), a path, or (None, "none") when there is neither; the default
    "auto" takes the first that exists. The same path is used to install and to serve."""
    key = "gptoss_cuda_home"
    if vendor == "amd":
        return None, "rocm"
    need = field(stack, "cuda") or ""
    sub = field(stack, "cuda_home_subdir")
    has_pip = bool(field(stack, "nvcc_requirement") and sub)
    have = facts.get("system_cuda_version")
    system_ok = bool(have) and (not need or version_tuple(have) >= version_tuple(need))
    choice = "auto" if value is None else value
    if choice == "auto":
        choice = "pip" if has_pip else "system" if system_ok else "none"
        if choice == "none":
            return None, "none"
    if choice == "pip":
        if not has_pip:
            raise bad(
                host, key, value, f"stack {field(stack, 'name')} has no pip CUDA toolkit (CUDA {need} has no nvcc wheel)",
                f"install NVIDIA's toolkit (apt cuda-nvcc-{need.replace('.', '-')}) and set gptoss_cuda_home='system'",
            )
        pyver = ".".join((facts.get("python_version") or "").split(".")[:2])
        if not pyver:
            raise bad(host, key, value, "python3 not found on the host, so the venv layout is unknown",
                      "install python3 first (apt-get install python3)")
        return f"{venv}/lib/python{pyver}/site-packages/{sub.strip('/')}", "pip"
    if choice == "system":
        if not have:
            raise bad(host, key, value, "no CUDA toolkit at /usr/local/cuda", "install one, or use 'auto'")
        if not system_ok:
            raise bad(host, key, value, f"system CUDA {have} is older than the {need} this stack needs", "upgrade the toolkit or use 'auto'")
        return "/usr/local/cuda", "system"
    if choice == "none":
        return None, "none"
    return check_abs_path(host, key, value, "/usr/local/cuda"), "path"
