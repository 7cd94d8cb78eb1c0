"""The deployed service and the environments that matter: this shell's env vars, the
`gptoss-vllm.service` unit (Environment=, EnvironmentFile=, User=, ExecStart=), its parsed
serve flags and the CUDA_HOME its environment resolves to, and the deploy's manifest. Secrets are redacted when the snapshot is finished.
"""

from __future__ import annotations

import json
import re
import shlex

from .. import serveargs
from ..snapshot import absent, failed, value
from .env import Env

UNIT = "gptoss-vllm.service"
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
MANIFEST = "/etc/gptoss/manifest.json"

RELEVANT_PREFIXES = (
    "VLLM_", "CUDA", "NCCL", "TORCH", "PYTORCH", "HF_", "HUGGING_FACE", "TRANSFORMERS_", "TIKTOKEN",
    "HSA_", "AMDGCN_", "ROCM", "HIP_", "TRITON", "PYTHON_EXECUTION_BACKEND", "LD_LIBRARY_PATH",
    "VIRTUAL_ENV", "OMP_NUM_THREADS",
)


def relevant_env(environ) -> dict[str, str]:
    return {k: environ[k] for k in sorted(environ) if k.startswith(RELEVANT_PREFIXES)}


def shell_env(env: Env) -> dict:
    return {"env.shell": value(relevant_env(env.environ), "environment of the doctor's shell")}


# -- systemd unit ------------------------------------------------------------------------------


def unit_lines(text: str):
    """(section, key, value) of a unit file, continuation lines joined, comments dropped."""
    section, pending = "", ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, eq, val = line.partition("=")
        if eq:
            yield section, key.strip(), val.strip()


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads them (quotes removed, `export` allowed)."""
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, eq, val = line.partition("=")
        if not eq or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key.strip()):
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1]
        out[key.strip()] = val
    return out


def expand_exec(argv: list[str], environ: dict[str, str]) -> list[str]:
    """systemd's ExecStart= expansion: a lone `$VAR` splits into words, `${VAR}` stays one word,
    `$$` is a literal `$` and `%%` a literal `%` (the deploy's quoting writes both)."""
    out = []
    for word in argv:
        lone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if lone:
            out += environ.get(lone.group(1), "").split()
            continue
        pieces = word.split("$$")  # expand inside each piece, join with the literal "$"
        pieces = [re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: environ.get(m.group(1), ""), p) for p in pieces]
        out.append("$".join(pieces).replace("%%", "%"))
    return out


def find_unit(env: Env) -> str | None:
    return next((f"{d}/{UNIT}" for d in UNIT_DIRS if env.path(f"{d}/{UNIT}").is_file()), None)


def read_unit(env: Env) -> dict | None:
    """The service as systemd would run it (unredacted: callers redact), or None without a unit file."""
    unit_path = find_unit(env)
    if unit_path is None:
        return None
    texts = [env.read_text(unit_path)]
    dropin_dir = env.path(f"{unit_path}.d")
    if dropin_dir.is_dir():
        texts += [p.read_text(errors="replace") for p in sorted(dropin_dir.glob("*.conf"))]
    inline: dict[str, str] = {}
    env_files: list[str] = []
    user, exec_start = None, None
    for text in texts:
        for section, key, val in unit_lines(text):
            if section != "Service":
                continue
            if key == "Environment":
                if not val:
                    inline.clear()
                for assignment in shlex.split(val):
                    name, eq, v = assignment.partition("=")
                    if eq:
                        inline[name] = v
            elif key == "EnvironmentFile":
                env_files = [] if not val else env_files + [val]
            elif key == "User":
                user = val or None
            elif key == "ExecStart":
                exec_start = val or None
    environment = dict(inline)
    file_errors = {}
    for spec in env_files:
        optional = spec.startswith("-")
        path = spec.lstrip("-")
        try:
            # EnvironmentFile= settings override Environment= ones (systemd.exec)
            environment.update(parse_env_file(env.read_text(path)))
        except OSError as e:
            if not optional:
                file_errors[path] = e.strerror or str(e)
    argv: list[str] = []
    if exec_start:
        argv = expand_exec(shlex.split(exec_start.lstrip("-@:+!")), environment)
    return {
        "unit": UNIT,
        "unit_path": unit_path,
        "user": user,
        "environment_files": [s.lstrip("-") for s in env_files],
        "environment_file_errors": file_errors,
        "environment": environment,
        "argv": argv,
    }


