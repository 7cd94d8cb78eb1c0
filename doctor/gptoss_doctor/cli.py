"""gptoss-doctor: diagnose a gpt-oss / vLLM box.

    gptoss-doctor [--venv PATH] [--json] [--deep] [--only IDS]   collect, check, print findings
    gptoss-doctor collect [--venv PATH] [--deep]                  the snapshot as JSON on stdout
    gptoss-doctor check --from box.json [--only IDS] [--json]     judge a snapshot taken elsewhere
    gptoss-doctor logs [FILE...] (- for stdin) [--json]           match vLLM logs against known failures
                                                                  (no FILE: the deployed service's own log)
    gptoss-doctor explain ID                                      what a check or log signature means
    gptoss-doctor list-checks [--json]

Exit 0: no error finding; 1: an error finding; 2: bad invocation (one line on stderr).
Heavy modules (the checks, the knowledge) are imported only by the commands that use them; text
output is plain ANSI (no rich import), coloured on a terminal unless NO_COLOR, or with FORCE_COLOR.
"""

from __future__ import annotations

import argparse
import json
import io
import math
import os
import sys
import time
from typing import Sequence

from . import __version__
from .report import DoctorError, ExitStatus, public_links

PROG = "gptoss-doctor"


class UsageError(DoctorError):
    """argparse's complaint, as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage block and exit; we want one line
        raise UsageError(f"{message} (see `{PROG} --help`)")


EPILOG = """examples:
  gptoss-doctor                                  diagnose this box (the service's venv, or VIRTUAL_ENV)
  gptoss-doctor --venv /opt/gptoss/current --deep
  gptoss-doctor collect > box.json               then, anywhere: gptoss-doctor check --from box.json
  gptoss-doctor logs                             the deployed service's log: /var/log/gptoss/gptoss-vllm.log
                                                 under gptoss-supervise, `journalctl -u gptoss-vllm -b` under systemd
  journalctl -u gptoss-vllm --no-pager | gptoss-doctor logs -
  gptoss-doctor explain duplicate-triton

exit status: 0 no error finding, 1 an error finding, 2 bad invocation"""


def _common(p: argparse.ArgumentParser, sub: bool) -> None:
    # On subcommands the defaults are SUPPRESS so that `gptoss-doctor --json collect` keeps --json.
    d = (lambda v: argparse.SUPPRESS) if sub else (lambda v: v)
    p.add_argument("--json", action="store_true", default=d(False), help="print one JSON object on stdout")
    p.add_argument("--venv", metavar="PATH", default=d(None), help="the venv to inspect (default: VIRTUAL_ENV, else the service's)")


def seconds(text: str) -> float:
    """--deep-timeout: a finite number of seconds above 0 (argparse turns the error into one line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0, e.g. 180")
    return value


def _diagnose_opts(p: argparse.ArgumentParser, sub: bool) -> None:
    d = (lambda v: argparse.SUPPRESS) if sub else (lambda v: v)
    p.add_argument("--deep", action="store_true", default=d(False), help="also import torch, init CUDA, run a matmul and a Triton kernel (child process)")
    p.add_argument("--deep-timeout", metavar="SECONDS", type=seconds, default=d(180.0), help="time limit of --deep (default 180)")
    p.add_argument("--only", metavar="IDS", default=d(None), help="comma-separated check ids or categories")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Diagnose a gpt-oss / vLLM box: stable finding ids, exact fixes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common(parser, sub=False)
    _diagnose_opts(parser, sub=False)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = subs.add_parser("collect", help="print the box snapshot as JSON")
    _common(p, sub=True)
    p.add_argument("--deep", action="store_true", default=argparse.SUPPRESS)
    p.add_argument("--deep-timeout", metavar="SECONDS", type=seconds, default=argparse.SUPPRESS)

    p = subs.add_parser("check", help="judge a snapshot file (from `collect`)")
    _common(p, sub=True)
    p.add_argument("--from", dest="from_file", metavar="FILE", required=True, help="snapshot JSON, - for stdin")
    p.add_argument("--only", metavar="IDS", default=argparse.SUPPRESS)

    p = subs.add_parser("logs", help="match vLLM logs against known failures")
    _common(p, sub=True)
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="log files, - for stdin; none: the deployed service's log (gptoss-supervise's log file, "
                   "or `journalctl -u gptoss-vllm -b --no-pager` where systemd runs it)")

    p = subs.add_parser("explain", help="explain a check or log-signature id")
    _common(p, sub=True)
    p.add_argument("id", metavar="ID")

    p = subs.add_parser("list-checks", help="list the checks")
    _common(p, sub=True)
    return parser


# -- commands --------------------------------------------------------------------------------------


def _only(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    ids = [w.strip() for w in raw.split(",") if w.strip()]
    if not ids:
        raise UsageError(f"--only {raw!r} names no check id; `{PROG} list-checks` shows them")
    return ids


def _collect(args):
    from .collect import VenvError, collect  # noqa: PLC0415

    try:
        return collect(args.box, venv_path=args.venv, deep=args.deep, deep_timeout_s=args.deep_timeout)
    except VenvError as e:
        raise DoctorError(str(e)) from None


def _emit(report: dict, as_json: bool, title: str = PROG) -> int:
    if as_json:
        from .report import to_json  # noqa: PLC0415

        sys.stdout.write(to_json(report) + "\n")
    else:
        from .render import render_report  # noqa: PLC0415

        render_report(report, title=title)
    return report["exit_code"]


def cmd_diagnose(args, started: float) -> int:
    from .report import build_report, diagnose  # noqa: PLC0415

    only = _only(args.only)
    snap = _collect(args)
    findings, statuses = diagnose(snap, only)
    report = build_report(findings, snap.facts, statuses, snap.data.get("host"), round(time.perf_counter() - started, 3))
    return _emit(report, args.json)


def cmd_collect(args, started: float) -> int:
    snap = _collect(args)
    sys.stdout.write(snap.to_json() + "\n")
    return 0


def read_stdin(what: str) -> str:
    """All of stdin as text, or one line naming the problem when there is no stdin to read
    (`<&-`, a service without one). `what` names the argument: "--from -", "log file -"."""
    stream = sys.stdin
    try:
        if stream is None or stream.closed:
            raise OSError("closed")
        raw = getattr(stream, "buffer", None)  # absent when stdin is replaced by a text stream
        if raw is None:
            return stream.read()
        # newline="": keep a lone \r inside its line (progress bars redraw with it), so the
        # scanner numbers lines the way `grep -n` does.
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="").read()
    except (OSError, ValueError) as e:  # ValueError: I/O operation on a closed file
        raise DoctorError(f"{what}: stdin is closed or unreadable ({getattr(e, 'strerror', None) or e}); "
                          "pipe the input in, or give a file path") from None


def _read_input(path: str, what: str) -> str:
    if path == "-":
        return read_stdin(f"{what} -")
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            return f.read()
    except FileNotFoundError:
        raise DoctorError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise DoctorError(f"{what} {path}: is a directory, expected a file") from None
    except OSError as e:
        raise DoctorError(f"{what} {path}: cannot read ({e.strerror or e})") from None


def cmd_check(args, started: float) -> int:
    from .report import build_report, diagnose  # noqa: PLC0415
    from .snapshot import SnapshotError, load_snapshot  # noqa: PLC0415

    only = _only(args.only)
    where = "stdin" if args.from_file == "-" else args.from_file
    try:
        snap = load_snapshot(_read_input(args.from_file, "--from"), where)
    except SnapshotError as e:
        raise DoctorError(f"--from {e}") from None
    findings, statuses = diagnose(snap, only)
    report = build_report(findings, snap.facts, statuses, snap.data.get("host"), round(time.perf_counter() - started, 3))
    taken = snap.data.get("collected_at")
    report["snapshot"] = {"from": where, "collected_at": taken, "host": snap.data.get("host"),
                          "doctor_version": snap.data.get("doctor_version")}
    title = f"{PROG} check {where} (taken {taken or 'at an unknown time'}" + (
        f" by gptoss-doctor {snap.data['doctor_version']})" if snap.data.get("doctor_version") else ")")
    return _emit(report, args.json, title=title)


def cmd_logs(args, started: float) -> int:
    from .report import build_report  # noqa: PLC0415

    try:
        from .logscan import scan  # noqa: PLC0415
    except ImportError as e:
        raise DoctorError(f"the log scanner could not be loaded ({e}); reinstall gptoss-doctor") from None
    if args.files.count("-") > 1:
        raise UsageError("`-` (stdin) can be given once")
    env = _box(args)
    manager = _manager_fact(env)
    if args.files:
        # all opened first: a missing file fails before output; each is then read as a stream
        sources = [("stdin" if f == "-" else f, _open_log(f)) for f in args.files]
    else:
        sources = [service_log(env, manager)]
    # the fixes name this box's way to restart and read the service
    manager_name = (manager.get("value") or {}).get("manager") or "systemd"
    findings = []
    try:
        for name, source in sources:
            for finding in _scan(scan, source, manager_name):
                finding.evidence = {"file": name, **finding.evidence}
                findings.append(finding)
    finally:
        for _, source in sources:
            if hasattr(source, "close") and source is not getattr(sys.stdin, "buffer", None) and source is not sys.stdin:
                source.close()
    judged = _judge_deployed_box(env, args)
    if judged is not None:
        # a deployed host: each log failure the box explains is folded into the box finding that
        # names the cause (the tie table is the signatures' box_causes); the box's other findings
        # are counted in one info finding: `gptoss-doctor` shows them
        from .logscan import box_summary, tie_to_box  # noqa: PLC0415

        findings = tie_to_box(findings, judged, keep_unrelated=False)
        summary = box_summary(judged, findings)
        if summary is not None:
            findings.append(summary)
    report = build_report(findings, {}, {}, None, round(time.perf_counter() - started, 3))
    # reading the service's own log: say which, since no FILE named it
    return _emit(report, args.json, title=f"{PROG} logs" + ("" if args.files else f" ({sources[0][0]})"))


def _judge_deployed_box(env, args):
    """The box findings of this host where the deploy left a manifest, else None. A box that
    cannot be judged (no venv) leaves the logs' findings alone."""
    from .collect.service import MANIFEST  # noqa: PLC0415

    if not env.exists(MANIFEST):
        return None
    from .collect import VenvError, collect  # noqa: PLC0415
    from .report import diagnose  # noqa: PLC0415

    try:
        snap = collect(env, venv_path=args.venv)
    except VenvError:
        return None
    findings, _statuses = diagnose(snap)
    return findings


def _open_log(path: str):
    """A log as a binary stream: the scanner reads it in blocks, splitting on b"\n" only."""
    if path == "-":
        if sys.stdin is None or sys.stdin.closed:  # `<&-`, or a service started without stdin
            raise DoctorError("log file -: stdin is closed or unreadable; pipe the input in, or give a file path")
        return getattr(sys.stdin, "buffer", None) or sys.stdin  # a text stream when stdin is replaced
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by cmd_logs once scanned
    except FileNotFoundError:
        raise DoctorError(f"log file {path}: no such file") from None
    except IsADirectoryError:
        raise DoctorError(f"log file {path}: is a directory, expected a file") from None
    except OSError as e:
        raise DoctorError(f"log file {path}: cannot read ({e.strerror or e})") from None
    return f


def _box(args):
    from .collect.env import Env  # noqa: PLC0415

    return args.box or Env()


def _manager_fact(env) -> dict:
    """The service.manager fact of this box (a few file reads, `systemctl is-active` at most)."""
    from .collect.service import service_manager  # noqa: PLC0415

    try:
        return service_manager(env)["service.manager"]
    except Exception as e:  # noqa: BLE001 - like any collector: a failed fact, the default commands
        return {"failed": f"{type(e).__name__}: {e}"}


def service_log(env, manager: dict) -> tuple[str, object]:
    """(where it came from, the log: an open binary file or the text) of the deployed service: gptoss-supervise's log file, or
    this boot's journal of the unit where systemd runs it. One line naming the problem otherwise."""
    from .collect.env import CommandError  # noqa: PLC0415
    from .service_manager import commands_for  # noqa: PLC0415

    if "value" not in manager:
        why = manager.get("absent") or manager.get("failed") or "not collected"
        raise DoctorError(f"logs: no FILE given and no deployed service to read the log of ({why}); "
                          "give log files, or - for stdin")
    sc = commands_for({"service.manager": manager})
    argv = sc.log_argv()
    if argv is None:
        try:
            return sc.log_file, open(env.path(sc.log_file), "rb")  # noqa: SIM115 - closed by cmd_logs
        except FileNotFoundError:
            raise DoctorError(f"logs: the service's log {sc.log_file} does not exist: has {sc.supervise} ever "
                              f"started it? (`{sc.status()}`); or give a log file") from None
        except OSError as e:
            raise DoctorError(f"logs: cannot read the service's log {sc.log_file} ({e.strerror or e}); "
                              "run as root or a member of the gptoss group, or give a log file") from None
    shown = " ".join(argv)
    try:
        done = env.run(argv, timeout_s=60)
    except CommandError as e:
        raise DoctorError(f"logs: {e}; give a log file, or pipe the journal: `{shown} | {PROG} logs -`") from None
    if done.returncode != 0:
        raise DoctorError(f"logs: `{shown}` exited {done.returncode}: {done.tail(200) or 'no output'}")
    if "not seeing messages" in done.stderr and not done.stdout.replace("-- No entries --", "").strip():
        # journalctl hides the unit's lines from a user outside systemd-journal/adm and still exits 0
        raise DoctorError(f"logs: `{shown}` shows nothing to this user: run as root or a member of systemd-journal")
    return shown, done.stdout


def _scan(scan, source, manager: str = "systemd"):
    try:
        return scan(source, manager=manager)  # the scanner splits as grep -n does
    except OSError as e:  # a read error mid-file (EIO, a directory passed as /dev/fd)
        raise DoctorError(f"logs: cannot read the log ({e.strerror or e})") from None
    except ValueError as e:  # the signature table failed validation: the doctor's own data is broken
        raise DoctorError(f"the doctor's log signatures are invalid: {e}") from None


def explain_entry(ident: str) -> dict:
    """What `explain` shows for a check id or a log-signature id."""
    try:
        from . import checks  # noqa: F401,PLC0415 - registers every check
        from .findings import REGISTRY  # noqa: PLC0415
    except ImportError as e:
        raise DoctorError(f"the doctor's checks could not be loaded ({e}); reinstall gptoss-doctor") from None
    spec = REGISTRY.get(ident)
    if spec:
        return {
            "id": spec.id, "kind": "check", "severity": spec.severity, "title": spec.title,
            "category": spec.category, "text": spec.explain, "needs": list(spec.needs), "links": public_links(spec.links),
        }
    for sig in _signatures():
        if sig.id == ident:
            return {
                "id": sig.id, "kind": "log signature", "severity": sig.severity, "title": sig.title,
                "text": sig.fix, "commands": list(sig.commands), "links": public_links(sig.links),
                **({"supervisor_commands": list(sig.supervisor_commands)} if sig.supervisor_commands else {}),
                "patterns": [p.pattern for p in sig.patterns],
            }
    raise DoctorError(f"unknown id {ident!r}: `{PROG} list-checks` shows the check ids")


def cmd_explain(args, started: float) -> int:
    entry = explain_entry(args.id)
    if args.json:
        sys.stdout.write(json.dumps(entry, indent=2) + "\n")
    else:
        from .render import render_explain  # noqa: PLC0415

        render_explain(entry)
    return 0


def cmd_list_checks(args, started: float) -> int:
    try:
        from .checks import select  # noqa: PLC0415
    except ImportError as e:
        raise DoctorError(f"the doctor's checks could not be loaded ({e}); reinstall gptoss-doctor") from None
    specs = select(None)
    signatures = _signatures()
    if args.json:
        rows = [{"id": s.id, "severity": s.severity, "category": s.category, "title": s.title, "needs": list(s.needs)} for s in specs]
        sigs = [{"id": s.id, "severity": s.severity, "title": s.title} for s in signatures]
        sys.stdout.write(json.dumps({"checks": rows, "log_signatures": sigs}, indent=2) + "\n")
    else:
        from .render import render_check_list  # noqa: PLC0415

        render_check_list(specs, signatures=signatures)
    return 0


def _signatures() -> tuple:
    """The log-signature table (`gptoss-doctor logs` matches it); one line when it is broken."""
    try:
        from .logscan import load_signatures  # noqa: PLC0415

        return load_signatures()
    except (ImportError, ValueError) as e:
        raise DoctorError(f"the doctor's log signatures could not be loaded ({e}); reinstall gptoss-doctor") from None


COMMANDS = {
    None: cmd_diagnose,
    "collect": cmd_collect,
    "check": cmd_check,
    "logs": cmd_logs,
    "explain": cmd_explain,
    "list-checks": cmd_list_checks,
}


def main(argv: Sequence[str] | None = None, env=None) -> int:
    """The command line. `env` (a collect.Env) points the collectors at another root: tests use it."""
    started = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
        args.box = env
        return COMMANDS[args.command](args, started)
    except DoctorError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return int(ExitStatus.USAGE)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (`| head`): not an error of ours; keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - a doctor bug still gets one line, never a traceback
        if os.environ.get("GPTOSS_DOCTOR_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (GPTOSS_DOCTOR_DEBUG=1 shows the traceback)", file=sys.stderr)
        return int(ExitStatus.USAGE)


if __name__ == "__main__":
    sys.exit(main())
