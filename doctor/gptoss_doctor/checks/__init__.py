"""The doctor's checks: pure functions of a snapshot and the knowledge.

Every module below registers its checks with `@check` when imported; importing this package
imports them all, so `findings.REGISTRY` is complete. `run_checks` runs them and reports a
status per check id:

    "ok"                       ran, found nothing
    "error" | "warning" | "info"   the worst severity it reported
    "skipped: <why>"           a needed fact has no value, or the check does not apply here
    "crashed: <error>"         the check raised (a bug in the doctor; counted as a warning)
"""

from __future__ import annotations

from typing import Iterable

from ..findings import REGISTRY, SEVERITIES, CheckSpec, Finding
from ..snapshot import FACT_KEYS, Snapshot

# Imported for their @check side effect; the order here is the order checks run and list.
from . import advisories, cuda, deep, env, exposure, gpu, live, offline, packages, security, serve, service  # noqa: F401,E402
from ._util import NotApplicable

__all__ = ["run_checks", "select", "UnknownCheckError", "NotApplicable"]


class UnknownCheckError(ValueError):
    """`only` named something that is neither a check id nor a category."""


def select(only: Iterable[str] | None = None) -> list[CheckSpec]:
    """The checks to run: all, or those whose id or category is in `only`."""
    specs = list(REGISTRY.values())
    if only is None:
        return specs
    wanted = [w.strip() for w in only if w and w.strip()]
    known = {s.id for s in specs} | {s.category for s in specs}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UnknownCheckError(
            f"unknown check id or category {unknown[0]!r}; "
            "`gptoss-doctor list-checks` shows the valid ones"
        )
    return [s for s in specs if s.id in wanted or s.category in wanted]


def _shape(key: str) -> type | None:
    """The JSON type FACT_KEYS documents for a fact's value (an object, a list), else None."""
    doc = FACT_KEYS.get(key, "").lstrip()
    return dict if doc.startswith("{") else list if doc.startswith("[") else None


def _missing_need(snap: Snapshot, spec: CheckSpec) -> str | None:
    """Why a needed fact has no usable value, or None when every need is valued."""
    for key in spec.needs:
        fact = snap.fact(key)
        if "value" in fact:
            want = _shape(key)
            if want is not None and not isinstance(fact["value"], want):
                return f"{key} is a {type(fact['value']).__name__}, not the {want.__name__} the snapshot format says"
            continue
        if "failed" in fact:
            return f"{key} could not be collected ({fact['failed']})"
        return f"{key} absent ({fact.get('absent', 'not collected')})"
    return None


def _status(findings: list[Finding]) -> str:
    for severity in SEVERITIES:  # ordered worst first
        if any(f.severity == severity for f in findings):
            return severity
    return "ok"


def run_one(snap: Snapshot, kb, spec: CheckSpec) -> tuple[list[Finding], str]:
    why = _missing_need(snap, spec)
    if why:
        return [], f"skipped: {why}"
    try:
        found = list(spec.fn(snap, kb))
    except NotApplicable as e:
        return [], f"skipped: {e}"
    except Exception as e:  # a broken check must not stop the others
        return [], f"crashed: {type(e).__name__}: {e}"
    return found, _status(found)


def run_checks(
    snap: Snapshot, kb, only: Iterable[str] | None = None
) -> tuple[list[Finding], dict[str, str]]:
    """Run the selected checks; return every finding and a status per check id."""
    findings: list[Finding] = []
    statuses: dict[str, str] = {}
    for spec in select(only):
        found, status = run_one(snap, kb, spec)
        findings.extend(found)
        statuses[spec.id] = status
    return findings, statuses
