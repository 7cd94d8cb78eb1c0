"""Small pure helpers shared by the checks: versions, evidence, the stack in force, fix commands."""

from __future__ import annotations

import posixpath
import shlex
from typing import Any, Iterable

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ..layout import CURRENT, ENV_FILE, STACKS_DIR, UNIT
from ..snapshot import Snapshot, canonical_name

GUIDE = "https://github.com/vllm-project/recipes/blob/main/OpenAI/GPT-OSS.md"
DEFAULT_VENV = CURRENT


class NotApplicable(Exception):
    """Raised by a check that does not apply to this box; the runner reports `skipped: <msg>`."""


# --- typed reads: a fact of an unexpected shape reads as empty, never crashes a check --------


def fact_obj(snap: Snapshot, key: str) -> dict:
    v = snap.get(key)
    return v if isinstance(v, dict) else {}


def fact_list(snap: Snapshot, key: str) -> list:
    v = snap.get(key)
    return v if isinstance(v, list) else []


def obj(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def as_int(v: Any, default: int | None = None) -> int | None:
    """An int from an int or a numeric string (bool is not a number here)."""
    if isinstance(v, bool):
        return default
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def as_str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


# --- versions -------------------------------------------------------------------------------


def version(text: Any) -> Version | None:
    """A parsed version, or None for anything that is not one (so checks never crash on junk)."""
    if text is None:
        return None
    try:
        return Version(str(text).strip())
    except InvalidVersion:
        return None


def major_minor(text: Any) -> tuple[int, int] | None:
    """'12.8' / '12.8.93' / '13' -> (12, 8) / (12, 8) / (13, 0); None if not a version."""
    v = version(text)
    if v is None:
        return None
    rel = v.release + (0,)
    return rel[0], rel[1]


def fmt_mm(mm: tuple[int, int] | None) -> str:
    return f"{mm[0]}.{mm[1]}" if mm else "unknown"


def in_specifier(ver: str, spec: str) -> bool | None:
    v = version(ver)
    try:
        s = SpecifierSet(spec)
    except InvalidSpecifier:
        return None
    if v is None:
        return None
    return s.contains(v, prereleases=True)


def public(v: Version) -> Version:
    """The version without its local label: 2.8.0+cu128 -> 2.8.0."""
    return Version(v.public)


# --- evidence and fixes ---------------------------------------------------------------------


def evidence(snap: Snapshot, keys: Iterable[str], **seen: Any) -> dict[str, Any]:
    """What was seen, plus where each fact it came from was read (the collector's `source`, else
    the key); facts that have no value on this box are left out."""
    return {**seen, "sources": {k: snap.source(k) or f"fact {k}" for k in keys if snap.has(k)}}


def venv_path(snap: Snapshot) -> str:
    """The venv the fix commands should act on: the inspected one, else the deployed one."""
    path = as_str(fact_obj(snap, "venv").get("path")) or as_str(fact_obj(snap, "manifest").get("venv"))
    return path or DEFAULT_VENV


def venv_python(snap: Snapshot) -> str:
    return as_str(fact_obj(snap, "venv").get("executable")) or posixpath.join(venv_path(snap), "bin", "python")


def uv_pip(snap: Snapshot, verb: str, *args: str) -> str:
    """`uv pip <verb> --python <venv>/bin/python args...`, quoted for a POSIX shell."""
    return " ".join(["uv", "pip", verb, "--python", shlex.quote(venv_python(snap)), *map(shlex.quote, args)])


def stack_args(stack) -> list[str]:
    """The uv options a knowledge stack installs with: its extra indexes, strategy, prereleases, torch backend."""
    args: list[str] = []
    for index in stack.indexes or ():
        url = getattr(index, "url", index)
        if url.rstrip("/") != "https://pypi.org/simple":
            args += ["--extra-index-url", url]
    for opt, val in (("--index-strategy", stack.index_strategy), ("--prerelease", stack.prerelease),
                     ("--torch-backend", stack.torch_backend)):
        if val:
            args += [opt, val]
    return args


def stack_install_commands(snap: Snapshot, stack, *extra: str) -> list[str]:
    """Install a knowledge stack into the inspected venv, as the stack's row says to."""
    return [uv_pip(snap, "install", *stack.requirements, *extra, *stack_args(stack))]


def python_in(spec: str) -> str:
    """A Python inside `spec` that uv can fetch: 3.12 where allowed (what the gpt-oss tools
    package needs and vLLM's wheels are most used with), else the newest allowed."""
    for minor in (12, 14, 13, 11, 10):
        if in_specifier(f"3.{minor}.0", spec):
            return f"3.{minor}"
    return "3.12"


def fresh_stack_commands(stack) -> list[str]:
    """A new venv for another stack beside the current one (switching is the deploy's job)."""
    path = posixpath.join(STACKS_DIR, stack.name)
    py = posixpath.join(path, "bin", "python")
    return [
        f"uv venv --python {python_in(stack.python)} {path}",
        " ".join(["uv", "pip", "install", "--python", py, *map(shlex.quote, stack.requirements), *stack_args(stack)]),
    ]


# --- distributions --------------------------------------------------------------------------


def distributions(snap: Snapshot) -> list[dict]:
    return [d for d in fact_list(snap, "venv.distributions") if isinstance(d, dict)]


def dists_by_name(snap: Snapshot) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in distributions(snap):
        out.setdefault(canonical_name(str(d.get("name", ""))), []).append(d)
    return out


def installed_version(snap: Snapshot, name: str) -> str | None:
    found = dists_by_name(snap).get(canonical_name(name))
    return found[0].get("version") if found else None


# --- the stack in force ---------------------------------------------------------------------


def current_stack(snap: Snapshot, kb):
    """(stack, how) from the deployed manifest, else from the installed vLLM version.

    Raises NotApplicable when neither names a stack the knowledge holds.
    """
    manifest = snap.get("manifest")
    if isinstance(manifest, dict) and isinstance(manifest.get("stack"), str):
        name = manifest["stack"]
        if name in kb.stacks:
            return kb.stacks[name], f"manifest stack {name!r} ({snap.source('manifest') or 'manifest'})"
    vllm = fact_obj(snap, "vllm.install").get("version")
    if version(vllm) is not None:
        stack = kb.stack_for_vllm(vllm)
        if stack is not None:
            return stack, f"installed vLLM {vllm} matches stack {stack.name!r}"
    if isinstance(manifest, dict) and isinstance(manifest.get("stack"), str):
        raise NotApplicable(
            f"manifest stack {manifest['stack']!r} is not in the knowledge (known: {', '.join(kb.stacks)})"
        )
    if vllm:
        raise NotApplicable(f"vLLM {vllm} matches no knowledge stack and there is no manifest")
    raise NotApplicable("no manifest and no vLLM installed, so the stack is unknown")


def vllm_version(snap: Snapshot) -> str:
    """The installed vLLM version; NotApplicable when vLLM is not installed or its version is junk."""
    v = fact_obj(snap, "vllm.install").get("version")
    if not v:
        raise NotApplicable("vLLM is not installed in the inspected venv")
    if version(v) is None:
        raise NotApplicable(f"vLLM's version {v!r} ({snap.source('vllm.install') or 'vllm.install'}) is not a version")
    return str(v)


# --- GPUs -----------------------------------------------------------------------------------


def nvidia_gpus(snap: Snapshot) -> list[dict]:
    return [g for g in fact_list(snap, "nvidia.gpus") if isinstance(g, dict)]


def rocm_gpus(snap: Snapshot) -> list[dict]:
    return [g for g in fact_list(snap, "rocm.gpus") if isinstance(g, dict)]


def gpu_families(snap: Snapshot, kb) -> list[tuple[dict, Any]]:
    """Every GPU with its knowledge family (None when the knowledge does not know it)."""
    out = []
    for g in nvidia_gpus(snap):
        out.append((g, kb.family_for_gpu(str(g.get("name", "")), compute_cap=g.get("compute_cap"))))
    for g in rocm_gpus(snap):
        out.append((g, kb.family_for_gpu(str(g.get("name", "")), gfx=g.get("gfx"))))
    return out


def gpu_count(snap: Snapshot) -> int:
    return len(nvidia_gpus(snap)) + len(rocm_gpus(snap))


# --- environment and serve flags ------------------------------------------------------------


def service(snap: Snapshot) -> dict:
    return fact_obj(snap, "service")


def serve(snap: Snapshot) -> dict:
    return fact_obj(snap, "service.serve")


def serve_flags(snap: Snapshot) -> dict:
    return obj(serve(snap).get("flags"))


def _canonical(flag: str) -> str:
    """`--tensor_parallel_size` / `-tp` -> `tensor-parallel-size`, as serveargs writes `flags` keys."""
    from ..serveargs import canonical_flag

    return canonical_flag(flag if flag.startswith("-") else "--" + flag)


def flag_value(snap: Snapshot, *names: str) -> Any:
    """The value of the first of `names` set in the service's serve flags (None if none is)."""
    flags = {_canonical(k): v for k, v in serve_flags(snap).items()}
    for n in names:
        if _canonical(n) in flags:
            return flags[_canonical(n)]
    return None


def has_flag(snap: Snapshot, *names: str) -> bool:
    flags = {_canonical(k) for k in serve_flags(snap)}
    return any(_canonical(n) in flags for n in names)


def env_sources(snap: Snapshot) -> list[tuple[str, str, dict]]:
    """[(label, fact key, {name: value})] for the doctor's shell and the service's environment."""
    out = []
    shell = snap.get("env.shell")
    if isinstance(shell, dict):
        out.append(("shell", "env.shell", shell))
    svc_env = service(snap).get("environment")
    if isinstance(svc_env, dict) and snap.has("service"):
        out.append(("service", "service", svc_env))
    return out


def effective_env(snap: Snapshot) -> tuple[str, str, dict]:
    """The environment vLLM runs with: the service's when there is one, else the shell's."""
    sources = env_sources(snap)
    for label, key, env in sources:
        if label == "service":
            return label, key, env
    return sources[0] if sources else ("shell", "env.shell", {})


def truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def env_file_delete(path: str, names: Iterable[str]) -> str:
    """A sed command deleting NAME=... lines (with or without `export`) from an EnvironmentFile."""
    return f"sed -i -E '/^(export +)?({'|'.join(names)})=/d' {shlex.quote(path)}"


def env_file_hint(snap: Snapshot) -> str:
    files = service(snap).get("environment_files") or []
    return files[0] if files else ENV_FILE


def target_vllm(snap: Snapshot, kb) -> str:
    """The vLLM the box serves: the installed one, else the deployed manifest's stack's."""
    if fact_obj(snap, "vllm.install").get("version"):
        return vllm_version(snap)
    manifest = snap.get("manifest")
    if isinstance(manifest, dict) and isinstance(manifest.get("stack"), str) and manifest["stack"] in kb.stacks:
        return kb.stacks[manifest["stack"]].vllm
    raise NotApplicable("vLLM is not installed and no manifest names a stack")


def served_model(snap: Snapshot, kb):
    """The knowledge model the service serves; NotApplicable when it serves something else."""
    name = serve(snap).get("model")
    if not name:
        raise NotApplicable("the service's serve flags name no model")
    model = kb.model(str(name))
    if model is None:
        raise NotApplicable(f"the served model {name!r} is not a gpt-oss model the knowledge knows")
    return model


def tensor_parallel_size(snap: Snapshot) -> int:
    tp = as_int(serve(snap).get("tensor_parallel_size")) or as_int(flag_value(snap, "--tensor-parallel-size")) or 1
    return max(tp, 1)


DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default since 0.1 (CacheConfig.gpu_memory_utilization)


def gpu_memory_utilization(snap: Snapshot) -> tuple[float, bool]:
    """(value, was it set explicitly)."""
    u = serve(snap).get("gpu_memory_utilization")
    if u is None:
        u = flag_value(snap, "--gpu-memory-utilization")
    try:
        return (float(u), True) if u is not None else (DEFAULT_GPU_MEMORY_UTILIZATION, False)
    except (TypeError, ValueError):
        return DEFAULT_GPU_MEMORY_UTILIZATION, False


def unit_name(snap: Snapshot) -> str:
    return service(snap).get("unit") or UNIT


# --- the service manager: every fix that restarts, edits or reads the service asks here -------


def service_commands(snap: Snapshot):
    """The commands of the manager that runs the service on this box (systemd or gptoss-supervise)."""
    from ..service_manager import commands_for  # noqa: PLC0415

    return commands_for(snap)


def restart_command(snap: Snapshot) -> str:
    return service_commands(snap).restart()


def host_daemon_command(snap: Snapshot, unit: str, verb: str) -> str:
    """Start/restart/status of a host daemon (fabric manager, persistenced): systemctl where
    systemd is PID 1, the daemon's own command elsewhere (a container, a VM without systemd)."""
    from ..service_manager import host_daemon, pid1_systemd  # noqa: PLC0415

    return host_daemon(unit, verb, pid1_systemd(snap))


def edit_unit_commands(snap: Snapshot, note: str) -> list[str]:
    """Edit the unit (what to change as a comment), then restart: for the manager in charge."""
    sc = service_commands(snap)
    return [sc.edit_unit(note), sc.restart()]


# --- the site's own stacks, as the snapshot recorded them ---------------------------------------


def site_stack_texts(snap: Snapshot) -> dict[str, str]:
    """{path on the host: TOML text} of the site stack files the snapshot carries (`stacks.extra`)."""
    return {str(f["path"]): f["text"] for f in fact_list(snap, "stacks.extra")
            if isinstance(f, dict) and isinstance(f.get("text"), str) and f.get("path")}


def knowledge_for(snap: Snapshot, load) -> tuple[Any, list[dict]]:
    """(knowledge with every usable site stack file of the snapshot, [{"path", "error"}] for the
    files left out: unreadable on the host, or rejected by the loader). `load` is
    `gptoss_doctor.knowledge.load` (passed in, so this module stays free of the loader)."""
    texts = site_stack_texts(snap)
    memo = snap.__dict__.setdefault("_knowledge_for", {})  # diagnose and site-stack-file-invalid both ask
    key = (id(load), tuple(sorted(texts.items())))
    if key not in memo:
        memo[key] = _knowledge_for(snap, load, texts)
    kb, problems = memo[key]
    return kb, list(problems)


def _knowledge_for(snap: Snapshot, load, texts: dict[str, str]) -> tuple[Any, list[dict]]:
    from ..knowledge import KnowledgeError  # noqa: PLC0415

    problems = [{"path": str(f.get("path")), "error": f"unreadable on the host: {f['error']}"}
                for f in fact_list(snap, "stacks.extra") if isinstance(f, dict) and f.get("error")]
    if not texts:
        return load(), problems
    try:
        return load(extra_stack_texts=texts), problems
    except KnowledgeError:
        pass
    good: dict[str, str] = {}
    for path, text in texts.items():  # keep each file that loads beside the ones kept before it
        try:
            load(extra_stack_texts={**good, path: text})
            good[path] = text
        except KnowledgeError as e:
            problems.append({"path": path, "error": str(e)})
    return (load(extra_stack_texts=good) if good else load()), problems
