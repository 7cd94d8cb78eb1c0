#!/usr/bin/env python3
"""gptoss-supervise: run the gptoss-vllm service on a host without systemd (containers, GPU VMs).

Installed by the gptoss deploy as /opt/gptoss/bin/gptoss-supervise. It reads the SAME unit file
the deploy writes for systemd (/etc/systemd/system/gptoss-vllm.service), so the command line,
EnvironmentFile(s), Environment=, User=, Group=, WorkingDirectory=, UMask=, LimitNOFILE=,
Restart=on-failure, RestartSec= and TimeoutStopSec= are exactly what systemd would use.

    gptoss-supervise start|stop|restart|status|is-active [--unit PATH]

A monitor process (its own session, so it outlives the caller) starts the service, appends its
output to /var/log/gptoss/<name>.log, restarts it on failure after RestartSec, and on stop sends
SIGTERM to the service's process group, SIGKILL after TimeoutStopSec. The monitor's pid is in
/run/gptoss/<name>.pid, its state (active, auto-restart, failed, inactive) in <name>.state.
`is-active` prints the state and exits 0 only when active, as `systemctl is-active` does.
Standard library only: it runs on the host's python3 before any venv exists.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

UNIT = "/etc/systemd/system/gptoss-vllm.service"
RUN_DIR = "/run/gptoss"
LOG_DIR = "/var/log/gptoss"
# What systemd puts in every service's environment before Environment=/EnvironmentFile=.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UnitError(Exception):
    """A unit this program cannot run the way systemd would: the message says what and how to fix it."""


# -- the unit, read as systemd reads it (pure) ---------------------------------------------------


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value), continuation lines joined, comments dropped; repeated keys kept in order."""
    out, section, pending = [], "", ""
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
            out.append((section, key.strip(), val.strip()))
    return out


def exec_words(value: str) -> list[str]:
    """ExecStart= split as systemd does for the deploy's quoting: double quotes group, `\\` escapes,
    `$$` is `$` and `%%` is `%`. A bare `$VAR` is refused: the deploy never writes one."""
    try:
        words = shlex.split(value, posix=True)
    except ValueError as e:  # an unbalanced quote
        raise UnitError(f"ExecStart={value[:80]}...: {e}; fix: re-run the gptoss deploy") from None
    if words and words[0][:1] in "-@:+!":
        words[0] = words[0].lstrip("-@:+!")
    for w in words:
        if re.search(r"(?<!\$)\$(?!\$)", w):
            raise UnitError(f"ExecStart word {w!r} expands a variable; gptoss-supervise runs argv literally")
    return [w.replace("$$", "$").replace("%%", "%") for w in words]


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as EnvironmentFile= reads them: comments skipped, `export` allowed, one
    level of matching quotes removed."""
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, eq, val = line.partition("=")
        key, val = key.strip(), val.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1]
        out[key] = val
    return out


def seconds(value: str, default: float) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|min|m)?\s*", value or "")
    if not m:
        return default
    n = float(m.group(1))
    return n * 60 if m.group(2) in ("min", "m") else n


def service_spec(unit_text: str, unit_path: str) -> dict:
    """What to run, from the [Service] section: argv, env files (required / optional), inline
    env, user, group, working dir, umask, restart policy and timeouts."""
    spec = {"argv": None, "env_files": [], "environment": {}, "user": None, "group": None, "workdir": "/",
            "umask": 0o022, "restart": "no", "restart_sec": 0.1, "stop_timeout": 90.0, "nofile": None}
    for section, key, val in unit_entries(unit_text):
        if section != "Service":
            continue
        if key == "ExecStart":
            spec["argv"] = exec_words(val)
        elif key == "EnvironmentFile":
            optional = val.startswith("-")
            spec["env_files"].append((val.lstrip("-"), optional))
        elif key == "Environment":
            for word in shlex.split(val):
                k, eq, v = word.partition("=")
                if eq:
                    spec["environment"][k] = v
        elif key == "User":
            spec["user"] = val
        elif key == "Group":
            spec["group"] = val
        elif key == "WorkingDirectory":
            spec["workdir"] = val.lstrip("-")
        elif key == "UMask":
            spec["umask"] = int(val, 8)
        elif key == "Restart":
            spec["restart"] = val
        elif key == "RestartSec":
            spec["restart_sec"] = seconds(val, 0.1)
        elif key in ("TimeoutStopSec", "TimeoutSec"):
            spec["stop_timeout"] = seconds(val, 90.0)
        elif key == "LimitNOFILE":
            spec["nofile"] = val
    if not spec["argv"]:
        raise UnitError(f"{unit_path}: no ExecStart= in [Service]; fix: re-run the gptoss deploy")
    return spec


def should_restart(policy: str, exit_code: int) -> bool:
    """systemd's Restart=: `on-failure` restarts after a non-zero exit or a signal."""
    if policy in ("always",):
        return True
    if policy in ("on-failure", "on-abnormal"):
        return exit_code != 0
    return False


def name_of(unit_path: str) -> str:
    return os.path.basename(unit_path).rsplit(".", 1)[0]


