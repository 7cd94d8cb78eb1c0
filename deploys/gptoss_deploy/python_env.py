"""Python: uv on the host, one venv per stack, and the atomic `current` pointer.

A stack venv is complete only when its marker holds the hash of what was asked for; an
interrupted install has no marker, so it is rebuilt and `current` never points at it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, deploy, operation

from gptoss_doctor.layout import DOCTOR_LINK, UV_CACHE

from . import airgap
from . import config as C
from . import managed_python
from .facts import DeployState

UV = f"{C.BIN_DIR}/uv"
# uv must never fetch a Python or read a user's config on a server. The venvs are root's and the
# service's user cannot write __pycache__ there: without bytecode compiled at install, every start
# of vLLM (its API server and each engine process) compiles every module it imports again.
UV_ENV = f"UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1 UV_CACHE_DIR={UV_CACHE} UV_NO_PROGRESS=1 UV_COMPILE_BYTECODE=1"


@functools.lru_cache(maxsize=1)
def controller_uv() -> tuple[str, str]:
    """(path, version) of the uv that runs this deploy; it is what gets pushed."""
    import uv as uv_pkg

    path = uv_pkg.find_uv_bin()
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return path, version


def controller_cache() -> Path:
    """The controller's cache of what deploys build or fetch once (doctor wheel, wheelhouse)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptoss-deploy"


@functools.lru_cache(maxsize=None)
def controller_lock(name: str):
    """One greenlet at a time per `name`: every host's deploy, in its own greenlet, asks for the
    same controller-side build, which must happen once."""
    from gevent.lock import BoundedSemaphore

    return BoundedSemaphore(1)


def install_spec(cfg: C.HostConfig) -> dict:
    """What defines a stack venv's contents. Mirror URLs are left out: a mirror moves the
    source, not the result, so changing one never rebuilds a venv."""
    return {
        "stack": cfg.stack,
        "python": cfg.python,
        "requirements": list(cfg.requirements),
        "nvcc": cfg.nvcc_requirement,
        "indexes": [ix.name for ix in cfg.indexes],
        "index_strategy": cfg.index_strategy,
        "prerelease": cfg.prerelease,
        "torch_backend": cfg.torch_backend,
    }


def spec_hash(cfg: C.HostConfig) -> str:
    spec = install_spec(cfg)
    if cfg.airgap:  # added only when set, so an indexed host's hash stays what it was
        spec.update(airgap.spec_fields(cfg.airgap))
    if cfg.managed_python:  # likewise: only hosts on uv's managed CPython hash it
        spec.update(managed_python.spec_fields(cfg.managed_python))
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def uv_install_args(cfg: C.HostConfig) -> list[str]:
    """`uv pip install` options from the stack: indexes (mirrored), strategy, prerelease, backend."""
    args = []
    for ix in cfg.indexes:
        args += ["--default-index", ix.url] if ix.name == "pypi" else ["--index", ix.url]
    if cfg.index_strategy:
        args += ["--index-strategy", cfg.index_strategy]
    if cfg.prerelease:
        args += ["--prerelease", cfg.prerelease]
    if cfg.torch_backend:
        args += ["--torch-backend", cfg.torch_backend]
    return args


def state_fact(cfg: C.HostConfig) -> dict:
    return host.get_fact(
        DeployState,
        uv=UV,
        markers=[cfg.stack_marker],
        current=C.CURRENT,
        doctor_marker=f"{C.DOCTOR_DIR}/{C.MARKER}",
        files=[],
        links=(DOCTOR_LINK,),
    )


_UV_FROM_INDEX_PY = r"""
import html, io, platform, re, sys, urllib.parse, urllib.request, zipfile
index, version, dest = sys.argv[1:4]
base = index.rstrip('/') + '/uv/'
page = urllib.request.urlopen(base, timeout=60).read().decode()
arch = platform.machine()
links = [html.unescape(l).split('#')[0] for l in re.findall(r'href="([^"]+)"', page)]
whl = [l for l in links if l.endswith('.whl') and f'uv-{version}-' in l and 'manylinux' in l and arch in l]
if not whl:
    sys.exit(f'gptoss: no uv {version} manylinux wheel for {arch} at {base}; fix: mirror it, or use gptoss_uv_source=controller')
z = zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(urllib.parse.urljoin(base, whl[0]), timeout=300).read()))
open(dest, 'wb').write(z.read([n for n in z.namelist() if n.endswith('/scripts/uv')][0]))
"""


