"""Host facts: OS release, hostname, systemd as PID 1, /dev/shm size."""

from __future__ import annotations

import os
import shlex

from ..snapshot import absent, value
from .env import Env
from .service import pid1_is_systemd  # one rule for "systemd runs here"


def os_release(env: Env) -> dict:
    path = "/etc/os-release"
    if not env.exists(path):
        return {"host.os": absent("no /etc/os-release", path)}
    fields = {}
    for line in env.read_text(path).splitlines():
        key, eq, raw = line.partition("=")
        if eq and key.strip():
            words = shlex.split(raw, comments=False, posix=True) if raw.strip() else [""]
            fields[key.strip()] = words[0] if words else ""
    return {
        "host.os": value(
            {"id": fields.get("ID"), "version_id": fields.get("VERSION_ID"), "pretty_name": fields.get("PRETTY_NAME")},
            path,
        )
    }


def hostname(env: Env) -> dict:
    for path in ("/proc/sys/kernel/hostname", "/etc/hostname"):
        if env.exists(path):
            name = env.read_text(path).strip()
            if name:
                return {"host.hostname": value(name, path)}
    if env.root.as_posix() == "/":
        return {"host.hostname": value(os.uname().nodename, "uname")}
    return {"host.hostname": absent("no /proc/sys/kernel/hostname or /etc/hostname")}


def systemd(env: Env) -> dict:
    return {"host.systemd": value(pid1_is_systemd(env), "/run/systemd/system, /proc/1/comm")}


def shm(env: Env) -> dict:
    path = "/dev/shm"
    if not env.path(path).is_dir():
        return {"host.shm_bytes": absent("no /dev/shm", path)}
    st = os.statvfs(env.path(path))
    return {"host.shm_bytes": value(st.f_frsize * st.f_blocks, path)}


# (collector, the keys it writes): the runner turns an exception into a failed fact for each key.
COLLECTORS = [
    (os_release, ("host.os",)),
    (hostname, ("host.hostname",)),
    (systemd, ("host.systemd",)),
    (shm, ("host.shm_bytes",)),
]