def paths_for(unit_path: str, run_dir: str = RUN_DIR, log_dir: str = LOG_DIR) -> dict:
    n = name_of(unit_path)
    return {"pid": f"{run_dir}/{n}.pid", "state": f"{run_dir}/{n}.state", "log": f"{log_dir}/{n}.log"}


# -- the process environment, as systemd builds it ------------------------------------------------


def service_env(spec: dict, passwd) -> dict[str, str]:
    env = {"PATH": DEFAULT_PATH, "LANG": os.environ.get("LANG", "C.UTF-8")}
    if passwd is not None:
        env.update(HOME=passwd.pw_dir, USER=passwd.pw_name, LOGNAME=passwd.pw_name, SHELL=passwd.pw_shell)
    env.update(spec["environment"])
    for path, optional in spec["env_files"]:
        try:
            with open(path, encoding="utf-8") as f:
                env.update(parse_env_file(f.read()))
        except OSError as e:
            if not optional:
                raise UnitError(f"EnvironmentFile {path}: {e.strerror}; fix: re-run the gptoss deploy") from None
    return env


def _user_ids(spec: dict):
    import grp
    import pwd

    if not spec["user"]:
        return None, None, None
    try:
        pw = pwd.getpwnam(spec["user"])
    except KeyError:
        raise UnitError(f"User={spec['user']}: no such user; fix: re-run the gptoss deploy (it creates the user)") from None
    gid = pw.pw_gid
    if spec["group"]:
        try:
            gid = grp.getgrnam(spec["group"]).gr_gid
        except KeyError:
            raise UnitError(f"Group={spec['group']}: no such group; fix: re-run the gptoss deploy") from None
    return pw, pw.pw_uid, gid


def _demote(pw, uid, gid, umask, nofile):
    """In the child before exec: its own process group, the unit's limits, umask and user."""
    def run():
        os.setsid()
        if nofile:
            import resource

            n = resource.RLIM_INFINITY if nofile == "infinity" else int(nofile.split(":")[0])
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard) if hard != resource.RLIM_INFINITY else n, hard))
            except (ValueError, OSError):
                pass
        os.umask(umask)
        if uid is not None and os.getuid() == 0:
            os.setgroups(os.getgrouplist(pw.pw_name, gid))
            os.setgid(gid)
            os.setuid(uid)
    return run


# -- pid and state files ---------------------------------------------------------------------


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_state(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def current_state(paths: dict) -> dict:
    """The service's state now: the monitor's word if it runs, else what it left behind."""
    st = read_state(paths["state"])
    monitor = read_pid(paths["pid"])
    if monitor is None:
        if st.get("state") in ("active", "activating", "auto-restart", "deactivating"):
            st["state"] = "failed"  # the monitor died without saying so
            st.setdefault("why", "the supervisor process is gone")
        st.setdefault("state", "inactive")
    st["monitor"] = monitor
    return st


# -- the monitor ---------------------------------------------------------------------------------


def log_line(log, text: str) -> None:
    log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} gptoss-supervise: {text}\n".encode())
    log.flush()


def monitor(spec: dict, paths: dict, unit_path: str) -> int:
    """Runs in its own session until stopped: start, wait, restart on failure, stop on SIGTERM."""
    pw, uid, gid = _user_ids(spec)
    env = service_env(spec, pw)
    log = open(paths["log"], "ab", buffering=0)
    if uid is not None and os.getuid() == 0:
        os.chown(paths["log"], 0, gid)
    os.chmod(paths["log"], 0o640)
    stopping = {"now": False}
    child: dict = {"p": None}

    def on_term(signum, frame):
        stopping["now"] = True
        p = child["p"]
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    write_atomic(paths["pid"], f"{os.getpid()}\n")
    restarts = 0
    state = {"unit": unit_path, "log": paths["log"], "argv": spec["argv"], "user": spec["user"]}
    try:
        while not stopping["now"]:
            log_line(log, f"starting {name_of(unit_path)}: {shlex.join(spec['argv'])}")
            try:
                p = subprocess.Popen(spec["argv"], env=env, cwd=spec["workdir"], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, close_fds=True,
                                     preexec_fn=_demote(pw, uid, gid, spec["umask"], spec["nofile"]))
            except OSError as e:
                log_line(log, f"cannot start {spec['argv'][0]}: {e.strerror}")
                write_atomic(paths["state"], json.dumps({**state, "state": "failed", "exit": 203, "restarts": restarts,
                                                         "why": f"exec {spec['argv'][0]}: {e.strerror}"}))
                return 1
            child["p"] = p
            write_atomic(paths["state"], json.dumps({**state, "state": "active", "main_pid": p.pid,
                                                     "restarts": restarts, "since": time.time()}))
            code = wait_for(p, stopping, spec["stop_timeout"])
            # a signal shows as a negative code, as systemd's code=killed
            log_line(log, f"main process exited, status={code}")
            if stopping["now"]:
                break
            if not should_restart(spec["restart"], code):
                write_atomic(paths["state"], json.dumps({**state, "state": "failed" if code else "inactive",
                                                         "exit": code, "restarts": restarts}))
                return 0
            restarts += 1
            write_atomic(paths["state"], json.dumps({**state, "state": "auto-restart", "exit": code,
                                                     "restarts": restarts, "since": time.time()}))
            deadline = time.time() + spec["restart_sec"]
            while time.time() < deadline and not stopping["now"]:
                time.sleep(0.2)
        write_atomic(paths["state"], json.dumps({**state, "state": "inactive", "restarts": restarts}))
        log_line(log, "stopped")
        return 0
    finally:
        try:
            os.unlink(paths["pid"])
        except OSError:
            pass


