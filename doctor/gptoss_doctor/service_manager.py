"""Who runs the gpt-oss service on this box, and the commands that act on it (pure).

The deploy runs one unit, gptoss-vllm.service. Where systemd is PID 1, systemd runs it; on hosts
without systemd (containers, many GPU machines) /opt/gptoss/bin/gptoss-supervise reads the same
unit file and runs it, with a pid file in /run/gptoss/ and a log file in /var/log/gptoss/. Every
fix that restarts the service, edits its unit, or reads its log asks `commands_for(...)` here, so
the doctor never tells a container to `systemctl restart`. The deploy makes its choice with
`choose(...)` here too, and its units and the rolling upgrade run the `ServiceCommands` lines.
"""

from __future__ import annotations

import shlex
from typing import Any

from .layout import LOG_DIR, LOG_FILE, PID_FILE, RUN_DIR, SUPERVISE, UNIT, UNIT_PATH
from .records import frozen_record

SYSTEMD = "systemd"
SUPERVISOR = "supervisor"
MANAGERS = (SYSTEMD, SUPERVISOR)
AUTO = "auto"
CHOICES = (AUTO, SYSTEMD, SUPERVISOR)  # what the deploy's `gptoss_service_manager` accepts


class ManagerChoiceError(ValueError):
    """A service manager this host cannot use: `problem` and `fix`, for the caller's one line."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; fix: {fix}")
        self.problem, self.fix = problem, fix


def choose(requested: str | None, pid1_systemd: bool | None) -> str:
    """The one choice of who runs the unit, for the deploy (from its data key and the host's init
    system) as for the doctor (`commands_for`, from what the deploy recorded). `requested`: "auto"
    (None too), "systemd" or "supervisor"; `pid1_systemd`: whether systemd is PID 1 (None: unknown,
    taken as yes, what every deploy assumed before hosts without systemd)."""
    choice = AUTO if requested is None else requested
    if choice not in CHOICES:
        raise ManagerChoiceError("unknown service manager", "use 'auto', 'systemd' or 'supervisor'")
    if choice == AUTO:
        return SUPERVISOR if pid1_systemd is False else SYSTEMD
    if choice == SYSTEMD and pid1_systemd is False:
        raise ManagerChoiceError("systemd is not running on this host (no /run/systemd/system)",
                                 "use 'auto' or 'supervisor' (gptoss-supervise runs the same unit)")
    return choice


def unit_stem(unit: str) -> str:
    """gptoss-vllm.service -> gptoss-vllm (systemctl and gptoss-supervise's file names use it)."""
    return unit[: -len(".service")] if unit.endswith(".service") else unit


def default_log_file(unit: str = UNIT) -> str:
    return LOG_FILE if unit == UNIT else f"{LOG_DIR}/{unit_stem(unit)}.log"


def default_pid_file(unit: str = UNIT) -> str:
    return PID_FILE if unit == UNIT else f"{RUN_DIR}/{unit_stem(unit)}.pid"


@frozen_record
class ServiceCommands:
    """The copy-pastable commands for one manager. `manager` is "systemd" or "supervisor"."""

    manager: str = SYSTEMD
    unit: str = UNIT
    unit_path: str = UNIT_PATH
    supervise: str = SUPERVISE
    log_file: str = default_log_file()

    @property
    def supervised(self) -> bool:
        return self.manager == SUPERVISOR

    @property
    def name(self) -> str:
        return unit_stem(self.unit)

    def restart(self) -> str:
        return f"{self.supervise} restart" if self.supervised else f"systemctl restart {self.name}"

    def status(self) -> str:
        return f"{self.supervise} status" if self.supervised else f"systemctl status --no-pager {self.name}"

    def edit_unit(self, note: str) -> str:
        """Edit the unit's [Service] lines (ExecStart= and the like), with what to change as a comment.
        gptoss-supervise reads the unit file on every start, so editing it is the same act."""
        if self.supervised:
            return f"${{EDITOR:-vi}} {shlex.quote(self.unit_path)}  # {note}"
        return f"systemctl edit --full {self.name}  # {note}"

    def log(self) -> str:
        """Print this boot's service log (pipe it into `gptoss-doctor logs -` or grep)."""
        if self.supervised:
            return f"cat {shlex.quote(self.log_file)}"
        return f"journalctl -u {self.name} -b --no-pager"

    def log_argv(self) -> list[str] | None:
        """The command `gptoss-doctor logs` runs for the service's log; None: read `log_file`."""
        return None if self.supervised else ["journalctl", "-u", self.name, "-b", "--no-pager"]

    def describe(self) -> str:
        return f"gptoss-supervise ({self.supervise})" if self.supervised else "systemd"

    # -- what the deploy and the rolling upgrade run on the host (shell lines) --

    def restart_after_unit_change(self) -> list[str]:
        """Restart with a unit file that may have changed: systemd re-reads it only on daemon-reload;
        gptoss-supervise reads it on every start."""
        if self.supervised:
            return [self.restart()]
        return ["systemctl daemon-reload", f"systemctl restart {self.unit}"]

    def is_active_quiet(self) -> str:
        """Exit 0 when the service runs, nothing printed."""
        return f"{self.supervise} is-active >/dev/null" if self.supervised else f"systemctl is-active --quiet {self.unit}"

    def log_since(self, since: int, lines: int = 2000) -> str:
        """The service's log since `since` (epoch seconds on the host's clock), last `lines` lines:
        the journal, or the supervisor's log file (which has no timestamps to cut at)."""
        if self.supervised:
            return f"tail -n {lines} {shlex.quote(self.log_file)}"
        return f"journalctl -u {self.unit} --since @{since} --no-pager -o cat 2>/dev/null | tail -n {lines}"


# Host daemons the checks may ask to start, and how to start one where systemd is not PID 1
# (its own command line, from the package's unit): (start command, process name).
HOST_DAEMONS = {
    "nvidia-fabricmanager": ("nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg", "nv-fabricmanager"),
    "nvidia-persistenced": ("nvidia-persistenced", "nvidia-persistenced"),
}


def host_daemon(unit: str, verb: str, pid1_systemd: bool) -> str:
    """`systemctl VERB UNIT` where systemd is PID 1; otherwise the daemon's own command
    (verb: "start" / "enable --now", "restart" or "status")."""
    if pid1_systemd or unit not in HOST_DAEMONS:
        return f"systemctl {verb} {unit}" if verb != "status" else f"systemctl status --no-pager {unit}"
    start, proc = HOST_DAEMONS[unit]
    if verb == "status":
        return f"pgrep -a {proc}"
    if verb == "restart":
        return f"kill $(pidof {proc}) 2>/dev/null; {start}"
    return start


def _obj(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def pid1_systemd(facts: Any) -> bool:
    """Whether systemd is PID 1 on the box the snapshot describes (unknown: yes, as before)."""
    facts = getattr(facts, "facts", facts)
    facts = facts if isinstance(facts, dict) else {}
    fact = _obj(_obj(facts.get("service.manager")).get("value"))
    if isinstance(fact.get("pid1_systemd"), bool):
        return fact["pid1_systemd"]
    booted = _obj(facts.get("host.systemd")).get("value")
    return booted if isinstance(booted, bool) else True


def commands_for(facts: Any) -> ServiceCommands:
    """The commands for the box a snapshot describes: `facts` is a Snapshot or its facts dict.

    The `service.manager` fact decides; a snapshot without it (an older doctor's) falls back to
    the manifest's `service_manager`, then to systemd (what every deploy wrote before)."""
    facts = getattr(facts, "facts", facts)
    facts = facts if isinstance(facts, dict) else {}

    def val(key: str) -> dict:
        return _obj(_obj(facts.get(key)).get("value"))

    fact, manifest, service = val("service.manager"), val("manifest"), val("service")
    manager = _str(fact.get("manager")) or _str(manifest.get("service_manager"))
    unit = _str(service.get("unit")) or _str(fact.get("unit")) or UNIT
    return ServiceCommands(
        manager=manager if manager in MANAGERS else SYSTEMD,
        unit=unit,
        unit_path=_str(service.get("unit_path")) or UNIT_PATH,
        supervise=_str(fact.get("supervise")) or _str(manifest.get("supervise")) or SUPERVISE,
        log_file=_str(fact.get("log_file")) or _str(manifest.get("service_log")) or default_log_file(unit),
    )
