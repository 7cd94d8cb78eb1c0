"""The report: findings + facts + check statuses, its exit code, and the JSON contract.

    {"schema": "gptoss-doctor/report@1", "exit_code": 0 | 1, "findings": [...], "facts": {...},
     "checks": {id: status}, "not_checked": [{"what", "why", "do", "checks": [id]}],
     "host": str, "duration_s": float, "doctor_version": str}

`not_checked` says which parts of the box could not be judged (no vLLM venv, no GPU, no service)
and what to do, so an exit 0 with those gaps never reads as a clean bill.

Exit codes are the machine contract: 0 no error finding, 1 an error finding, 2 bad invocation.
"""

from __future__ import annotations

import json
import re
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


def _why(facts: dict, key: str) -> str:
    f = facts.get(key) or {}
    return str(f.get("failed") and f"could not be collected: {f['failed']}" or f.get("absent") or "not collected")


def _valued(facts: dict, key: str):
    f = facts.get(key) or {}
    return f.get("value") if isinstance(f, dict) else None


# What a box must show for the checks that matter to run: (what, fact keys whose skip it
# explains, words of a check's own "does not apply" reason that point at it). Pure data.
GAPS = (
    ("the vLLM venv", ("venv", "venv.distributions", "venv.leftovers", "torch.build", "vllm.install",
                       "vllm.env_vars", "vllm.attention_backends"),
     ("vLLM is not installed", "no vLLM installed", "no manifest and no vLLM")),
    ("the GPUs", ("nvidia.gpus", "nvidia.driver", "nvidia.cuda_driver_max", "nvidia.compute_apps", "rocm.gpus"),
     ("no GPU", "no NVIDIA GPU")),
    ("the deployed service", ("service", "service.serve", "service.manager", "service.port", "service.access",
                              "model.disk", "manifest"),
     ("no deployed service", "no manifest")),
)


def _gap_advice(what: str, facts: dict) -> tuple[str, str] | None:
    """(why it could not be judged, what to do) for one part of the box, or None when it was seen."""
    if what == "the vLLM venv":
        venv = _valued(facts, "venv")
        if not isinstance(venv, dict):
            return f"no vLLM venv found ({_why(facts, 'venv')})", "pass --venv PATH (the venv vLLM runs from)"
        if not isinstance(_valued(facts, "vllm.install"), dict):
            return (f"vLLM is not installed in {venv.get('path')} ({_why(facts, 'vllm.install')})",
                    "pass --venv PATH with the venv vLLM serves from")
        if not isinstance(_valued(facts, "torch.build"), dict):
            return f"torch is not readable in {venv.get('path')} ({_why(facts, 'torch.build')})", "install the stack into it"
        return None
    if what == "the GPUs":
        if _valued(facts, "nvidia.gpus") or _valued(facts, "rocm.gpus"):
            return None
        return (f"no GPU seen ({_why(facts, 'nvidia.gpus')})",
                "run the doctor on the GPU box (nvidia-smi or amd-smi must list the GPUs there)")
    if what == "the deployed service":
        if isinstance(_valued(facts, "service"), dict):
            return None
        return (f"no deployed service ({_why(facts, 'service')})",
                "run the doctor on the serving host, or deploy with deploys/gptoss.py")
    return None


def not_checked(facts: dict, checks: dict[str, str]) -> list[dict]:
    """The parts of the box that could not be judged, each with the checks that were skipped for
    it and what to do. Empty when every part was seen (a `check --from` of a partial snapshot,
    a box with no GPU or no venv: each says so)."""
    if not facts:
        return []
    out = []
    for what, keys, words in GAPS:
        advice = _gap_advice(what, facts)
        if advice is None:
            continue
        skipped = [cid for cid, status in checks.items() if status.startswith("skipped:") and (
            status[len("skipped: "):].split(" ", 1)[0] in keys or any(w in status for w in words))]
        out.append({"what": what, "why": advice[0], "do": advice[1], "checks": skipped})
    return out


_URL = re.compile(r"https?://[^\s;,)\]]+")
_PROJECT_FILE = re.compile(r"^(?:docs|deploys|doctor|inventories|testbed|tests|bench)/[\w./#-]+$")


def public_links(links) -> list[str]:
    """The links a user is shown: public URLs and this project's own files. A knowledge row's
    source may be prose that also names a file of the machine it was written on: only its URLs
    are kept, never a path of that machine."""
    out: list[str] = []
    for link in links or []:
        text = str(link).strip()
        if _PROJECT_FILE.match(text):
            out.append(text)
        else:
            out += [u.rstrip(".") for u in _URL.findall(text)]
    return list(dict.fromkeys(out))


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
        "findings": [redact_tree({**f.to_dict(), "links": public_links(f.links)}) for f in ordered],
        "facts": redact_tree(facts),
        "checks": dict(checks),
        "not_checked": redact_tree(not_checked(facts, checks)),
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
