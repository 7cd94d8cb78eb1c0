"""The deployed service and the environments that matter: this shell's env vars, the
`gptoss-vllm.service` unit (Environment=, EnvironmentFile=, User=, ExecStart=), its parsed
serve flags and the CUDA_HOME its environment resolves to, and the deploy's manifest. Secrets are redacted when the snapshot is finished.
"""

from __future__ import annotations

import json
import re
import shlex

from .. import serveargs
from ..layout import MANIFEST, UNIT
from ..snapshot import absent, failed, value
from .cuda import service_cuda_home_fact
from .env import CommandError, Env

UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")

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
    """The service as systemd would run it (unredacted: callers redact; read-only: shared by every
    collector of one collection), or None without a unit file."""
    return env.once("unit", lambda: _read_unit(env))


def _read_unit(env: Env) -> dict | None:
    unit_path = find_unit(env)
    if unit_path is None:
        return None
    texts = [env.read_text(unit_path)]
    dropin_dir = env.path(f"{unit_path}.d")
    if dropin_dir.is_dir():
        texts += [p.read_text(errors="replace") for p in sorted(dropin_dir.glob("*.conf"))]
    inline: dict[str, str] = {}
    env_files: list[str] = []
    user, group, exec_start = None, None, None
    supplementary: list[str] = []
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
            elif key == "Group":
                group = val or None
            elif key == "SupplementaryGroups":  # a list; an empty assignment resets it
                supplementary = supplementary + val.split() if val else []
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
        "group": group,
        "supplementary_groups": supplementary,
        "environment_files": [s.lstrip("-") for s in env_files],
        "environment_file_errors": file_errors,
        "environment": environment,
        "argv": argv,
    }


def read_manifest(env: Env):
    """The deploy's manifest as JSON, None when there is none; raises ValueError when it is not JSON.
    Read once per collection (read-only for callers)."""
    return env.once("manifest", lambda: _read_manifest(env))


def _read_manifest(env: Env):
    if not env.exists(MANIFEST):
        return None
    try:
        return json.loads(env.read_text(MANIFEST))
    except json.JSONDecodeError as e:
        raise ValueError(f"{MANIFEST}: not JSON ({e.msg} at line {e.lineno})") from None


def service_cuda_home(env: Env, unit: dict | None) -> dict:
    """The CUDA_HOME of the deployed service: from its unit's environment, else (no unit) from the
    manifest's env, the environment the deploy gave it; absent when neither is there."""
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
    venv = env.venv_of_binary(unit["argv"][0]) if unit["argv"] else None
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


# -- the service manager and whether the service runs ----------------------------------------------

SYSTEMCTL_TIMEOUT_S = 2.0  # `systemctl is-active` answers in milliseconds; a hung bus must not hold the doctor


def pid1_is_systemd(env: Env) -> bool:
    """Whether systemd is PID 1 (asked by host.systemd and service.manager: looked up once)."""
    return env.once("pid1_is_systemd", lambda: _pid1_is_systemd(env))


def _pid1_is_systemd(env: Env) -> bool:
    # /run/systemd/system exists exactly when systemd is the running init (sd_booted()).
    comm = ""
    if env.exists("/proc/1/comm"):
        try:
            comm = env.read_text("/proc/1/comm").strip()
        except OSError:
            comm = ""
    return env.path("/run/systemd/system").is_dir() or comm == "systemd"


def pid_running(env: Env, pid: int) -> bool:
    """/proc/<pid> exists and is not a zombie (the box's /proc, so a fake root works too)."""
    try:
        stat = env.read_text(f"/proc/{pid}/stat")
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return not fields or fields[0] != "Z"


