"""Batched operations: many files, directories or a unit checked with ONE command per host.

pyinfra's built-in files.put / files.directory / systemd.service read two or three facts each;
on a no-change re-run those round trips are most of the time. These ops read one fact for
the whole batch and change only what differs. File contents are never printed; a secret (the
API key file) is written through stdin into a 0600 temp file; everything lands on a temp name
and is renamed into place.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from io import StringIO

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, operation


@dataclass(frozen=True)
class ManagedFile:
    path: str
    content: str
    user: str = "root"
    group: str = "root"
    mode: str = "0644"
    # Secrets go over the command's stdin into a file created 0600: never argv, never an
    # upload temp file (with sudo, pyinfra stages uploads in /tmp with the login's umask).
    secret: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()


@dataclass(frozen=True)
class ManagedDir:
    path: str
    user: str = "root"
    group: str = "root"
    mode: str = "0755"


class PathsState(FactBase):
    """For each path: `path|type|mode|user|group|sha256` (sha256 `-` for non-files), or `path|missing`."""

    def default(self):  # no output at all (a bare host)
        return self.process([])

    def command(self, paths: tuple, hashes: bool = True) -> str:
        q = " ".join(shlex.quote(p) for p in paths)
        sha = 'if [ -f "$p" ]; then s=$(sha256sum "$p" | cut -c1-64); else s=-; fi' if hashes else "s=-"
        script = (
            f'for p in {q}; do if [ -e "$p" ]; then {sha}; '
            'echo "$p|$(stat -c "%F|%a|%U|%G" "$p")|$s"; '
            'else echo "$p|missing"; fi; done'
        )
        return "sh -c " + shlex.quote(script)

    def process(self, output: list[str]) -> dict:
        out = {}
        for line in output:
            parts = line.rsplit("|", 5)
            if line.endswith("|missing"):
                out[line[: -len("|missing")]] = None
            elif len(parts) == 6:
                out[parts[0]] = {"type": parts[1], "mode": parts[2].zfill(4), "user": parts[3], "group": parts[4],
                                 "sha256": parts[5]}
        return out


def _mode(m: str) -> str:
    return m.zfill(4)


@operation()
def files_in_place(files: tuple):
    """Each ManagedFile has its content, owner and mode; one stat+sha256 command for all."""
    state = host.get_fact(PathsState, paths=tuple(f.path for f in files))
    stale = []
    for f in files:
        st = state.get(f.path)
        if not st or st["sha256"] != f.sha256 or (st["user"], st["group"], st["mode"]) != (f.user, f.group, _mode(f.mode)):
            stale.append(f)
    if not stale:
        host.noop(f"{len(files)} file(s) up to date")
        return
    for f in stale:
        st = state.get(f.path)
        if st and st["sha256"] == f.sha256:
            yield StringCommand("chown", f"{f.user}:{f.group}", f.path, "&&", "chmod", f.mode, f.path)
            continue
        tmp = f"{f.path}.gptoss-tmp"
        if f.secret:
            yield StringCommand("sh", "-c", shlex.quote(f"rm -f {shlex.quote(tmp)} && umask 077 && cat > {shlex.quote(tmp)}"),
                                _stdin=f.content)
        else:
            yield StringCommand(f"mkdir -p $(dirname {shlex.quote(f.path)}) && rm -f {shlex.quote(tmp)}")
            yield FileUploadCommand(StringIO(f.content), tmp)
        yield StringCommand(
            f"chown {f.user}:{f.group} {shlex.quote(tmp)} && chmod {f.mode} {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(f.path)}"
        )


@operation()
def dirs_in_place(dirs: tuple):
    """Each ManagedDir exists with its owner and mode; one stat command for all."""
    state = host.get_fact(PathsState, paths=tuple(d.path for d in dirs), hashes=False)
    todo = [d for d in dirs if not state.get(d.path) or state[d.path]["type"] != "directory"
            or (state[d.path]["user"], state[d.path]["group"], state[d.path]["mode"]) != (d.user, d.group, _mode(d.mode))]
    if not todo:
        host.noop(f"{len(dirs)} dir(s) in place")
        return
    for d in todo:
        p = shlex.quote(d.path)
        yield StringCommand(f"mkdir -p {p} && chown {d.user}:{d.group} {p} && chmod {d.mode} {p}")


class AccountState(FactBase):
    """The user's passwd and group entries; {} when neither exists."""

    def default(self):  # no output at all (a bare host)
        return self.process([])

    def command(self, user: str) -> str:
        u = shlex.quote(user)
        return f"sh -c 'getent group {u} | sed s/^/group:/; getent passwd {u} | sed s/^/passwd:/; true'"

    def process(self, output: list[str]) -> dict:
        out = {}
        for line in output:
            kind, _, rest = line.partition(":")
            out[kind] = rest.split(":")
        return out


@operation()
def system_account(user: str, home: str):
    """A system group and user with no login shell and no password."""
    st = host.get_fact(AccountState, user=user)
    pw = st.get("passwd")  # name, x, uid, gid, gecos, home, shell
    grp = st.get("group")  # name, x, gid, members
    if grp and pw and len(pw) >= 7 and pw[3] == grp[2] and pw[5] == home and pw[6] == "/usr/sbin/nologin":
        host.noop(f"user {user} present")
        return
    if not st.get("group"):
        yield StringCommand("groupadd", "--system", user)
    if not pw:
        yield StringCommand("useradd", "--system", "--gid", user, "--home-dir", home, "--no-create-home",
                            "--shell", "/usr/sbin/nologin", user)
    else:
        yield StringCommand("usermod", "--gid", user, "--home", home, "--shell", "/usr/sbin/nologin", user)


class UnitState(FactBase):
    """systemctl is-active / is-enabled of one unit."""

    def default(self):  # no output at all (a bare host)
        return self.process([])

    def command(self, unit: str) -> str:
        u = shlex.quote(unit)
        return f"sh -c 'echo active=$(systemctl is-active {u}); echo enabled=$(systemctl is-enabled {u} 2>/dev/null)'"

    def process(self, output: list[str]) -> dict:
        return dict(line.partition("=")[::2] for line in output)


@operation()
def unit_running(unit: str, reload_if, restart_if):
    """The unit enabled and active; daemon-reload and restart when its inputs changed.
    `reload_if` / `restart_if` are callables read at execute time (other ops' did_change)."""
    executing = host.state.is_executing
    reload_needed = executing and reload_if()
    restart_needed = executing and restart_if()
    st = host.get_fact(UnitState, unit=unit)
    if reload_needed:
        yield StringCommand("systemctl", "daemon-reload")
    if st.get("enabled") != "enabled":
        yield StringCommand("systemctl", "enable", unit)
    if st.get("active") != "active":
        yield StringCommand("systemctl", "restart" if st.get("active") == "failed" else "start", unit)
    elif restart_needed:
        yield StringCommand("systemctl", "restart", unit)
    if not (reload_needed or restart_needed) and st.get("enabled") == "enabled" and st.get("active") == "active":
        host.noop(f"{unit} enabled and active")
