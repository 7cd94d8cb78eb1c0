"""One validated, frozen config per host, built before any host is changed.

`validate(name, data, facts, kb)` is pure: host data (a mapping of `gptoss_*` keys), the
read-only facts gathered from the host (`plan.gather_facts`) and the knowledge go in; a
`HostConfig` or one `ConfigError` comes out. The error is one line naming the host, the key,
the value and the fix, because that is all the operator needs to act on it.

Each key is parsed by its row in the key table (`keys.py`); this module puts the parsed values
together with the knowledge's stack and recipe: the indexes with their mirrors, the service's
environment, the requirements. Layers (docs/design.md): layout < fields < host checks and the
units' own validators < keys < config < units < rollout < plan.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from gptoss_doctor.layout import (BIN_DIR, CACHE_DIR, CURRENT, DOCTOR_DIR, ENV_FILE, ETC, KEY_FILE,  # noqa: F401
                                  MANIFEST, MARKER, ROOT, SERVICE_USER, STACKS_D, STACKS_DIR, STATE_DIR,
                                  TIKTOKEN_DIR, UNIT)
from gptoss_doctor.service_manager import SYSTEMD, ServiceCommands

from . import airgap, haproxy, keys
from .fields import ConfigError, bad, field as row_field
from .host_checks import check_os
from .keys import DEFAULT_HF_ENDPOINT, MODELS, stack_indexes

# The layout's names above are this module's too: the units and tests read them as config.X.


@dataclass(frozen=True)
class Index:
    name: str
    url: str  # after mirrors


@dataclass(frozen=True)
class HostConfig:
    host: str
    stack: str
    vllm: str
    stack_versions: dict  # what the knowledge says this stack installs (for the manifest)
    family: str
    vendor: str  # "nvidia" | "amd"
    model: str  # the HF id served
    model_size: str  # "20b" | "120b"
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int | None
    port: int
    bind_address: str
    api_key_file: str  # on the controller
    indexes: tuple[Index, ...]  # the stack's indexes, mirrors applied; first is the default
    index_strategy: str | None
    prerelease: str | None
    torch_backend: str | None
    requirements: tuple[str, ...]
    nvcc_requirement: str | None
    cuda_home: str | None  # the path the service and the install use; None on ROCm
    cuda_home_source: str  # "pip" | "system" | "path" | "rocm"
    python: str  # path of the interpreter the venv is built from
    python_spec: str
    uv_source: str  # "controller" or a URL of a uv release tarball
    pypi_url: str  # where the doctor's dependencies come from
    hf_home: str
    predownload: bool
    tiktoken_url: str  # "" = skip
    tool_servers: tuple[str, ...]
    extra_serve_args: tuple[str, ...]
    env: dict  # recipe env (+ deploy env), written to the EnvironmentFile
    serve_flags: tuple[str, ...]  # recipe flags
    recipe_source: str
    install_driver: bool
    min_driver: str | None
    health_timeout_s: int
    doctor_gate: bool
    nvswitch_count: int
    driver_version: str | None
    gpu_count: int
    gpus: tuple = ()  # as detected: [{"name", "compute_cap", "persistence_mode", ...}]
    missing_packages: tuple[str, ...] = ()
    extra_stack_files: tuple[str, ...] = ()  # on the controller; copied to STACKS_D for the doctor
    airgap: Any = None  # airgap.Airgap: wheelhouse / base Python, or None (indexes, today's behaviour)
    service_manager: str = SYSTEMD  # or SUPERVISOR (gptoss-supervise runs the same unit): service_manager.choose
    model_path: str | None = None  # a model folder on the host, served under the HF id
    hf_endpoint: str = DEFAULT_HF_ENDPOINT  # the Hugging Face Hub or a mirror of it (HF_ENDPOINT)
    hf_token_file: str | None = None  # on the controller; copied to HF_HOME/token (0600, service user)
    jit_cache: Any = None  # jit_cache.JitCache: an archive of a warmed host's JIT caches, or None
    front: haproxy.Front | None = None  # HAProxy on bind_address:port before vLLM (gptoss_front), or None
    managed_python: Any = None  # managed_python.ManagedPython: the stack venv's uv-managed CPython, or None

    @property
    def vllm_address(self) -> str:
        """Where vLLM itself listens: behind the front, or on bind_address without one."""
        return self.front.vllm_address if self.front else self.bind_address

    @property
    def vllm_port(self) -> int:
        return self.front.vllm_port if self.front else self.port

    @property
    def service(self) -> ServiceCommands:
        """The commands that restart the service, read its state and its log, for this host's manager."""
        return ServiceCommands(manager=self.service_manager)

    @property
    def venv(self) -> str:
        return f"{STACKS_DIR}/{self.stack}"

    @property
    def stack_marker(self) -> str:
        return f"{self.venv}/{MARKER}"

    def serve_argv(self) -> list[str]:
        """The service's argv: the venv of `current`, never the key (that is in the env)."""
        argv = [
            f"{CURRENT}/bin/vllm",
            "serve",
            self.model_path or self.model,
            "--host",
            self.vllm_address,
            "--port",
            str(self.vllm_port),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:g}",
        ]
        if self.model_path:
            argv += ["--served-model-name", self.model]
        if self.max_model_len:
            argv += ["--max-model-len", str(self.max_model_len)]
        argv += list(self.serve_flags)
        if self.tool_servers:
            argv += ["--tool-server", ",".join(self.tool_servers)]
        argv += list(self.extra_serve_args)
        return argv


