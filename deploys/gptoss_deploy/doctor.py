"""The doctor on every host (its own small venv, `gptoss-doctor` on PATH) and the doctor gate.

The wheel is built once on the controller with `uv build --wheel doctor` and cached by a hash
of the doctor's sources, so a re-run neither rebuilds nor re-uploads it. GPTOSS_DOCTOR_WHEEL
names a wheel built beforehand instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, deploy, operation

from gptoss_doctor.layout import DOCTOR_LINK as LINK
from gptoss_doctor.layout import WHEELS_DIR as WHEEL_DIR

from . import config as C
from .python_env import UV, UV_ENV, controller_cache, controller_lock, controller_uv, doctor_index_args, state_fact

DOCTOR_MARKER = f"{C.DOCTOR_DIR}/{C.MARKER}"

_built: dict[str, str] = {}


class DoctorBuildError(C.ConfigError):
    pass


def doctor_source() -> Path:
    import gptoss_doctor

    root = Path(gptoss_doctor.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise DoctorBuildError(f"gptoss-doctor sources not found at {root}; fix: run the deploy from a checkout of this repo")
    return root


def source_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".py", ".toml", ".md", ".json", ".txt") and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build_wheel() -> str:
    """Path of the doctor wheel on the controller, built at most once per source version."""
    with controller_lock("doctor"):
        if "last" in _built:  # one build per deploy run
            return _built["last"]
        pinned = os.environ.get("GPTOSS_DOCTOR_WHEEL")
        if pinned:
            # A wheel built beforehand (CI, air-gapped controllers, benchmarks): used as is.
            if not pinned.endswith(".whl") or not os.path.isfile(pinned):
                raise DoctorBuildError(f"GPTOSS_DOCTOR_WHEEL={pinned!r} is not a wheel file; fix: point it at "
                                       f"a file from `uv build --wheel doctor`, or unset it")
            _built["last"] = pinned
            return pinned
        root = doctor_source()
        key = source_hash(root)
        cache = controller_cache() / f"doctor-{key}"
        wheels = sorted(cache.glob("*.whl")) if cache.is_dir() else []
        if not wheels:
            uv, _ = controller_uv()
            tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
            r = subprocess.run([uv, "build", "--wheel", "--quiet", "--out-dir", str(tmp), str(root)],
                               capture_output=True, text=True)
            if r.returncode:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                raise DoctorBuildError(f"building the doctor wheel failed: {last}; fix: `uv build --wheel doctor` by hand")
            os.replace(tmp, cache) if not cache.exists() else None
            wheels = sorted(cache.glob("*.whl"))
        _built["last"] = str(wheels[-1])
        return _built["last"]


def wheel_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@operation()
def doctor_venv(cfg: C.HostConfig, wheel: str):
    """/opt/gptoss/doctor: a venv with just the doctor wheel and its small dependencies."""
    want = wheel_sha(wheel)
    state = state_fact(cfg)
    if state.get("doctor") == want and state["links"].get(LINK) == f"{C.DOCTOR_DIR}/bin/gptoss-doctor":
        host.noop(f"doctor {want} installed")
        return
    if state.get("doctor") == want:
        yield StringCommand(f"ln -sfn {C.DOCTOR_DIR}/bin/gptoss-doctor {LINK}")
        return
    remote = f"{WHEEL_DIR}/{os.path.basename(wheel)}"
    yield StringCommand("mkdir", "-p", WHEEL_DIR)
    yield FileUploadCommand(wheel, remote)
    yield StringCommand("rm", "-rf", C.DOCTOR_DIR)
    yield StringCommand(f"{UV_ENV} {UV} venv --quiet --python {shlex.quote(cfg.python)} {C.DOCTOR_DIR}")
    yield StringCommand(
        f"{UV_ENV} {UV} pip install --python {C.DOCTOR_DIR}/bin/python {doctor_index_args(cfg)} {remote}"
    )
    yield StringCommand(f"echo {want} > {DOCTOR_MARKER}")
    yield StringCommand(f"ln -sfn {C.DOCTOR_DIR}/bin/gptoss-doctor {LINK}")


def with_exit_status(cmd: str) -> str:
    """`cmd`, then its exit status as the last stderr line: pyinfra says only ok / failed, and
    the doctor's 0 / 1 / 2 (and timeout's 124, the shell's 127) mean different things."""
    return f'{cmd}; echo "__exit=$?" >&2'


def split_exit_status(stderr: str) -> tuple[int | None, list[str]]:
    """(the status `with_exit_status` reported, None without one; the other stderr lines)."""
    code, rest = None, []
    for line in stderr.splitlines():
        if line.startswith("__exit="):
            code = int(line.split("=", 1)[1] or 2)
        else:
            rest.append(line)
    return code, rest


def gate_verdict(exit_code: int, stdout: str, stderr: str) -> str | None:
    """None when the host passes; else one line naming the error findings (pure, tested)."""
    if exit_code == 0:
        return None
    if exit_code == 1:
        try:
            report = json.loads(stdout)
            errors = [f for f in report.get("findings", []) if f.get("severity") == "error"]
            ids = ", ".join(f"{f.get('id')} ({f.get('title')})" for f in errors) or "unknown"
            fixes = "; ".join((f.get("fix") or {}).get("text", "") for f in errors if f.get("fix"))
            return f"doctor found errors: {ids}" + (f"; fix: {fixes}" if fixes else "")
        except (ValueError, AttributeError):
            pass
    last = (stderr.strip().splitlines() or [stdout.strip()[-200:] or "no output"])[-1]
    return f"gptoss-doctor exited {exit_code}: {last}"


def run_doctor() -> str | None:
    """Run `gptoss-doctor --json` on the current host; the gate's verdict (None = pass)."""
    _, out = host.run_shell_command(StringCommand(with_exit_status(f"timeout 300 {LINK} --json")),
                                    print_output=False, print_input=False)
    code, err_lines = split_exit_status(out.stderr)
    return gate_verdict(2 if code is None else code, out.stdout, "\n".join(err_lines))


@operation()
def doctor_gate(cfg: C.HostConfig):
    """At execute time: `gptoss-doctor --json`; an error finding fails this host."""
    if not host.state.is_executing or not cfg.doctor_gate:
        return
    verdict = run_doctor()
    if verdict:
        yield StringCommand("echo", shlex.quote("gptoss: " + verdict[:1500]), ">&2", "&&", "false")


@deploy("gptoss doctor")
def apply(cfg: C.HostConfig):
    wheel = build_wheel()
    doctor_venv(name="doctor venv, gptoss-doctor on PATH", cfg=cfg, wheel=wheel)


@deploy("gptoss doctor gate")
def gate(cfg: C.HostConfig):
    doctor_gate(name="doctor gate", cfg=cfg)
