"""Carried JIT caches: a new host starts about as fast as one that has served before.

vLLM's first start on a host compiles kernels: Triton's (the MoE and attention kernels),
FlashInfer's (the sampler), CUDA's PTX JIT and, without --enforce-eager, torch.compile's. On the
lent H200 that was 100.9 s of a 170 s cold start, and 3.5 s once the caches existed
(tests/fixtures/gpu/RECORDING.md). The caches are keyed by kernel source, library versions and
GPU architecture, so a host with the same GPU model and stack can take another's.

`gptoss_jit_cache`: a tar archive on the controller (.tar, .tar.gz, .tgz, .tar.xz) of the
service user's cache directories, made on a warmed host of the same GPU model and stack:

    cd /var/lib/gptoss && tar -czf /tmp/gptoss-jit-cache.tgz $(ls -d .triton .cache cache .nv 2>/dev/null)

It is checked on the controller before any host changes (a readable tar of plain files and
directories under those four, nothing absolute, no `..`, no links or devices). The deploy uploads
it (/opt/gptoss/jit-cache.tar, 0640 root:gptoss) and unpacks it as the service user into its home
once per archive (a marker holds the archive's sha256). It never restarts the service: the caches
only matter at the next start.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tarfile
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.operations import files

from gptoss_doctor.layout import ROOT, SERVICE_USER, STATE_DIR

from .fields import bad

KEY = "gptoss_jit_cache"
# The service's HOME is STATE_DIR and XDG_CACHE_HOME is STATE_DIR/cache (config.deploy_env):
# Triton writes ~/.triton, FlashInfer and others ~/.cache or $XDG_CACHE_HOME, CUDA ~/.nv.
CACHE_DIRS = (".triton", ".cache", "cache", ".nv")
ARCHIVE = f"{ROOT}/jit-cache.tar"  # root-owned: root never writes into the service user's home
MARKER = f"{STATE_DIR}/.jit-cache.sha256"
MAKE_HINT = "make it on a warmed host: cd /var/lib/gptoss && tar -czf /tmp/gptoss-jit-cache.tgz $(ls -d .triton .cache cache .nv 2>/dev/null)"


@dataclass(frozen=True)
class JitCache:
    path: str  # on the controller
    sha256: str
    files: int
    unpacked_bytes: int


_read_once: dict[tuple, JitCache | str] = {}  # (path, size, mtime): every host names the same archive


def check(host_name: str, value) -> JitCache | None:
    """The archive named by `gptoss_jit_cache`, read and checked on the controller; None when unset."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad(host_name, KEY, value, "is not a path", "set it to the archive's path on the controller, or drop it")
    path = os.path.abspath(os.path.expanduser(value))
    try:
        st = os.stat(path)
    except OSError as e:
        raise bad(host_name, KEY, value, f"cannot be read on the controller ({e.strerror})", MAKE_HINT) from None
    seen = (path, st.st_size, st.st_mtime_ns)
    if seen not in _read_once:
        _read_once[seen] = read_archive(path)
    got = _read_once[seen]
    if isinstance(got, str):
        raise bad(host_name, KEY, value, got, MAKE_HINT)
    return got


def read_archive(path: str) -> JitCache | str:
    """The archive's digest and size if every member is safe to unpack in the service's home,
    else why not (one phrase)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
    except (OSError, EOFError, tarfile.TarError) as e:
        return f"is not a readable tar archive ({e})"
    count = size = 0
    for m in members:
        name = m.name[2:] if m.name.startswith("./") else m.name
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts:
            continue  # the archive's own top directory
        if m.name.startswith("/") or ".." in parts:
            return f"has member {m.name!r}, which points outside the service's home"
        if parts[0] not in CACHE_DIRS:
            return f"has member {m.name!r}, outside the cache directories {', '.join(CACHE_DIRS)}"
        if not (m.isfile() or m.isdir()):
            return f"has member {m.name!r}, a link or device (only files and directories are unpacked)"
        if m.isfile():
            count += 1
            size += m.size
    if not count:
        return "holds no cache files"
    return JitCache(path=path, sha256=digest.hexdigest(), files=count, unpacked_bytes=size)


class JitCacheMarker(FactBase):
    """The sha256 of the archive last unpacked on this host ('' if none)."""

    def command(self) -> str:
        return f"cat {MARKER} 2>/dev/null || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


def unpack_command(sha256: str) -> str:
    # As the service user: the caches end up its own, and a link it planted in its home cannot
    # turn the unpack (or the marker) into a root write elsewhere.
    inner = f"tar -xf {ARCHIVE} -C {STATE_DIR} && printf '%s\\n' {sha256} > {MARKER}"
    return f"runuser -u {SERVICE_USER} -- sh -c {shlex.quote(inner)}"


@operation()
def unpacked(cache: JitCache):
    """Once per archive: unpack it into the service user's home, then record its sha256."""
    if host.get_fact(JitCacheMarker) == cache.sha256:
        host.noop(f"JIT caches {cache.sha256[:12]} already unpacked")
        return
    yield StringCommand(unpack_command(cache.sha256))


@deploy("gptoss JIT caches")
def apply(cfg):  # a config.HostConfig (config imports this module's check)
    cache = cfg.jit_cache
    if cache is None:
        return
    files.put(name=f"JIT cache archive ({cache.files} files, {cache.unpacked_bytes / 2**20:.0f} MiB unpacked)",
              src=cache.path, dest=ARCHIVE, user="root", group=SERVICE_USER, mode="0640")
    unpacked(name="JIT caches unpacked into the service user's home", cache=cache)