def validate(name: str, data: Mapping[str, Any], facts: Mapping[str, Any], kb: Any, installed: bool = False) -> HostConfig:
    """`installed`: the stack is on the host already (the upgrade's rollback stack), so what it
    would take to install it (the wheelhouse's wheels for it) is not asked for."""
    check_os(name, facts)
    v = keys.parse_data(keys.Context(name, data, facts, kb, installed=installed), "deploy")
    stack_name, family = v["gptoss_stack"], v["gptoss_gpu_family"]
    stack = kb.stacks[stack_name]
    vllm = row_field(stack, "vllm")
    vendor = row_field(family, "vendor") or "nvidia"
    model, model_path, tools = v["gptoss_model"], v["gptoss_model_path"], v["gptoss_tool_servers"]

    mirrors = v["gptoss_index_mirrors"]
    indexes = tuple(Index(n, mirrors.get(n, u)) for n, u in stack_indexes(stack))
    torch_backend, index_strategy = row_field(stack, "torch_backend"), row_field(stack, "index_strategy")
    backend_mirror = torch_backend_index(torch_backend, mirrors)
    if backend_mirror:
        # Best match across indexes picks the +cu<NNN> local build over PyPI's plain one, as
        # --torch-backend would, without uv reaching download.pytorch.org.
        indexes += (Index(f"pytorch-{torch_backend}", backend_mirror),)
        torch_backend, index_strategy = None, index_strategy or "unsafe-best-match"

    if v["gptoss_front"] and v["gptoss_service_manager"] != SYSTEMD:
        # the front is Debian's haproxy unit, reloaded (hitless) through systemctl
        raise bad(name, "gptoss_front", data.get("gptoss_front", "auto"), "the front runs under systemd, which this "
                  "host does not run", "serve on 127.0.0.1 behind a balancer or proxy elsewhere, or set gptoss_front=false")
    cuda_home, cuda_src = v["gptoss_cuda_home"]
    air = v["gptoss_wheelhouse"]
    python = air.base_python or facts.get("python_path") or "/usr/bin/python3"

    recipe = kb.recipe(row_field(family, "name"), vllm)
    if recipe is None:
        raise bad(
            name, "gptoss_stack", stack_name, f"the knowledge has no recipe for {row_field(family, 'name')} on vLLM {vllm}",
            "pick a stack the recipes cover for this GPU family, or add a recipe row",
        )
    env = dict(row_field(recipe, "env") or {})
    # A local model folder needs no hub either: offline, so vLLM never waits on an unreachable hub.
    env.update(deploy_env(v["gptoss_hf_home"], cuda_home, vendor, v["gptoss_tiktoken_url"],
                          v["gptoss_predownload"] or model_path is not None))
    if v["gptoss_hf_endpoint"] != DEFAULT_HF_ENDPOINT:  # the default stays implicit: today's env files do not change
        env["HF_ENDPOINT"] = v["gptoss_hf_endpoint"]
    if air.base_python:
        env["PATH"] = with_base_bin(env.get("PATH"), os.path.dirname(air.base_python))
    requirements = with_extras(tuple(row_field(stack, "requirements") or ()),
                               tuple(row_field(recipe, "install_extras") or ()))
    if "demo" in tools:
        requirements += ("gpt-oss",)

    versions = {
        k: row_field(stack, k)
        for k in ("vllm", "torch", "torch_local", "triton_dist", "triton", "cuda", "era")
        if row_field(stack, k) is not None
    }
    gpus = facts.get("gpus") or []
    return HostConfig(
        host=name,
        stack=stack_name,
        vllm=vllm,
        stack_versions=versions,
        family=row_field(family, "name"),
        vendor=vendor,
        model=model,
        model_size=next(size for size, hf_id in MODELS.items() if hf_id == model),
        tensor_parallel_size=v["gptoss_tensor_parallel_size"],
        gpu_memory_utilization=v["gptoss_gpu_memory_utilization"],
        max_model_len=v["gptoss_max_model_len"],
        port=v["gptoss_port"],
        bind_address=v["gptoss_bind_address"],
        api_key_file=v["gptoss_api_key_file"],
        indexes=indexes,
        index_strategy=index_strategy,
        prerelease=row_field(stack, "prerelease"),
        torch_backend=torch_backend,
        requirements=requirements,
        nvcc_requirement=row_field(stack, "nvcc_requirement") if cuda_src == "pip" else None,
        cuda_home=cuda_home,
        cuda_home_source=cuda_src,
        python=python,
        python_spec=str(row_field(stack, "python") or ""),
        uv_source=v["gptoss_uv_source"],
        pypi_url=next(ix.url for ix in indexes if ix.name == "pypi"),
        hf_home=v["gptoss_hf_home"],
        predownload=v["gptoss_predownload"],
        tiktoken_url=v["gptoss_tiktoken_url"],
        tool_servers=tools,
        extra_serve_args=v["gptoss_extra_serve_args"],
        env=env,
        serve_flags=tuple(row_field(recipe, "serve_flags") or ()),
        recipe_source=str(row_field(recipe, "source") or ""),
        install_driver=v["gptoss_install_driver"],
        min_driver=row_field(stack, "min_driver"),
        health_timeout_s=v["gptoss_health_timeout_s"],
        doctor_gate=v["gptoss_doctor_gate"],
        nvswitch_count=int(facts.get("nvswitch_count") or 0),
        driver_version=facts.get("driver_version"),
        gpu_count=len(gpus),
        gpus=tuple(gpus),
        missing_packages=airgap.filter_missing_packages(name, tuple(facts.get("missing_packages") or ()), facts, air),
        extra_stack_files=v["gptoss_extra_stack_files"],
        airgap=air if air.enabled else None,
        service_manager=v["gptoss_service_manager"],
        model_path=model_path,
        hf_endpoint=v["gptoss_hf_endpoint"],
        hf_token_file=v["gptoss_hf_token_file"],
        jit_cache=v["gptoss_jit_cache"],
        front=haproxy.Front(v["gptoss_bind_address"], v["gptoss_port"], v["gptoss_vllm_address"], v["gptoss_vllm_port"],
                            v["gptoss_metrics_allow"]) if v["gptoss_front"] else None,
        managed_python=v["gptoss_python_mirror"],
    )