def supervised_state(env: Env, pid_file: str) -> dict:
    """gptoss-supervise's state as its own `status` computes it: the monitor's pid file (checked
    against /proc) and the state file it keeps beside it."""
    state_file = pid_file[: -len(".pid")] + ".state" if pid_file.endswith(".pid") else pid_file + ".state"
    monitor = None
    try:
        text = env.read_text(pid_file).strip()
        monitor = int(text) if text.isdigit() and int(text) > 0 else None
    except OSError:
        pass
    alive = monitor is not None and pid_running(env, monitor)
    try:
        recorded = json.loads(env.read_text(state_file))
    except (OSError, ValueError):
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    state = str(recorded.get("state") or ("active" if alive else "inactive"))
    if not alive and state in ("active", "activating", "auto-restart", "deactivating"):
        state = "failed"  # the monitor died without saying so
    main_pid = recorded.get("main_pid") if alive and isinstance(recorded.get("main_pid"), int) else None
    return {"state": state, "running": alive and state == "active", "pid": monitor if alive else None,
            "main_pid": main_pid, "pid_file": pid_file, "state_file": state_file}


def systemd_state(env: Env, unit: str, pid1: bool) -> dict:
    if not pid1:
        return {"state": None, "running": None, "state_error": "systemd is not PID 1 here: nothing runs the unit"}
    try:
        done = env.run(["systemctl", "is-active", unit], timeout_s=SYSTEMCTL_TIMEOUT_S)
    except CommandError as e:
        return {"state": None, "running": None, "state_error": str(e)}
    state = (done.stdout.strip().splitlines() or ["unknown"])[0]
    return {"state": state, "running": state == "active"}


def service_manager(env: Env) -> dict:
    """Who runs gptoss-vllm here: the manifest's word (the deploy chose), else systemd when it is
    PID 1, else gptoss-supervise when it is installed; and whether the service runs now."""
    from ..service_manager import MANAGERS, SUPERVISE, SUPERVISOR, SYSTEMD, default_log_file, default_pid_file  # noqa: PLC0415

    pid1 = pid1_is_systemd(env)
    try:
        manifest = read_manifest(env)
    except ValueError:
        manifest = None
    manifest = manifest if isinstance(manifest, dict) else {}
    recorded = manifest.get("service_manager") if manifest.get("service_manager") in MANAGERS else None
    supervise = manifest.get("supervise") if isinstance(manifest.get("supervise"), str) else SUPERVISE
    installed = env.path(supervise).is_file()
    source = "/proc/1/comm, /run/systemd/system" + (f", {MANIFEST}" if manifest else "")
    if recorded:
        manager, why = recorded, f"manifest service_manager ({MANIFEST})"
    elif not manifest and find_unit(env) is None and not installed:
        return {"service.manager": absent(f"no {MANIFEST}, no {UNIT} and no {SUPERVISE}: nothing deployed here", source)}
    elif pid1:
        manager, why = SYSTEMD, "systemd is PID 1"
    elif installed:
        manager, why = SUPERVISOR, f"systemd is not PID 1 and {supervise} is installed"
    else:
        manager, why = SYSTEMD, "the deploy's default (systemd is not PID 1 and gptoss-supervise is not installed)"
    out = {"manager": manager, "why": why, "pid1_systemd": pid1, "manifest_manager": recorded, "unit": UNIT,
           "supervise": supervise, "supervise_installed": installed, "log_file": None}
    if manager == SUPERVISOR:
        log = manifest.get("service_log") if isinstance(manifest.get("service_log"), str) else default_log_file(UNIT)
        pid_file = manifest.get("service_pid_file") if isinstance(manifest.get("service_pid_file"), str) else default_pid_file(UNIT)
        out.update(log_file=log, log_exists=env.path(log).is_file(), **supervised_state(env, pid_file))
    else:
        out.update(systemd_state(env, UNIT, pid1))
    return {"service.manager": value(out, source)}


COLLECTORS = [
    (shell_env, ("env.shell",)),
    (service_manager, ("service.manager",)),
    (service_facts, ("service", "service.serve", "service.cuda_home")),
    (manifest_fact, ("manifest",)),
    (site_stack_files, ("stacks.extra",)),
]