def read_manifest(env: Env):
    """The deploy's manifest as JSON, None when there is none; raises ValueError when it is not JSON."""
    if not env.exists(MANIFEST):
        return None
    try:
        return json.loads(env.read_text(MANIFEST))
    except json.JSONDecodeError as e:
        raise ValueError(f"{MANIFEST}: not JSON ({e.msg} at line {e.lineno})") from None


def service_cuda_home(env: Env, unit: dict | None) -> dict:
    """The CUDA_HOME of the deployed service: from its unit's environment, else (no unit) from the
    manifest's env, the environment the deploy gave it; absent when neither is there."""
    from .cuda import service_cuda_home_fact  # noqa: PLC0415

    if unit is not None:
        return service_cuda_home_fact(env, unit["environment"], f"{unit['unit_path']} Environment=/EnvironmentFile=")
    try:
        manifest = read_manifest(env)
    except ValueError:
        manifest = None
    menv = manifest.get("env") if isinstance(manifest, dict) else None
    if isinstance(menv, dict):
        return service_cuda_home_fact(env, {str(k): str(v) for k, v in menv.items()}, f"{MANIFEST} env")
    return absent(f"no {UNIT} and no manifest env: no deployed service to resolve CUDA_HOME for")


def service_facts(env: Env) -> dict:
    unit = read_unit(env)
    if unit is None:
        why = absent(f"no {UNIT} in {', '.join(UNIT_DIRS)}")
        return {"service": why, "service.serve": why, "service.cuda_home": service_cuda_home(env, None)}
    from .venv import _venv_of_binary  # noqa: PLC0415 (venv imports this module)

    venv = _venv_of_binary(env, unit["argv"][0]) if unit["argv"] else None
    facts = {"service": value({**unit, "venv": venv}, unit["unit_path"]),
             "service.cuda_home": service_cuda_home(env, unit)}
    if not unit["argv"]:
        facts["service.serve"] = failed("the unit has no ExecStart=", unit["unit_path"])
        return facts
    try:
        serve = serveargs.parse(unit["argv"], unit["environment"])
        facts["service.serve"] = value(serve, f"{unit['unit_path']} ExecStart=")
    except serveargs.ServeArgsError as e:
        facts["service.serve"] = failed(str(e), f"{unit['unit_path']} ExecStart=")
    return facts


def manifest_fact(env: Env) -> dict:
    try:
        manifest = read_manifest(env)
    except ValueError as e:
        return {"manifest": failed(str(e), MANIFEST)}
    if manifest is None:
        return {"manifest": absent(f"no {MANIFEST}: nothing deployed by gptoss deploys", MANIFEST)}
    return {"manifest": value(manifest, MANIFEST)}


def site_stack_files(env: Env) -> dict:
    """The site's own stack files the deploy copied to /etc/gptoss/stacks.d and listed in the
    manifest, with their text: so `check --from` on another machine judges against them too."""
    try:
        manifest = read_manifest(env)
    except ValueError as e:
        return {"stacks.extra": failed(str(e), MANIFEST)}
    if not isinstance(manifest, dict):
        return {"stacks.extra": absent(f"no {MANIFEST}: no site stack files", MANIFEST)}
    listed = manifest.get("extra_stack_files") or []
    if not isinstance(listed, list):
        return {"stacks.extra": failed(f"{MANIFEST}: extra_stack_files is not a list", MANIFEST)}
    files = []
    for path in map(str, listed):
        try:
            files.append({"path": path, "text": env.read_text(path)})
        except OSError as e:
            files.append({"path": path, "error": e.strerror or str(e)})
    return {"stacks.extra": value(files, f"{MANIFEST} extra_stack_files")}


COLLECTORS = [
    (shell_env, ("env.shell",)),
    (service_facts, ("service", "service.serve", "service.cuda_home")),
    (manifest_fact, ("manifest",)),
    (site_stack_files, ("stacks.extra",)),
]