def torch_backend_index(backend: str | None, mirrors: Mapping[str, str]) -> str | None:
    """uv's --torch-backend=cu<NNN> always fetches from download.pytorch.org; where the site
    mirrors that index (named pytorch-cu<NNN>), the mirror is used as an index instead."""
    if backend and backend not in ("auto",):
        return mirrors.get(f"pytorch-{backend}")
    return None


def with_extras(requirements: tuple[str, ...], extras: tuple[str, ...]) -> tuple[str, ...]:
    """vllm==X -> vllm[flashinfer]==X when the recipe asks for extras."""
    if not extras:
        return requirements
    out = []
    for r in requirements:
        m = re.match(r"^(vllm)(\[[^\]]*\])?(.*)$", r)
        if m:
            have = [e for e in (m.group(2) or "[]")[1:-1].split(",") if e]
            r = f"vllm[{','.join(dict.fromkeys(have + list(extras)))}]{m.group(3)}"
        out.append(r)
    return tuple(out)


def deploy_env(hf_home: str, cuda_home: str | None, vendor: str, tiktoken_url: str, offline: bool) -> dict[str, str]:
    """What the deploy itself puts in the service's environment, next to the recipe's."""
    env = {
        "HF_HOME": hf_home,
        "XDG_CACHE_HOME": CACHE_DIR,
        "VLLM_NO_USAGE_STATS": "1",
        "HOME": STATE_DIR,
    }
    if tiktoken_url:
        env["TIKTOKEN_ENCODINGS_BASE"] = TIKTOKEN_DIR
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if vendor == "amd":
        env["ROCM_PATH"] = "/opt/rocm"
    elif cuda_home:
        env["CUDA_HOME"] = cuda_home
        env["PATH"] = f"{cuda_home}/bin:{CURRENT}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
    return env


def with_base_bin(path: str | None, base_bin: str) -> str:
    """The service PATH with the base interpreter's bin (ninja, pip CUDA tools of a vendor image)
    right after the stack venv's own, as its site-packages come after the venv's."""
    parts = (path or f"{CURRENT}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin").split(":")
    if base_bin in parts:
        return ":".join(parts)
    at = parts.index(f"{CURRENT}/bin") + 1 if f"{CURRENT}/bin" in parts else 0
    return ":".join(parts[:at] + [base_bin] + parts[at:])


def load_knowledge(host: str, extra: Any) -> Any:
    """The knowledge, with the host's extra stack files; its own errors become one line."""
    from gptoss_doctor import knowledge

    key = keys.KEYS["gptoss_extra_stack_files"]
    files = key.parse(keys.Context(host, {key.name: extra}), key, extra)
    try:
        return knowledge.load(extra_stack_files=files) if files else knowledge.load()
    except Exception as e:  # KnowledgeError names file, row and field
        raise ConfigError(f"host {host}: {key.name}={list(files)!r}: knowledge data rejected: {e}; fix: correct that file") from None
