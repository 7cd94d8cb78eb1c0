"""Live state that stops a start although every file is right: who holds the service's port,
which of the box's processes are the service's, what the service's user may read and write,
and the free disk the model still needs.

Read from /proc (net/tcp, net/tcp6, <pid>/fd, <pid>/cmdline, <pid>/cgroup, <pid>/stat) and
/etc/passwd + /etc/group, never from `ss`, `id` or NSS: the same on every distribution and
under a fake root in tests. Access is judged as the kernel does for the service's user (owner,
group, other bits; root passes), walking every directory down to the path; ACLs and read-only
mounts are not seen (the check's explain says so).
"""

from __future__ import annotations

import os
import stat
from pathlib import PurePosixPath

from .. import serveargs
from ..snapshot import absent, failed, value
from .env import Env
from .service import UNIT, read_unit

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
TCP_LISTEN = "0A"  # st column of a listening socket (include/net/tcp_states.h)
SUPERVISE_NAME = "gptoss-supervise"  # the monitor that runs the unit where systemd does not
HF_MARKER = ".gptoss-downloaded-"  # the deploy's "pre-download complete" marker (docs/design.md)


# -- processes ------------------------------------------------------------------------------------


def _read(env: Env, path: str, binary: bool = False) -> str | bytes | None:
    try:
        with open(env.path(path), "rb" if binary else "r", **({} if binary else {"errors": "replace"})) as f:
            return f.read(1 << 16)
    except OSError:
        return None


def cmdline(env: Env, pid: int) -> list[str]:
    raw = _read(env, f"/proc/{pid}/cmdline", binary=True) or b""
    return [w.decode(errors="replace") for w in raw.split(b"\0") if w]