def wait_for(p: subprocess.Popen, stopping: dict, stop_timeout: float) -> int:
    """The child's exit code; once a stop was asked, SIGKILL its group after the stop timeout."""
    killed_at = None
    while True:
        try:
            return p.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if stopping["now"]:
            killed_at = killed_at or time.time()
            if time.time() - killed_at > stop_timeout:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# -- commands --------------------------------------------------------------------------------


def start(unit_path: str, paths: dict) -> int:
    if read_pid(paths["pid"]):
        print(f"{name_of(unit_path)}: already running (supervisor pid {read_pid(paths['pid'])})")
        return 0
    with open(unit_path, encoding="utf-8") as f:
        spec = service_spec(f.read(), unit_path)
    _user_ids(spec)  # a missing user fails here, in the caller's terminal
    service_env(spec, None)  # and a missing env file
    for d in (os.path.dirname(paths["pid"]), os.path.dirname(paths["log"])):
        os.makedirs(d, mode=0o755, exist_ok=True)
    try:
        os.unlink(paths["state"])
    except OSError:
        pass
    pid = os.fork()
    if pid == 0:  # first child: a new session, then the monitor as its child (never a tty again)
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.chdir("/")
        try:
            code = monitor(spec, paths, unit_path)
        except Exception as e:  # noqa: BLE001 - the monitor must leave its reason in the state file
            write_atomic(paths["state"], json.dumps({"state": "failed", "why": f"{type(e).__name__}: {e}"}))
            code = 1
        os._exit(code)
    os.waitpid(pid, 0)
    deadline = time.time() + 10
    while time.time() < deadline:
        st = current_state(paths)
        if st.get("state") in ("active", "failed", "auto-restart") and (st.get("monitor") or st["state"] == "failed"):
            break
        time.sleep(0.05)
    st = current_state(paths)
    print(f"{name_of(unit_path)}: {st.get('state')} (supervisor pid {st.get('monitor')}, main pid {st.get('main_pid')}, log {paths['log']})")
    return 0 if st.get("state") in ("active", "auto-restart") else 1


def stop(unit_path: str, paths: dict) -> int:
    pid = read_pid(paths["pid"])
    if pid is None:
        print(f"{name_of(unit_path)}: not running")
        return 0
    with open(unit_path, encoding="utf-8") as f:
        timeout = service_spec(f.read(), unit_path)["stop_timeout"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout + 5
    while time.time() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        main = read_state(paths["state"]).get("main_pid")
        for target in (main, pid):
            if target:
                try:
                    os.killpg(target, signal.SIGKILL) if target == main else os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    print(f"{name_of(unit_path)}: stopped")
    return 0


def status(unit_path: str, paths: dict, quiet: bool) -> int:
    st = current_state(paths)
    if quiet:
        print(st["state"])
    else:
        extra = ", ".join(f"{k} {st[k]}" for k in ("main_pid", "restarts", "exit", "why") if st.get(k) not in (None, ""))
        print(f"{name_of(unit_path)}: {st['state']}" + (f" ({extra})" if extra else "") + f"; log {paths['log']}")
    return 0 if st["state"] == "active" else 3


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    unit_path = UNIT
    if "--unit" in args:
        i = args.index("--unit")
        if i + 1 >= len(args):
            print("gptoss-supervise: --unit needs a path", file=sys.stderr)
            return 2
        unit_path = args[i + 1]
        del args[i:i + 2]
    run_dir = os.environ.get("GPTOSS_SUPERVISE_RUN_DIR", RUN_DIR)
    log_dir = os.environ.get("GPTOSS_SUPERVISE_LOG_DIR", LOG_DIR)
    verbs = ("start", "stop", "restart", "status", "is-active")
    if len(args) != 1 or args[0] not in verbs:
        print(f"usage: gptoss-supervise {{{'|'.join(verbs)}}} [--unit PATH]", file=sys.stderr)
        return 2
    paths = paths_for(unit_path, run_dir, log_dir)
    try:
        if args[0] == "start":
            return start(unit_path, paths)
        if args[0] == "stop":
            return stop(unit_path, paths)
        if args[0] == "restart":
            stop(unit_path, paths)
            return start(unit_path, paths)
        return status(unit_path, paths, quiet=args[0] == "is-active")
    except UnitError as e:
        print(f"gptoss-supervise: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"gptoss-supervise: {e.filename or unit_path}: {e.strerror}; fix: re-run the gptoss deploy", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