# A release tarball holds uv-<triple>/uv; python3 fetches it so curl is not needed.
_UV_FROM_TARBALL_PY = (
    "import io,sys,tarfile,urllib.request;"
    "t=tarfile.open(fileobj=io.BytesIO(urllib.request.urlopen(sys.argv[1],timeout=120).read()));"
    "m=[x for x in t.getmembers() if x.name.split('/')[-1]=='uv'][0];"
    "open(sys.argv[2],'wb').write(t.extractfile(m).read())"
)


@operation()
def uv_binary(cfg: C.HostConfig):
    """uv at /opt/gptoss/bin/uv: the controller's own binary (pushed, or the same version's wheel
    from the "pypi" index or its mirror), or a release tarball from a URL."""
    have = state_fact(cfg).get("uv")
    if cfg.uv_source in ("controller", "index"):
        path, version = controller_uv()
        if have == version:
            host.noop(f"{version} already at {UV}")
            return
        if cfg.uv_source == "controller":
            fetch = FileUploadCommand(path, f"{UV}.tmp", remote_temp_filename=f"{UV}.upload")
        else:
            fetch = StringCommand("python3", "-c", shlex.quote(_UV_FROM_INDEX_PY), shlex.quote(cfg.pypi_url),
                                  shlex.quote(version.split()[1]), f"{UV}.tmp")
    else:
        if have:
            host.noop(f"{have} already at {UV} (from {cfg.uv_source})")
            return
        fetch = StringCommand("python3", "-c", shlex.quote(_UV_FROM_TARBALL_PY), shlex.quote(cfg.uv_source), f"{UV}.tmp")
    # Onto a temp name, then renamed: an interrupted fetch never leaves a broken uv in place.
    yield StringCommand("mkdir", "-p", C.BIN_DIR)
    yield fetch
    yield StringCommand("chmod", "0755", f"{UV}.tmp", "&&", "mv", "-f", f"{UV}.tmp", UV)


def stack_installed(cfg: C.HostConfig) -> bool:
    """The stack's venv is complete: its marker holds the hash of what is asked for now."""
    return state_fact(cfg)["markers"].get(cfg.stack_marker) == spec_hash(cfg)


def begin_rebuild(cfg: C.HostConfig, instead: str):
    """The start of every stack-venv operation (`yield from`; True: go on installing). An installed
    stack is a no-op; rebuilding the venv the service runs from would serve a half-installed stack,
    so that fails, saying so (`instead`: what to do); otherwise the old venv goes."""
    if stack_installed(cfg):
        host.noop(f"stack {cfg.stack} installed ({spec_hash(cfg)})")
        return False
    if state_fact(cfg).get("current") == cfg.venv:
        yield StringCommand("echo", shlex.quote(
            f"gptoss: {cfg.venv} is the live stack but was installed from a different spec; {instead}"),
            ">&2", "&&", "false")
        return False
    yield StringCommand("rm", "-rf", cfg.venv)
    return True


def new_venv(cfg: C.HostConfig) -> StringCommand:
    if cfg.managed_python:
        return StringCommand(managed_python.venv_command(UV_ENV, UV, cfg.venv, cfg.managed_python))
    return StringCommand(f"{UV_ENV} {UV} venv --quiet --python {shlex.quote(cfg.python)} {cfg.venv}")


def with_nvcc(cfg: C.HostConfig) -> list[str]:
    """The stack's requirements and, last, the pip CUDA toolkit where the stack has one."""
    return [*cfg.requirements, *([cfg.nvcc_requirement] if cfg.nvcc_requirement else [])]


