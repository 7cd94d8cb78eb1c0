"""Booted Debian hosts under systemd-nspawn, each with sshd on its own loopback address.

A host is a root file system under HOSTS_DIR/<name>, unpacked from the base image, booted by
`setsid systemd-nspawn --register=no --keep-unit -D ROOT --boot` (this machine's PID 1 is not
systemd, so nspawn must neither register with machined nor make its own scope). The hosts share
the machine's network: sshd listens only on the host's own address (127.0.0.11, .12, ...).
Processes are tracked by their pid files, never found by name.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import image, paths
from .errors import TestbedError, run


@dataclass(frozen=True)
class Host:
    name: str
    address: str

    @property
    def root(self) -> Path:
        return paths.host_root(self.name)

    @property
    def pid_file(self) -> Path:
        return paths.pid_file(f"nspawn-{self.name}")

    @property
    def log_file(self) -> Path:
        return paths.log_file(f"nspawn-{self.name}")


def plan_hosts(count: int, first_address: str) -> list[Host]:
    """gptoss-1.. on consecutive loopback addresses from first_address."""
    try:
        a, b, c, d = ipaddress.IPv4Address(first_address).packed
    except ValueError:
        raise TestbedError(f"--first-address {first_address!r} is not an IPv4 address; pick e.g. 127.0.0.11") from None
    if a != 127 or d + count - 1 > 254 or d == 0:
        raise TestbedError(f"--first-address {first_address} with --hosts {count}: addresses must stay inside 127.0.0.0/8 "
                           f"(last octet <= 254); pick e.g. 127.0.0.11")
    return [Host(f"gptoss-{i + 1}", f"{a}.{b}.{c}.{d + i}") for i in range(count)]


# --- ssh -----------------------------------------------------------------------------------

def ensure_ssh_key() -> Path:
    """The testbed's root login key (0600), generated once per state dir."""
    key = paths.SSH_KEY
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(key.parent, 0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gptoss-testbed", "-f", str(key)], "ssh-keygen")
    os.chmod(key, 0o600)
    return key


def ssh_command(host: Host, *remote: str, connect_timeout: int = 3) -> list[str]:
    return ["ssh", "-i", str(paths.SSH_KEY), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}",
            f"root@{host.address}", *remote]


def system_state(host: Host) -> str | None:
    """`systemctl is-system-running` on the host over ssh, or None when ssh does not answer yet."""
    try:
        proc = subprocess.run(ssh_command(host, "systemctl", "is-system-running"), capture_output=True, text=True,
                              timeout=10)
    except subprocess.TimeoutExpired:
        return None
    out = proc.stdout.strip()
    return out or None


# --- the root file system ------------------------------------------------------------------

def address_in_use(address: str, port: int = 22) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((address, port)) == 0


def prepare_root(host: Host, base: Path, public_key: str) -> None:
    """Unpack the base image and make it this host: name, machine id, ssh keys and address, DNS."""
    if host.root.exists():
        shutil.rmtree(host.root)
    image.unpack(base, host.root)
    r = host.root
    (r / "etc/hostname").write_text(host.name + "\n")
    (r / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n")
    (r / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    run(["ssh-keygen", "-A", "-f", str(r)], f"ssh host keys for {host.name}")
    (r / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (r / "etc/ssh/sshd_config.d/gptoss-testbed.conf").write_text(
        "# gptoss-testbed: this host answers ssh on its own loopback address only\n"
        f"ListenAddress {host.address}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n")
    ssh_dir = r / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key.strip() + "\n")
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    resolv = r / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)


# --- processes -----------------------------------------------------------------------------

def pid_file_address(pid_file: Path) -> str:
    try:
        parts = pid_file.read_text().split()
    except OSError:
        return ""
    return parts[1] if len(parts) > 1 else ""


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError):
        return None


