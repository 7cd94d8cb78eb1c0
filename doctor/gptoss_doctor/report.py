"""The report: findings + facts + check statuses, its exit code, and the JSON contract.

    {"schema": "gptoss-doctor/report@1", "exit_code": 0 | 1, "findings": [...], "facts": {...},
     "checks": {id: status}, "host": str, "duration_s": float, "doctor_version": str}

Exit codes are the machine contract: 0 no error finding, 1 an error finding, 2 bad invocation.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Iterable

from . import __version__
from .findings import SEVERITIES, Finding
from .redact import redact_tree

REPORT_SCHEMA = "gptoss-doctor/report@1"


class ExitStatus(IntEnum):
    OK = 0  # no error finding
    FINDINGS = 1  # at least one error finding
    USAGE = 2  # bad invocation, or the doctor could not run (one line on stderr)


class DoctorError(Exception):
    """A bad invocation or an unusable input: the message is the one line the user sees (exit 2)."""


def exit_code(findings: Iterable[Finding | dict]) -> int:
    severities = {f["severity"] if isinstance(f, dict) else f.severity for f in findings}
    return int(ExitStatus.FINDINGS if "error" in severities else ExitStatus.OK)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first; the order the checks reported them in within a severity."""
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: rank[f.severity])


def build_report(
    findings: Iterable[Finding],
    facts: dict,
    checks: dict[str, str],
    host: str | None = None,
    duration_s: float | None = None,
) -> dict:
    ordered = sort_findings(findings)
    return {
        "schema": REPORT_SCHEMA,
        "exit_code": exit_code(ordered),
        # findings quote facts and log lines: redact them; check ids are not secrets
        # (`api-key-in-argv` names a key, it holds none), so `checks` is left as it is
        "findings": [redact_tree(f.to_dict()) for f in ordered],
        "facts": redact_tree(facts),
        "checks": dict(checks),
        "host": host,
        "duration_s": duration_s,
        "doctor_version": __version__,
    }


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=str)


def diagnose(snap, only: list[str] | None = None) -> tuple[list[Finding], dict[str, str]]:
    """Run the checks over a snapshot. Imported here, not at the top, so `collect` and `logs`
    never pay for the knowledge files and the checks."""
    try:
        from .checks import UnknownCheckError, run_checks  # noqa: PLC0415
        from .knowledge import KnowledgeError, load  # noqa: PLC0415
    except ImportError as e:
        raise DoctorError(f"the doctor's checks could not be loaded ({e}); reinstall gptoss-doctor") from None
    from .checks._util import knowledge_for  # noqa: PLC0415

    try:
        # the host's own stack files, as the snapshot recorded them, join the shipped knowledge
        # (a file that does not load is left out and reported by `site-stack-file-invalid`)
        kb, _ = knowledge_for(snap, load)
    except KnowledgeError as e:
        raise DoctorError(f"the doctor's knowledge files are invalid: {e}") from None
    try:
        return run_checks(snap, kb, only=only)
    except UnknownCheckError as e:
        raise DoctorError(f"--only: {e}") from None
