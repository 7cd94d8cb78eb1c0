"""Hosts without systemd (containers, GPU VMs): the service under gptoss-supervise.

The deploy writes the same unit file on every host. Where systemd runs it, systemd starts it;
elsewhere the small program in `gptoss_supervise.py`, installed as /opt/gptoss/bin/gptoss-supervise,
reads that unit and runs the same argv, EnvironmentFiles and User/Group, with a pid file
(/run/gptoss/gptoss-vllm.pid), a log file (/var/log/gptoss/gptoss-vllm.log) and start/stop/restart.

`gptoss_service_manager`: "auto" (default: systemd when /run/systemd/system exists, the test
systemd itself documents for sd_booted()), "systemd" or "supervisor"; the choice is
`gptoss_doctor.service_manager.choose`, the doctor's own, fed the `InitSystem` fact below.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from gptoss_doctor.layout import LOG_DIR, LOG_FILE, PID_FILE, RUN_DIR, SERVICE_USER, UNIT  # noqa: F401 (LOG_FILE, PID_FILE: read as supervisor.X)
from gptoss_doctor.layout import SUPERVISE as PROGRAM

from . import config as C
from .ops import ManagedDir, ManagedFile


class InitSystem(FactBase):
    """"systemd" when systemd is PID 1 (it creates /run/systemd/system), else "none"."""

    def default(self):
        return "none"

    def command(self) -> str:
        return "sh -c 'if [ -d /run/systemd/system ]; then echo systemd; else echo none; fi'"

    def process(self, output: list[str]) -> str:
        return (output[0].strip() if output else "") or "none"


def program_text(python: str) -> str:
    """The supervisor program with the host's python3 as its interpreter."""
    src = (Path(__file__).parent / "gptoss_supervise.py").read_text()
    return f"#!{python}\n" + src.split("\n", 1)[1]


def managed_files(cfg: C.HostConfig) -> tuple[ManagedFile, ...]:
    return (ManagedFile(PROGRAM, program_text(cfg.python), "root", "root", "0755"),)


def managed_dirs() -> tuple[ManagedDir, ...]:
    # The log holds vLLM's output: root writes it, the service group reads it, nobody else.
    return (ManagedDir(RUN_DIR, "root", "root", "0755"), ManagedDir(LOG_DIR, "root", SERVICE_USER, "0750"))


class SupervisedState(FactBase):
    """`gptoss-supervise is-active`: active, auto-restart, failed, inactive, or missing."""

    def default(self):
        return "missing"

    def command(self) -> str:
        return f"sh -c 'if [ -x {PROGRAM} ]; then {PROGRAM} is-active; else echo missing; fi; true'"

    def process(self, output: list[str]) -> str:
        return (output[-1].strip() if output else "") or "missing"


@operation()
def service_running(restart_if):
    """The service running under gptoss-supervise; restarted when its inputs changed
    (`restart_if`, a callable read at execute time, as for the systemd unit)."""
    restart_needed = host.state.is_executing and restart_if()
    state = host.get_fact(SupervisedState)
    if state != "active":
        yield StringCommand(PROGRAM, "restart" if state in ("failed", "auto-restart") else "start")
    elif restart_needed:
        yield StringCommand(PROGRAM, "restart")
    else:
        host.noop(f"{UNIT} active under gptoss-supervise")
