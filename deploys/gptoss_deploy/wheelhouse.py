"""Download once: a stack's wheels come from upstream once per fleet, not once per host.

On the controller, before any host is touched: `uv pip compile` resolves the stack with the
stack's own indexes (mirrors applied), index strategy, prerelease policy and torch backend,
for the hosts' Python and platform, into a PEP 751 lock (`--format pylock.toml`: every wheel's
URL and sha256); each wheel is downloaded once into the controller's cache and checked
against its hash. Then each host gets the wheels pushed over its SSH connection into
/opt/gptoss/wheelhouse/<stack> and installs with `uv pip install --no-index --find-links`:
no host talks to the upstream index, so a 3-host upgrade pulls what a 1-host upgrade pulls.

The venv it builds is the one `python_env.stack_venv` would build (same requirements, the nvcc
wheel first, same CUDA_HOME) and it gets the same completion marker (the spec hash), so a later
`deploys/gptoss.py` run with this stack sees it as installed. The host's wheelhouse copy is
removed once the venv is complete. Set `gptoss_download_once=False` to let each host fetch from
its indexes itself (the controller then needs no index access).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gptoss_doctor.layout import WHEELHOUSE_DIR
from gptoss_doctor.redact import redact_url
from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, StringCommand, operation

from . import config as C
from .python_env import (begin_rebuild, controller_cache, controller_lock, controller_uv, mark_complete, new_venv,
                         pip_installs, spec_hash, stack_installed, uv_install_args)

REMOTE_ROOT = WHEELHOUSE_DIR
# Debian 11+/Ubuntu 20.04+ have glibc >= 2.31: manylinux_2_28 wheels (torch's, vLLM's) run there.
GLIBC = (2, 28)

_built: dict[tuple, "Wheelhouse"] = {}


class WheelhouseError(C.ConfigError):
    """The wheelhouse could not be filled: one line, what and the fix."""


@dataclass(frozen=True)
class Wheel:
    filename: str
    url: str
    sha256: str
    path: str  # in the controller's cache


@dataclass(frozen=True)
class Wheelhouse:
    stack: str
    key: str  # spec hash + python + arch
    wheels: tuple[Wheel, ...]
    downloaded_bytes: int  # fetched from upstream by this process (0 when all were cached)

    @property
    def remote_dir(self) -> str:
        return f"{REMOTE_ROOT}/{self.stack}"


def cache_root() -> Path:
    return controller_cache() / "wheelhouse"


def python_platform(arch: str) -> str:
    return f"{arch or 'x86_64'}-manylinux_{GLIBC[0]}_{GLIBC[1]}"


def compile_args(cfg: C.HostConfig, py: str, arch: str, out: str) -> list[str]:
    """`uv pip compile` argv (after the uv path) for this stack on a host of this Python/arch.
    The index URLs go through the environment (compile_env): a mirror's credentials never
    appear in a process list."""
    opts = uv_install_args(cfg)
    for flag in ("--default-index", "--index"):
        while flag in opts:
            i = opts.index(flag)
            del opts[i:i + 2]
    return ["pip", "compile", "-", "--format", "pylock.toml", "-o", out, "--no-header", "--quiet",
            "--python-version", py, "--python-platform", python_platform(arch), *opts]


def compile_env(cfg: C.HostConfig) -> dict[str, str]:
    """UV_DEFAULT_INDEX / UV_INDEX as `uv_install_args` would pass them (the same order)."""
    args = uv_install_args(cfg)
    default = [args[i + 1] for i, a in enumerate(args) if a == "--default-index"]
    extra = [args[i + 1] for i, a in enumerate(args) if a == "--index"]
    env = {"UV_NO_CONFIG": "1", "UV_NO_PROGRESS": "1", "UV_PYTHON_DOWNLOADS": "never"}
    if default:
        env["UV_DEFAULT_INDEX"] = default[-1]
    if extra:
        env["UV_INDEX"] = " ".join(extra)
    return env


def requirements(cfg: C.HostConfig) -> list[str]:
    return ([cfg.nvcc_requirement] if cfg.nvcc_requirement else []) + list(cfg.requirements)


def _wheel_tags(py: str, arch: str) -> list:
    from packaging import tags

    major, minor = (int(x) for x in py.split(".")[:2])
    plats = [f"manylinux_{GLIBC[0]}_{m}_{arch}" for m in range(GLIBC[1], 4, -1)]
    plats += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}", f"linux_{arch}"]
    return list(tags.cpython_tags((major, minor), platforms=plats)) + list(
        tags.compatible_tags((major, minor), platforms=plats))


def pick_wheels(lock: dict, py: str, arch: str) -> list[dict]:
    """From a parsed pylock: the best wheel of every package for this Python/platform (pure).
    Raises WheelhouseError for a package with no wheel that fits (an sdist-only dependency)."""
    from packaging.utils import parse_wheel_filename

    rank = {t: i for i, t in enumerate(_wheel_tags(py, arch))}
    out = []
    for pkg in lock.get("packages", []):
        best = None
        for w in pkg.get("wheels", []):
            name = w.get("name") or urllib.parse.unquote(w["url"].rsplit("/", 1)[-1].split("#")[0])
            score = min((rank[t] for t in parse_wheel_filename(name)[3] if t in rank), default=None)
            if score is not None and (best is None or score < best[0]):
                best = (score, {"filename": name, "url": w["url"], "sha256": w.get("hashes", {}).get("sha256", "")})
        if best is None:
            raise WheelhouseError(
                f"stack wheelhouse: {pkg.get('name')} {pkg.get('version')} has no wheel for Python {py} on "
                f"{python_platform(arch)}; fix: set gptoss_download_once=False so the hosts build it themselves")
        out.append(best[1])
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def credentials_for(url: str, index_urls: list[str]) -> tuple[str, str] | None:
    """A mirror's user:password (from its index URL) for a file URL on the same host; uv's lock
    output carries no credentials (pure)."""
    target = urllib.parse.urlsplit(url)
    if target.username:
        return None
    for ix in index_urls:
        p = urllib.parse.urlsplit(ix)
        if p.username and (p.hostname, p.port) == (target.hostname, target.port):
            return urllib.parse.unquote(p.username), urllib.parse.unquote(p.password or "")
    return None


def _request(url: str, creds: tuple[str, str] | None) -> urllib.request.Request:
    import base64

    p = urllib.parse.urlsplit(url)
    if p.username:  # user:pass@ in the URL itself: urllib does not send it by itself
        creds = (urllib.parse.unquote(p.username), urllib.parse.unquote(p.password or ""))
        url = urllib.parse.urlunsplit((p.scheme, p.hostname + (f":{p.port}" if p.port else ""), p.path, p.query, ""))
    req = urllib.request.Request(url)
    if creds:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode())
    return req


def download(url: str, sha256: str, dest: Path, creds: tuple[str, str] | None = None) -> int:
    """Fetch one wheel into the cache (temp name, hash checked, then renamed); bytes fetched."""
    if dest.is_file() and (not sha256 or _sha256(dest) == sha256):
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    n = 0
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(_request(url, creds), timeout=300) as r:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
                n += len(block)
        if sha256 and _sha256(Path(tmp)) != sha256:
            raise WheelhouseError(f"stack wheelhouse: {dest.name} from {redact_url(url)} does not match its sha256; "
                                  f"fix: check the index mirror (a proxy altering files?)")
        os.replace(tmp, dest)
    except OSError as e:
        raise WheelhouseError(f"stack wheelhouse: downloading {redact_url(url)} failed ({e}); fix: the controller "
                              f"must reach the stack's indexes, or set gptoss_download_once=False") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return n


def build(cfg: C.HostConfig, py: str, arch: str) -> Wheelhouse:
    """The stack's wheels for hosts of this Python (X.Y) and arch, resolved and fetched at most
    once per controller process (and kept in the cache across runs)."""
    py = ".".join(py.split(".")[:2])
    key = (spec_hash(cfg), tuple(ix.url for ix in cfg.indexes), py, arch)
    with controller_lock("wheelhouse"):
        if key in _built:
            return _built[key]
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        uv, _ = controller_uv()
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            out = f"{tmp}/pylock.toml"
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("UV_")}, **compile_env(cfg)}
            r = subprocess.run([uv, *compile_args(cfg, py, arch, out)], input="\n".join(requirements(cfg)) + "\n",
                               capture_output=True, text=True, env=env, timeout=900)
            if r.returncode:
                last = (r.stderr.strip().splitlines() or ["no output"])[-1]
                raise WheelhouseError(f"host {cfg.host}: stack {cfg.stack}: resolving its wheels on the controller "
                                      f"failed: {last}; fix: check gptoss_index_mirrors, or set gptoss_download_once=False")
            with open(out, "rb") as f:
                lock = tomllib.load(f)
        wheels, fetched = [], 0
        for w in pick_wheels(lock, py, arch):
            dest = root / "files" / w["filename"]
            fetched += download(w["url"], w["sha256"], dest, credentials_for(w["url"], [ix.url for ix in cfg.indexes]))
            wheels.append(Wheel(w["filename"], w["url"], w["sha256"] or _sha256(dest), str(dest)))
        wh = Wheelhouse(cfg.stack, f"{key[0]}-py{py}-{arch}", tuple(wheels), fetched)
        _built[key] = wh
        return wh


class RemoteWheels(FactBase):
    """Wheel files (name -> size) in a wheelhouse dir on the host."""

    def command(self, path: str) -> str:
        return "sh -c " + shlex.quote(f"for f in {shlex.quote(path)}/*.whl; do [ -f \"$f\" ] && "
                                      "echo \"$(stat -c %s \"$f\") $(basename \"$f\")\"; done; true")

    @staticmethod
    def default() -> dict:
        return {}

    def process(self, output: list[str]) -> dict:
        out = {}
        for line in output:
            size, _, name = line.partition(" ")
            if size.isdigit():
                out[name] = int(size)
        return out


@operation()
def push(cfg: C.HostConfig, wh: Wheelhouse):
    """The wheels this host lacks, from the controller over SSH (never from upstream)."""
    if stack_installed(cfg):
        host.noop(f"stack {cfg.stack} already installed: nothing to push")
        return
    have = host.get_fact(RemoteWheels, path=wh.remote_dir)
    missing = [w for w in wh.wheels if have.get(w.filename) != os.path.getsize(w.path)]
    if not missing:
        host.noop(f"{len(wh.wheels)} wheels already in {wh.remote_dir}")
        return
    yield StringCommand("mkdir", "-p", wh.remote_dir)
    for w in missing:
        tmp = f"{wh.remote_dir}/.{w.filename}.part"
        yield FileUploadCommand(w.path, tmp, remote_temp_filename=f"{wh.remote_dir}/.{w.filename}.upload")
        yield StringCommand("mv", "-f", shlex.quote(tmp), shlex.quote(f"{wh.remote_dir}/{w.filename}"))


def install_args(cfg: C.HostConfig, find_links: str) -> list[str]:
    """Only the pushed wheels: no index at all. The resolution already happened on the controller."""
    args = ["--no-index", "--find-links", find_links]
    if cfg.prerelease:
        args += ["--prerelease", cfg.prerelease]
    return args


@operation()
def staged_venv(cfg: C.HostConfig, wh: Wheelhouse):
    """The stack's venv from the host's wheelhouse; complete (marker written) only at the end.
    Never touches the venv `current` points at, nor the running service."""
    if not (yield from begin_rebuild(cfg, "upgrade to a new stack name instead")):
        return
    yield new_venv(cfg)
    yield from pip_installs(cfg, f"{cfg.venv}/bin/python", install_args(cfg, wh.remote_dir))
    yield mark_complete(cfg)
    yield StringCommand("rm", "-rf", wh.remote_dir)  # the venv holds it all now
