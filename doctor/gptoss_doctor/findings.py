"""Findings and the check registry.

A check is a small pure function `(Snapshot, Knowledge) -> Iterable[Finding]`, registered with
`@check(id, ...)`. Ids are stable kebab-case: users grep for them, `explain ID` documents them,
and the deploy gate reports them. The registry owns a check's id, worst severity and links: a
finding made inside a check with `found(title, evidence, fix)` takes them from there (a milder
severity may be given; a worse one is a bug and raises).
"""

from __future__ import annotations

import contextvars
import re
from typing import Any, Callable, Iterable

from .records import as_dict, field, record

SEVERITIES = ("error", "warning", "info")
_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@record
class Fix:
    text: str
    commands: list[str] = field(default_factory=list)


@record
class Finding:
    id: str
    severity: str
    title: str
    evidence: dict[str, Any]
    fix: Fix
    links: list[str] = field(default_factory=list)
    # For log findings: [{"line": n, "text": str}] of the matched lines and their context.
    lines: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"finding {self.id}: severity {self.severity!r} not in {SEVERITIES}")

    def to_dict(self) -> dict:
        d = as_dict(self)
        if not d["lines"]:
            d.pop("lines")
        return d


def cleandoc(doc: str) -> str:
    """inspect.cleandoc's result (first line stripped, the rest dedented) without importing
    inspect, which costs more than every check module together."""
    lines = doc.expandtabs().split("\n")
    rest = [ln for ln in lines[1:] if ln.strip()]
    margin = min((len(ln) - len(ln.lstrip()) for ln in rest), default=0)
    out = [lines[0].strip()] + [ln[margin:].rstrip() for ln in lines[1:]]
    while out and not out[-1]:
        out.pop()
    while out and not out[0]:
        out.pop(0)
    return "\n".join(out)


CheckFn = Callable[..., Iterable[Finding]]


@record
class CheckSpec:
    id: str
    severity: str  # the worst severity it can report
    title: str
    category: str
    needs: tuple[str, ...]
    fn: CheckFn
    explain: str  # long form for `gptoss-doctor explain ID`: the docstring
    links: list[str] = field(default_factory=list)


REGISTRY: dict[str, CheckSpec] = {}
_RUNNING: contextvars.ContextVar[CheckSpec] = contextvars.ContextVar("gptoss_doctor_running_check")


def found(title: str, evidence: dict[str, Any], fix: Fix, severity: str | None = None,
          links: Iterable[str] = ()) -> Finding:
    """A finding of the check that is running: its id, severity (or a milder one) and links
    come from the registry; `links` adds finding-specific ones after them."""
    try:
        spec = _RUNNING.get()
    except LookupError:
        raise RuntimeError("found() is called only inside a registered check") from None
    severity = severity or spec.severity
    if severity not in SEVERITIES or SEVERITIES.index(severity) < SEVERITIES.index(spec.severity):
        raise ValueError(f"check {spec.id}: finding severity {severity!r} is worse than the registered {spec.severity!r}")
    return Finding(spec.id, severity, title, evidence, fix, list(dict.fromkeys([*spec.links, *links])))


def check(
    id: str,
    *,
    severity: str,
    title: str,
    category: str,
    needs: Iterable[str] = (),
    links: Iterable[str] = (),
) -> Callable[[CheckFn], CheckFn]:
    """Register a check. It runs only when every fact in `needs` has a value."""
    if not _KEBAB.match(id):
        raise ValueError(f"check id {id!r} is not kebab-case")
    if severity not in SEVERITIES:
        raise ValueError(f"check {id}: severity {severity!r} not in {SEVERITIES}")

    def register(fn: CheckFn) -> CheckFn:
        if id in REGISTRY:
            raise ValueError(f"check id {id!r} registered twice")
        spec = CheckSpec(
            id=id,
            severity=severity,
            title=title,
            category=category,
            needs=tuple(needs),
            fn=fn,
            explain=cleandoc(fn.__doc__ or ""),
            links=list(links),
        )

        def run(snap, kb) -> list[Finding]:
            # the check's findings (found() inside it reads this spec) as a list, made while it
            # runs; one made with Finding(...) directly gets the same: the registry's id and
            # links first, and a severity no worse than the registered one
            token = _RUNNING.set(spec)
            try:
                out = list(fn(snap, kb))
            finally:
                _RUNNING.reset(token)
            for f in out:
                if SEVERITIES.index(f.severity) < SEVERITIES.index(spec.severity):
                    raise ValueError(f"check {spec.id}: finding severity {f.severity!r} is worse than the registered {spec.severity!r}")
                f.id = spec.id
                f.links = list(dict.fromkeys([*spec.links, *f.links]))
            return out

        spec.fn = run
        REGISTRY[id] = spec
        return fn

    return register