def pid_alive(pid: int | None, expect: str) -> bool:
    """True if pid runs and its command line contains `expect` (a recycled pid is not ours)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return expect in cmdline


def host_running(host: Host) -> bool:
    return pid_alive(read_pid(host.pid_file), str(host.root))


CGROUP_GROUP = "gptoss-testbed"


def cgroup_dirs(host: Host) -> list[Path]:
    """This host's own cgroup in each systemd-managed hierarchy we are in (v1 name=systemd, v2 unified).

    With --keep-unit nspawn builds its supervisor/payload cgroups under the caller's cgroup; hosts
    started from one shell would share them and their systemds would fight over one tree
    (units failing with 219/CGROUP). A cgroup per host keeps them apart.
    """
    out: list[Path] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        num, controllers, path = line.split(":", 2)
        if controllers == "name=systemd":
            mount = Path("/sys/fs/cgroup/systemd")
        elif num == "0" and controllers == "":
            unified = Path("/sys/fs/cgroup/unified")
            mount = unified if unified.is_dir() else Path("/sys/fs/cgroup")
        else:
            continue
        if (mount / "cgroup.procs").exists():
            # Our own cgroup may be nspawn's supervisor of an earlier run: start from its parent.
            base = path.rstrip("/").split(f"/{CGROUP_GROUP}/")[0]
            # Named by address too: two testbeds (state dirs) may both have a gptoss-1.
            out.append(mount / base.lstrip("/") / CGROUP_GROUP / f"{host.name}@{host.address}")
    return out


def _enter_cgroups(dirs: list[Path]):
    def enter() -> None:  # runs in the child, before exec
        for d in dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))
    return enter


def remove_cgroups(host: Host) -> None:
    for d in cgroup_dirs(host):
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) if d.is_dir() else []:
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            d.rmdir()
        except OSError:
            pass


def boot(host: Host) -> int:
    """Start the host's systemd-nspawn in its own session and cgroup; its pid goes to the pid file."""
    paths.RUN_DIR.mkdir(parents=True, exist_ok=True)
    dirs = cgroup_dirs(host)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    cmd = ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", f"--machine={host.name}",
           "--link-journal=no", "--resolv-conf=off", "--console=read-only", "-D", str(host.root), "--boot"]
    with host.log_file.open("ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_enter_cgroups(dirs))
    host.pid_file.write_text(f"{proc.pid} {host.address}\n")  # the address names its cgroup
    return proc.pid


def wait_ready(hosts: list[Host], timeout: float = 180.0) -> dict[str, str]:
    """Wait until each host's ssh answers and systemd says running/degraded; {name: state}."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    pending = list(hosts)
    while pending:
        for h in list(pending):
            if not host_running(h):
                tail = h.log_file.read_text(errors="replace").strip().splitlines()[-1:] if h.log_file.exists() else []
                raise TestbedError(f"{h.name}: systemd-nspawn exited during boot: {tail[0] if tail else 'no output'} "
                                   f"(log: {h.log_file}); `gptoss-testbed down` cleans up")
        with ThreadPoolExecutor(max_workers=len(pending)) as pool:
            results = dict(zip([h.name for h in pending], pool.map(system_state, pending)))
        for h in list(pending):
            state = results[h.name]
            if state in ("running", "degraded"):
                states[h.name] = state
                pending.remove(h)
        if pending:
            if time.monotonic() > deadline:
                detail = ", ".join(f"{h.name}={results[h.name] or 'no ssh'}" for h in pending)
                raise TestbedError(f"hosts not ready after {timeout:.0f} s: {detail} (logs in {paths.RUN_DIR}); "
                                   f"`gptoss-testbed down` cleans up")
            time.sleep(0.5)
    return states


def stop_process(pid_file: Path, expect: str, timeout: float = 15.0) -> bool:
    """Stop the process in pid_file (if it is still ours): SIGTERM, wait, then SIGKILL. True if it ran."""
    pid = read_pid(pid_file)
    if not pid_alive(pid, expect):
        pid_file.unlink(missing_ok=True)
        return False
    children = _children(pid)
    os.kill(pid, signal.SIGTERM)  # nspawn turns this into an orderly shutdown of the container
    deadline = time.monotonic() + timeout
    while pid_alive(pid, expect) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid, expect):
        # The container's init is nspawn's child: killing it ends everything in the container.
        for child in children:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.kill(pid, signal.SIGKILL)
        while pid_alive(pid, expect):
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    return True


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def stop_host(host: Host) -> bool:
    # A short grace: the host's state is discarded anyway, so an orderly shutdown is a courtesy.
    return stop_process(host.pid_file, str(host.root), timeout=5.0)


def discard(host: Host) -> None:
    remove_cgroups(host)
    if host.root.exists():
        shutil.rmtree(host.root)
    host.log_file.unlink(missing_ok=True)