def parent_pid(env: Env, pid: int) -> int | None:
    stat_text = _read(env, f"/proc/{pid}/stat") or ""
    fields = stat_text.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def process_user(env: Env, pid: int) -> int | None:
    for line in (_read(env, f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("Uid:"):
            parts = line.split()
            return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return None


class ServiceProcesses:
    """Tells the service's processes from others: a process is the service's when it or an
    ancestor is in the unit's cgroup (systemd runs it) or is gptoss-supervise's monitor (which
    starts the unit's ExecStart= as its child). Running the same program is not enough: a
    `vllm serve` started by hand from the service's venv is exactly what takes its port."""

    def __init__(self, env: Env):
        self.env = env
        self._seen: dict[int, str | None] = {}

    def _own(self, pid: int) -> str | None:
        cgroup = _read(self.env, f"/proc/{pid}/cgroup") or ""
        if f"/{UNIT}" in cgroup:
            return f"is in the cgroup of {UNIT}"
        for word in cmdline(self.env, pid)[:2]:
            if word.endswith("/" + SUPERVISE_NAME) or word == SUPERVISE_NAME:
                return f"is {SUPERVISE_NAME} (pid {pid})"
        return None

    def why(self, pid: int) -> str | None:
        """Why `pid` is the service's (it, or the nearest ancestor that is), or None."""
        if pid not in self._seen:
            p, hops, found = pid, 0, None
            while p and p > 1 and hops < 64:
                own = self._seen[p] if p in self._seen else self._own(p)
                if own:
                    found = own if p == pid else f"a descendant of pid {p}, which {own}"
                    break
                p, hops = parent_pid(self.env, p), hops + 1
            self._seen[pid] = found
        return self._seen[pid]


def describe(env: Env, pid: int, service: ServiceProcesses) -> dict:
    words = cmdline(env, pid)
    why = service.why(pid)
    return {"pid": pid, "uid": process_user(env, pid), "command": " ".join(words)[:300] or None,
            "is_service": why is not None, "why": why}


# -- the port -------------------------------------------------------------------------------------


def listening_inodes(text: str, port: int) -> list[tuple[str, int, int]]:
    """(local address hex, socket inode, owner uid) of the LISTEN rows of a /proc/net/tcp{,6}
    table on `port`."""
    out = []
    needle = f":{port:04X} "
    for line in text.splitlines()[1:]:
        if needle not in line:  # most rows are other ports: skip them before splitting
            continue
        cols = line.split()
        if len(cols) < 10 or cols[3] != TCP_LISTEN:
            continue
        address, _, port_hex = cols[1].rpartition(":")
        try:
            if int(port_hex, 16) == port:
                out.append((address, int(cols[9]), int(cols[7])))
        except ValueError:
            continue
    return out


CGROUP_PROCS = ("/sys/fs/cgroup/system.slice/{unit}/cgroup.procs",  # cgroup v2 (unified)
                "/sys/fs/cgroup/systemd/system.slice/{unit}/cgroup.procs")  # v1's named hierarchy


def likely_service_pids(env: Env) -> list[int]:
    """The service's processes where they are cheap to find: its systemd cgroup's member list,
    else gptoss-supervise's pid file and that monitor's children (/proc/<pid>/task/<pid>/children).
    Searched first, so that the usual case (the service holds its port) reads a handful of fd
    tables instead of every process's."""
    from ..service_manager import default_pid_file  # noqa: PLC0415

    pids: list[int] = []
    for pattern in CGROUP_PROCS:
        pids += [int(w) for w in (_read(env, pattern.format(unit=UNIT)) or "").split() if w.isdigit()]
    monitor = (_read(env, default_pid_file(UNIT)) or "").strip()
    todo = [int(monitor)] if monitor.isdigit() else []
    while todo and len(pids) < 256:
        pid = todo.pop()
        pids.append(pid)
        todo += [int(w) for w in (_read(env, f"/proc/{pid}/task/{pid}/children") or "").split() if w.isdigit()]
    return list(dict.fromkeys(pids))


def listen_rows(env: Env, table: str) -> str | None:
    """The header and the LISTEN rows of a /proc/net/tcp{,6} table. The kernel lists the
    listening sockets first (its listening hash, then the established one), so reading stops at
    the first other row: a busy server's thousands of connections are never generated."""
    try:
        with open(env.path(table), errors="replace") as f:
            rows = [next(f, "")]
            for line in f:
                cols = line.split(None, 4)
                if len(cols) > 3 and cols[3] != TCP_LISTEN:
                    break
                rows.append(line)
    except OSError:
        return None
    return "".join(rows)


def listen_table(env: Env, table: str) -> str | None:
    """listen_rows, read once per collection: the port's collector and the exposure's both need it."""
    return env.once(f"listen_rows {table}", lambda: listen_rows(env, table))


def socket_owners(env: Env, inodes: set[int], uids: set[int] | None = None,
                  only: list[int] | None = None) -> tuple[dict[int, int], int]:
    """{inode: pid} from /proc/*/fd links `socket:[inode]`; and how many processes' fds could not
    be read. With `uids` (the sockets' owners, from /proc/net/tcp) only those users' processes
    are searched: one stat per process instead of a readlink per open file of every process."""
    owners: dict[int, int] = {}
    hidden = 0
    proc = env.path("/proc")
    wanted = {f"socket:[{i}]": i for i in inodes}
    for d in (proc / str(p) for p in only) if only is not None else proc.iterdir():
        if not d.name.isdigit():
            continue
        if uids is not None:
            try:
                if os.stat(d).st_uid not in uids:
                    continue
            except OSError:
                continue
        try:
            fds = os.listdir(d / "fd")
        except OSError:
            hidden += 1
            continue
        for fd in fds:
            try:
                target = os.readlink(d / "fd" / fd)
            except OSError:
                continue
            if target in wanted:
                owners.setdefault(wanted[target], int(d.name))
        if len(owners) == len(wanted):
            break
    return owners, hidden


def service_port(env: Env) -> dict:
    """Who listens on the service's port now: each listener with its pid and command, and
    whether it is the service's own process."""
    unit = read_unit(env)
    if unit is None or not unit.get("argv"):
        return {"service.port": absent(f"no {UNIT} with an ExecStart=: no service port to look at")}
    try:
        serve = serveargs.parse(unit["argv"], unit["environment"])
    except serveargs.ServeArgsError as e:
        return {"service.port": failed(f"the service's serve flags do not parse: {e}", unit["unit_path"])}
    port = serve.get("port")
    if not isinstance(port, int):
        return {"service.port": failed(f"the service's port {port!r} is not a number", unit["unit_path"])}
    found: list[tuple[str, int, int]] = []
    read = []
    for table in TCP_TABLES:
        text = listen_table(env, table)
        if text is not None:
            read.append(table)
            found += listening_inodes(text, port)
    if not read:
        return {"service.port": failed("no /proc/net/tcp or /proc/net/tcp6 to read", "/proc/net/tcp")}
    owners, hidden = {}, 0
    if found:
        inodes = {inode for _, inode, _ in found}
        owners, hidden = socket_owners(env, inodes, only=likely_service_pids(env))
        if len(owners) < len(inodes):  # not the service's: the processes of the sockets' owners
            more, hidden = socket_owners(env, inodes - set(owners), {uid for _, _, uid in found})
            owners.update(more)
        if len(owners) < len(inodes):  # a process that changed its uid after binding: search them all
            more, hidden = socket_owners(env, inodes - set(owners))
            owners.update(more)
    service = ServiceProcesses(env)
    listeners, seen_pids = [], set()
    for _address, inode, _uid in found:
        pid = owners.get(inode)
        if pid is None:
            listeners.append({"pid": None, "uid": None, "command": None, "is_service": None,
                              "why": f"socket inode {inode}: its process is not visible to this user"
                              + (" (run as root)" if hidden else "")})
        elif pid not in seen_pids:
            seen_pids.add(pid)
            listeners.append(describe(env, pid, service))
    return {"service.port": value({"port": port, "host": serve.get("host"), "listeners": listeners},
                                  ", ".join(read) + ", /proc/*/fd")}


# -- users, access and disk -----------------------------------------------------------------------


def passwd_entry(env: Env, user: str) -> tuple[int, int, str] | None:
    """(uid, primary gid, home) of `user` from /etc/passwd (a numeric user is its own uid)."""
    for line in env.once("/etc/passwd", lambda: _read(env, "/etc/passwd") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 6 and (parts[0] == user) and parts[2].isdigit() and parts[3].isdigit():
            return int(parts[2]), int(parts[3]), parts[5]
    if user.isdigit():
        return int(user), int(user), "/"
    return None


def home_of(env: Env, user: str | None) -> str:
    """The home directory of `user` (default root) from /etc/passwd; the usual one if not listed."""
    user = user or "root"
    entry = passwd_entry(env, user) if not user.isdigit() else None
    return entry[2] if entry else ("/root" if user == "root" else f"/home/{user}")


def gid_of(env: Env, group: str) -> int | None:
    if group.isdigit():
        return int(group)
    for line in env.once("/etc/group", lambda: _read(env, "/etc/group") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] == group and parts[2].isdigit():
            return int(parts[2])
    return None


def group_ids(env: Env, user: str, primary: int, extra: list[str] = ()) -> list[int]:
    """The user's groups as the kernel will see them for the service: its primary group, the
    groups that list it in /etc/group, and the unit's Group= / SupplementaryGroups= (names or gids)."""
    gids = {primary} | {int(g) for g in extra if g.isdigit()}
    for line in env.once("/etc/group", lambda: _read(env, "/etc/group") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[2].isdigit() and (user in parts[3].split(",") or parts[0] in extra):
            gids.add(int(parts[2]))
    return sorted(gids)


def may(st: os.stat_result, uid: int, gids: list[int], want: str) -> bool:
    """What the kernel's permission check says for uid/gids on this inode (no ACLs)."""
    if uid == 0:  # root reads and writes anything; executes when any x bit is set
        return "x" not in want or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    shift = 6 if st.st_uid == uid else 3 if st.st_gid in gids else 0
    bits = (st.st_mode >> shift) & 0o7
    need = (4 if "r" in want else 0) | (2 if "w" in want else 0) | (1 if "x" in want else 0)
    return bits & need == need


def access_as(env: Env, box_path: str, uid: int, gids: list[int], want: str) -> str | None:
    """None when uid/gids may `want` ("r", "rw") `box_path`, else why not: the first directory it
    cannot pass, or the path's own mode. A path that does not exist yet needs its nearest
    existing parent writable (to be created)."""
    path = PurePosixPath(box_path)
    parts = [*reversed(path.parents), path]
    for i, p in enumerate(parts):
        try:
            st = os.stat(env.path(str(p)))
        except FileNotFoundError:
            parent = parts[i - 1] if i else PurePosixPath("/")
            if "w" in want:
                pst = os.stat(env.path(str(parent)))
                if not may(pst, uid, gids, "wx"):
                    return f"{p} does not exist and {parent} ({_mode(pst)}) is not writable, so it cannot be created"
                return None
            return f"{p} does not exist"
        except OSError as e:
            return f"{p}: {e.strerror or e}"
        last = p == path
        if not last:
            if not may(st, uid, gids, "x"):
                return f"cannot enter {p} ({_mode(st)})"
            continue
        need = want + ("x" if stat.S_ISDIR(st.st_mode) else "")
        if not may(st, uid, gids, need):
            return f"{p} is {_mode(st)}: no {'/'.join(sorted(set(need)))} for this user"
    return None


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o} uid {st.st_uid} gid {st.st_gid}"


def _unreadable_inside(env: Env, box_dir: str, uid: int, gids: list[int], limit: int = 2000) -> str | None:
    """The first file or directory under box_dir the user cannot read (a snapshot folder one
    file of which was copied as root with 0600): bounded, so a big tree costs little."""
    root = env.path(box_dir)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            seen += 1
            if seen > limit:
                return None
            host = os.path.join(dirpath, name)
            try:
                st = os.stat(host)
            except OSError:
                continue  # a dangling link: HF's blobs are checked by the download
            want = "rx" if stat.S_ISDIR(st.st_mode) else "r"
            if not may(st, uid, gids, want):
                box = "/" + os.path.relpath(host, env.root) if str(env.root) != "/" else host
                return f"{box} is {_mode(st)}"
    return None


def hf_cache_dirs(env: Env, unit: dict | None) -> tuple[str, str]:
    """(HF_HOME, hub cache) the service uses: its environment, else its user's home's default."""
    service_env = (unit or {}).get("environment", {})
    hf_home = service_env.get("HF_HOME")
    if not hf_home:
        hf_home = f"{home_of(env, (unit or {}).get('user')).rstrip('/')}/.cache/huggingface"
    return hf_home, service_env.get("HF_HUB_CACHE") or f"{hf_home}/hub"


def _du(host_dir) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(host_dir):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
    return total


def _free_bytes(env: Env, box_path: str) -> tuple[str, int]:
    p = PurePosixPath(box_path)
    while not env.path(str(p)).exists() and str(p) != "/":
        p = p.parent
    st = os.statvfs(env.path(str(p)))
    return str(p), st.f_bavail * st.f_frsize


def service_access(env: Env) -> dict:
    """The model and the HF cache as the service's user sees them, and the free disk for the model."""
    unit = read_unit(env)
    if unit is None or not unit.get("argv"):
        why = absent(f"no {UNIT} with an ExecStart=: no service user to check as")
        return {"service.access": why, "model.disk": why}
    try:
        serve = serveargs.parse(unit["argv"], unit["environment"])
    except serveargs.ServeArgsError as e:
        bad = failed(f"the service's serve flags do not parse: {e}", unit["unit_path"])
        return {"service.access": bad, "model.disk": bad}
    model = str(serve.get("model") or "")
    user = unit.get("user") or "root"
    entry = passwd_entry(env, user)
    hf_home, hub = hf_cache_dirs(env, unit)
    local_model = model.startswith("/")
    facts: dict[str, dict] = {}
    if entry is None:
        facts["service.access"] = failed(f"the service's user {user!r} is not in /etc/passwd", "/etc/passwd")
    else:
        uid, gid, _ = entry
        unit_groups = [g for g in [unit.get("group"), *(unit.get("supplementary_groups") or [])] if g]
        if unit.get("group"):  # Group= replaces the primary group
            gid = gid_of(env, unit["group"]) if gid_of(env, unit["group"]) is not None else gid
        gids = group_ids(env, user, gid, unit_groups)
        paths = []
        if local_model:
            problem = access_as(env, model, uid, gids, "r")
            if problem is None and env.path(model).is_dir():
                problem = _unreadable_inside(env, model, uid, gids)
            paths.append({"path": model, "what": "model", "need": "r", "problem": problem})
        else:
            model_dir = f"{hub}/models--{model.replace('/', '--')}"
            paths.append({"path": hub, "what": "HF hub cache", "need": "rw", "problem": access_as(env, hub, uid, gids, "rw")})
            if env.path(model_dir).exists():
                problem = access_as(env, model_dir, uid, gids, "r") or _unreadable_inside(env, model_dir, uid, gids)
                paths.append({"path": model_dir, "what": "model in the HF cache", "need": "r", "problem": problem})
        facts["service.access"] = value({"user": user, "uid": uid, "gids": gids, "paths": paths},
                                        f"{unit['unit_path']} User=, /etc/passwd, /etc/group, modes of each directory")
    target = model if local_model else f"{hub}/models--{model.replace('/', '--')}"
    where, free = _free_bytes(env, target if local_model else hub)
    present = _du(env.path(target)) if env.path(target).is_dir() else 0
    org_model = model.replace("/", "--")
    complete = local_model or env.path(f"{hf_home}/{HF_MARKER}{org_model}").exists()
    facts["model.disk"] = value({"model": model, "local": local_model, "path": target, "filesystem_of": where,
                                 "free_bytes": free, "present_bytes": present, "complete": complete},
                                f"statvfs({where}), {target}")
    return facts


COLLECTORS = [
    (service_port, ("service.port",)),
    (service_access, ("service.access", "model.disk")),
]