def pip_installs(cfg: C.HostConfig, venv_py: str, args: list[str]):
    """`uv pip install` of the stack into `venv_py`'s venv with `args` (indexes or find-links)."""
    common = " ".join(shlex.quote(a) for a in args)
    if cfg.nvcc_requirement:
        # The pip toolkit first, so CUDA_HOME exists while the rest installs (same path at serve time).
        yield StringCommand(
            f"{UV_ENV} {UV} pip install --python {venv_py} {common} {shlex.quote(cfg.nvcc_requirement)}"
        )
    cuda = f"CUDA_HOME={shlex.quote(cfg.cuda_home)} " if cfg.cuda_home else ""
    # nvcc again in the full install, so one resolution covers everything in the venv.
    reqs = " ".join(shlex.quote(r) for r in with_nvcc(cfg))
    yield StringCommand(f"{cuda}{UV_ENV} {UV} pip install --python {venv_py} {common} {reqs}")


def mark_complete(cfg: C.HostConfig) -> StringCommand:
    """The marker last, written by rename: only a finished install has it."""
    want = spec_hash(cfg)
    return StringCommand(f"echo {want} > {cfg.stack_marker}.tmp && mv -f {cfg.stack_marker}.tmp {cfg.stack_marker}")


@operation()
def stack_venv(cfg: C.HostConfig):
    """The stack's venv, installed with the stack's uv options; complete when the marker matches."""
    if not (yield from begin_rebuild(cfg, "deploy it under a new stack name instead")):
        return
    venv_py = f"{cfg.venv}/bin/python"
    if cfg.airgap:
        yield from airgap_install(cfg, venv_py)
    else:
        yield new_venv(cfg)
        yield from pip_installs(cfg, venv_py, uv_install_args(cfg))
    yield mark_complete(cfg)


def airgap_install(cfg: C.HostConfig, venv_py: str):
    """The stack venv from the wheelhouse, no network: on the base Python (torch checked) or a
    fresh one."""
    ag = cfg.airgap
    if ag.base_python:
        for cmd in airgap.venv_commands(UV_ENV, UV, cfg.venv, ag, airgap.wanted_torch(cfg.stack_versions)):
            yield StringCommand(cmd)
    else:
        yield new_venv(cfg)
    cuda = f"CUDA_HOME={shlex.quote(cfg.cuda_home)} " if cfg.cuda_home else ""
    for cmd in airgap.install_commands(UV_ENV, UV, venv_py, ag, with_nvcc(cfg), cuda):
        yield StringCommand(cmd)


def doctor_index_args(cfg: C.HostConfig) -> str:
    """Where the doctor's venv gets its small dependencies: the wheelhouse when air-gapped."""
    if cfg.airgap:
        return " ".join(shlex.quote(a) for a in airgap.install_args(cfg.airgap))
    return f"--default-index {shlex.quote(cfg.pypi_url)}"


@operation()
def switch_current(cfg: C.HostConfig):
    """Point /opt/gptoss/current at the stack: a new link, then rename(2) over the old one."""
    if state_fact(cfg).get("current") == cfg.venv:
        host.noop(f"{C.CURRENT} -> {cfg.venv}")
        return
    tmp = f"{C.CURRENT}.tmp"
    yield StringCommand(f"test -f {cfg.stack_marker}")  # never switch to an incomplete venv
    yield StringCommand(f"ln -sfn {cfg.venv} {tmp} && mv -T {tmp} {C.CURRENT}")


def install_managed_python(cfg: C.HostConfig) -> None:
    """uv's CPython for the stack venv, where the host's python3 misses the stack's range."""
    if cfg.managed_python:
        managed_python.python_installed(name=f"uv-managed CPython {cfg.managed_python.minor} in {managed_python.INSTALL_DIR}",
                                        managed=cfg.managed_python, uv_env=UV_ENV, uv=UV)


@deploy("gptoss python")
def apply(cfg: C.HostConfig):
    uv_binary(name="uv binary", cfg=cfg)
    install_managed_python(cfg)
    installed = stack_venv(name=f"stack venv {cfg.stack}", cfg=cfg)
    switched = switch_current(name="switch current", cfg=cfg)
    return installed, switched
