"""Findings and the check registry.

A check is a small pure function `(Snapshot, Knowledge) -> Iterable[Finding]`, registered with
`@check(id, ...)`. Ids are stable kebab-case: users grep for them, `explain ID` documents them,
and the deploy gate reports them.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

SEVERITIES = ("error", "warning", "info")
_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass
class Fix:
    text: str
    commands: list[str] = field(default_factory=list)


@dataclass
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
        d = asdict(self)
        if not d["lines"]:
            d.pop("lines")
        return d


CheckFn = Callable[..., Iterable[Finding]]


@dataclass
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
        REGISTRY[id] = CheckSpec(
            id=id,
            severity=severity,
            title=title,
            category=category,
            needs=tuple(needs),
            fn=fn,
            explain=inspect.cleandoc(fn.__doc__ or ""),
            links=list(links),
        )
        return fn

    return register
