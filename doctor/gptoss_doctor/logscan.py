"""Log triage: match vLLM logs of every era against an ordered table of known failures.

    lines ──► parse_line (strip prefixes once) ──► match (first signature that fits claims the line)
          ──► judge (one finding per id, root cause beats downstream noise) ──► [Finding]

The table is data: knowledge/signatures.toml, validated by `load_signatures()`. Order matters:
a line belongs to the first signature in the file whose pattern matches it, so the specific
signature sits above the generic one (Flutter's gradle_errors model). A signature marked
`downstream` (the engine died, "see root cause above") is reported only when no root-cause
error was found; otherwise it is folded into the root cause's evidence.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from .findings import SEVERITIES, Finding, Fix
from .redact import MASK, redact_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10 hosts
    import tomli as tomllib

SIGNATURES_PATH = Path(__file__).resolve().parent / "knowledge" / "signatures.toml"
_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

CONTEXT_BEFORE = 2
CONTEXT_AFTER = 1
MAX_SHOWN_MATCHES = 5  # per finding: every line number goes to evidence, only the first few to `lines`
MAX_LINE_CHARS = 600
ROOT_CAUSE_LOOKBACK = 400  # lines searched back for the exception behind a downstream message


class SignatureError(ValueError):
    """signatures.toml is wrong; the message names the file, the row and the field."""


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    id: str
    severity: str
    title: str
    patterns: tuple[re.Pattern, ...]
    fix: str
    commands: tuple[str, ...]
    links: tuple[str, ...]
    source: str
    # Lines that would match but are known to be something else (a near miss).
    unless: tuple[re.Pattern, ...] = ()
    # An effect of an earlier failure: shown only when no root-cause error was found.
    downstream: bool = False
    # Also point at the exception line of the traceback that precedes the match.
    root_cause_before: bool = False
    # Ids of failures that cause this one: when one of them is found, this folds into it.
    explained_by: tuple[str, ...] = ()
    # The commands where gptoss-supervise runs the service (no systemd as PID 1).
    supervisor_commands: tuple[str, ...] = ()

    def commands_for(self, manager: str) -> tuple[str, ...]:
        return self.supervisor_commands if manager == "supervisor" and self.supervisor_commands else self.commands

    def match(self, message: str) -> dict[str, str] | None:
        """None when no pattern matches; else the named groups of every pattern that matches."""
        groups: dict[str, str] | None = None
        for pattern in self.patterns:
            m = pattern.search(message)
            if m:
                groups = groups or {}
                for name, value in m.groupdict().items():
                    if value is not None:
                        groups.setdefault(name, value)
        if groups is not None and any(u.search(message) for u in self.unless):
            return None
        return groups


_FIELDS = {
    "id": str,
    "severity": str,
    "title": str,
    "patterns": list,
    "fix": str,
    "commands": list,
    "links": list,
    "source": str,
    "unless": list,
    "downstream": bool,
    "root_cause_before": bool,
    "explained_by": list,
    "supervisor_commands": list,
}
# Commands only systemd answers: a row using them must say what to run without systemd.
_SYSTEMD_ONLY = re.compile(r"\b(?:systemctl|journalctl)\b")
_REQUIRED = ("id", "severity", "title", "patterns", "fix", "source")


def _compile(pattern: object, where: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise SignatureError(f"{where}: a pattern must be a non-empty string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise SignatureError(f"{where}: bad regex {pattern!r}: {e}") from None


def _signature_from_row(row: object, where: str) -> Signature:
    if not isinstance(row, dict):
        raise SignatureError(f"{where}: expected a table, got {type(row).__name__}")
    for key in row:
        if key not in _FIELDS:
            raise SignatureError(f"{where}: unknown field {key!r} (fields: {', '.join(_FIELDS)})")
    for key in _REQUIRED:
        if key not in row or row[key] in ("", []):
            raise SignatureError(f"{where}: missing {key!r}")
    for key, value in row.items():
        if not isinstance(value, _FIELDS[key]):
            raise SignatureError(f"{where}: {key} must be {_FIELDS[key].__name__}, got {type(value).__name__}")
    where = f"{where} ({row['id']})"
    if not _KEBAB.match(row["id"]):
        raise SignatureError(f"{where}: id is not kebab-case")
    if row["severity"] not in SEVERITIES:
        raise SignatureError(f"{where}: severity {row['severity']!r} not in {SEVERITIES}")
    for key in ("commands", "links", "explained_by", "supervisor_commands"):
        for item in row.get(key, []):
            if not isinstance(item, str) or not item:
                raise SignatureError(f"{where}: {key} holds {item!r}, expected non-empty strings")
    if any(_SYSTEMD_ONLY.search(c) for c in row.get("commands", [])) and not row.get("supervisor_commands"):
        raise SignatureError(f"{where}: commands use systemctl/journalctl: add supervisor_commands (hosts without systemd)")
    for c in row.get("supervisor_commands", []):
        if _SYSTEMD_ONLY.search(c):
            raise SignatureError(f"{where}: supervisor_commands holds {c!r}: no systemd runs where these are shown")
    patterns = tuple(_compile(p, f"{where}: patterns") for p in row["patterns"])
    unless = tuple(_compile(p, f"{where}: unless") for p in row.get("unless", []))
    return Signature(
        id=row["id"],
        severity=row["severity"],
        title=row["title"],
        patterns=patterns,
        fix=row["fix"].strip(),
        commands=tuple(row.get("commands", [])),
        links=tuple(row.get("links", [])),
        source=row["source"],
        unless=unless,
        downstream=row.get("downstream", False),
        root_cause_before=row.get("root_cause_before", False),
        explained_by=tuple(row.get("explained_by", [])),
        supervisor_commands=tuple(row.get("supervisor_commands", [])),
    )


def parse_signatures(text: str, where: str) -> tuple[Signature, ...]:
    """Validate a signatures TOML text; `where` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SignatureError(f"{where}: not valid TOML: {e}") from None
    rows = data.get("signature")
    if not isinstance(rows, list) or not rows:
        raise SignatureError(f"{where}: no [[signature]] rows")
    signatures: list[Signature] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, start=1):
        sig = _signature_from_row(row, f"{where}: signature #{n}")
        if sig.id in seen:
            raise SignatureError(f"{where}: signature #{n}: duplicate id {sig.id!r} (first at #{seen[sig.id]})")
        seen[sig.id] = n
        signatures.append(sig)
    for n, sig in enumerate(signatures, start=1):
        for other in sig.explained_by:
            if other not in seen or other == sig.id:
                raise SignatureError(f"{where}: signature #{n} ({sig.id}): explained_by names {other!r}, not another id here")
    return tuple(signatures)


@lru_cache(maxsize=None)
def load_signatures(path: Path | str = SIGNATURES_PATH) -> tuple[Signature, ...]:
    """The ordered table, validated; raises SignatureError naming the file and row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SignatureError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_signatures(text, str(path))


# --------------------------------------------------------------------------------------------
# Lines: strip whatever the runtime put in front of vLLM's message
# --------------------------------------------------------------------------------------------

# ESC-based colour codes, and the same codes pasted without their ESC byte.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\[(?:\d{1,3};)*\d{1,3}m")
_LEVELS = "DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL"

# Each prefix is stripped at most once, in this order (outermost wrapper first).
_PREFIXES: tuple[tuple[str, re.Pattern], ...] = (
    # a log copied out of a terminal UI (k9s, lazydocker): "│ ERROR ... │"
    ("frame", re.compile(r"^│ ?")),
    # journalctl -o short: "Nov 27 10:00:00 host vllm[123]: ", month names in the host's locale ("Okt", "авг", "6月")
    ("journal", re.compile(
        r"^(?:[^\W\d_]{3,5}\.?|\d{1,2}月) [ \d]?\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ [^\s:\[]+(?:\[\d+\])?: ")),
    # journalctl -o short-iso / syslog: "2025-11-27T10:00:00+0000 host vllm[123]: "
    ("journal", re.compile(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)? \S+ [^\s:\[]+(?:\[\d+\])?: ")),
    # journalctl -o short-monotonic, dmesg: "[12345.678901] host vllm[123]: ", "[ 1234.5678] "
    ("journal", re.compile(r"^\[\s*\d+\.\d+\] \S+ [^\s:\[]+(?:\[\d+\])?: ")),
    ("kernel", re.compile(r"^\[\s*\d+\.\d+\] ")),
    # containerd/CRI log files (/var/log/pods/...): "2025-08-05T10:11:12.123456789Z stderr F "
    ("cri", re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d) (?:stdout|stderr) [FP] ")),
    # docker compose: "vllm-1  | ", "gptoss_vllm_1 | "
    ("compose", re.compile(r"^[A-Za-z0-9][\w.-]*\s+\| ?")),
    # docker logs -t / kubectl --timestamps / many collectors: ISO timestamp first
    ("timestamp", re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\s+")),
    # "[2026-01-22 19:54:36] " and "[/bin/sh]: " from process supervisors
    ("timestamp", re.compile(r"^\[\d{4}-\d\d-\d\d[T ][\d:.,]+(?:Z|[+-]\d\d:?\d\d)?\]\s*")),
    ("supervisor", re.compile(r"^\[[^\]\s]+\]: ")),
    # kubectl logs --prefix: "[pod/vllm-0/vllm] "
    ("supervisor", re.compile(r"^\[pod/[^\]\s]+\] ")),
    # torch.distributed rank prefix
    ("rank", re.compile(r"^\[rank\d+\]:\s?")),
    # vLLM process prefix: "(VllmWorker TP0 pid=1234) ", "(EngineCore_DP0 pid=1) ", "(APIServer pid=1) "
    ("process", re.compile(r"^\((?:(?P<process>[A-Za-z][\w-]*(?: [\w=-]+)*?) )?pid=\d+(?:, ip=[\d.:a-f]+)?\)\s?")),
    # a child's output relayed by its parent: "(APIServer pid=1) (EngineCore_DP0 pid=68) ERROR ..."
    ("process", re.compile(r"^\((?:(?P<process>[A-Za-z][\w-]*(?: [\w=-]+)*?) )?pid=\d+(?:, ip=[\d.:a-f]+)?\)\s?")),
    # vLLM logger header, every era: "ERROR 08-05 10:11:12 [file.py:511] " / "INFO 02-16 18:30:09 file.py:190] "
    ("header", re.compile(
        rf"^(?P<level>{_LEVELS}) +\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)? +\[?[\w.<>-]+(?::\d+)?\] ?")),
    # vLLM's logger under a site's own format: "ERROR 56542 [async_llm_engine.py:64] " (level, pid, location)
    ("header", re.compile(rf"^(?P<level>{_LEVELS}) +\d+ \[[\w.<>-]+:\d+\] ?")),
    # uvicorn: "INFO:     Application startup complete."
    ("uvicorn", re.compile(rf"^(?P<level>{_LEVELS}):\s+")),
    # a traceback pasted with only the logger's location left: "[multiproc_executor.py:559] "
    ("location", re.compile(r"^\[[\w.<>-]+\.py:\d+\] ?")),
)


_PROCESS_PREFIX = next(p for kind, p in _PREFIXES if kind == "process")  # the first of the two
# What pasting leaves at a line's end: a terminal UI's right border, a carriage return shown as "^M".
_PASTE_TAIL = re.compile(r"\s*│\s*$|\^M$")


@dataclass(frozen=True)
class LogLine:
    number: int  # 1-based
    text: str  # the line as shown to the user: colour codes gone, trailing newline gone
    message: str  # the text with every known prefix stripped: what signatures match
    level: str | None  # DEBUG / INFO / WARNING / ERROR / CRITICAL when the prefix said so
    process: str | None  # "VllmWorker TP0", "EngineCore_DP0", "APIServer", ...
    stripped: tuple[str, ...] = field(default=())  # kinds of prefix removed, outermost first


def _unwrap_docker_json(raw: str) -> str:
    """A line of docker's json-file log ({"log": "...\\n", "stream": ..., "time": ...}) holds the real line."""
    if raw.startswith('{"log":'):
        try:
            record = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(record, dict) and isinstance(record.get("log"), str):
            return record["log"]
    return raw


def _last_redraw(text: str) -> str:
    """ "(EngineCore pid=1) Capturing  1%\\rCapturing 100%" -> "(EngineCore pid=1) Capturing 100%" """
    first, *redraws = text.split("\r")
    last = next((r for r in reversed(redraws) if r.strip()), "")
    if not last:
        return first
    prefix = _PROCESS_PREFIX.match(first)
    return (prefix.group(0) if prefix and not _PROCESS_PREFIX.match(last) else "") + last


def split_lines(text: str) -> list[str]:
    """A log's lines as `grep -n` and editors number them: split on "\\n" only.

    str.splitlines() and text-mode files also split on a lone "\\r", which progress bars write
    many times per line, so their line numbers drift from what the user sees. Read logs with
    open(path, newline="") and split them here.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def parse_line(number: int, raw: str) -> LogLine:
    """Strip colour codes, then each known prefix at most once, outermost first."""
    text = _ANSI.sub("", _unwrap_docker_json(raw.rstrip("\r\n")).rstrip("\r\n"))
    if "\r" in text:  # a progress bar redrawn in place: keep what the terminal showed last
        text = _last_redraw(text)
    text = _PASTE_TAIL.sub("", text)
    message = text
    level = process = None
    stripped: list[str] = []
    for kind, pattern in _PREFIXES:
        m = pattern.match(message)
        if not m:
            continue
        groups = m.groupdict()
        level = _normal_level(groups.get("level")) or level
        process = groups.get("process") or process
        stripped.append(kind)
        message = message[m.end():]
    return LogLine(number, text, message, level, process, tuple(stripped))


def _normal_level(level: str | None) -> str | None:
    if level is None:
        return None
    return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)


# --------------------------------------------------------------------------------------------
# Tracebacks: find the exception a downstream message refers to
# --------------------------------------------------------------------------------------------

_EXCEPTION_LINE = re.compile(
    r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure|Timeout))(?::\s*(?P<text>.*))?$"
)
# Wrappers that re-raise something else: never a root cause by themselves.
_WRAPPER_EXCEPTION = re.compile(
    r"CalledProcessError|failed to be inspected|Engine core initialization failed|EngineCore failed to start"
    r"|Engine process failed to start|WorkerProc initialization failed|Worker failed with error|"
    r"Error raised in subprocess|[Ss]ee (?:the )?stack trace|See root cause above"
)


def exception_before(lines: Sequence[LogLine], index: int) -> LogLine | None:
    """The nearest exception line above lines[index] that is not itself a wrapper."""
    for i in range(index - 1, max(-1, index - 1 - ROOT_CAUSE_LOOKBACK), -1):
        m = _EXCEPTION_LINE.match(lines[i].message)
        if m and not _WRAPPER_EXCEPTION.search(lines[i].message):
            return lines[i]
    return None


# --------------------------------------------------------------------------------------------
# Secrets: log lines are shown and stored; keys and tokens in them must not be
# --------------------------------------------------------------------------------------------

# vLLM prints its arguments as Python reprs: "'api_key': ['abc']", "api_key='abc'", "api_key=abc".
# Everything else (--api-key X, HF_TOKEN=..., hf_..., sk-..., Bearer ...) is redact.redact_text's job.
_PY_SECRET = re.compile(
    r"""(?i)((?:api[_-]?key|token|secret|password|passwd)['"]?\s*[:=]\s*\[?\s*['"]?)"""
    r"""(?!None\b|null\b|False\b|True\b|\*\*\*)([^'"\s,\])}]{3,})"""
)


def redact(text: str) -> str:
    return redact_text(_PY_SECRET.sub(lambda m: m.group(1) + MASK, text))


# --------------------------------------------------------------------------------------------
# Scan: collect matches, then judge them into findings
# --------------------------------------------------------------------------------------------


@dataclass
class _Hit:
    signature: Signature
    indexes: list[int] = field(default_factory=list)  # into the LogLine list
    groups: dict[str, list[str]] = field(default_factory=dict)  # name -> distinct values, in order
    root_cause: LogLine | None = None


# Request logging (--enable-log-requests) copies users' prompts into the log: their words are
# not this server's failures.
_USER_TEXT = re.compile(r"^(?:Received request|Generated response|Added request) \S+: (?:prompt|output)")


@lru_cache(maxsize=8)
def _any_pattern(table: tuple[Signature, ...]) -> re.Pattern:
    """One regex for "could any signature match?": most lines of a log match none, and one search
    per line is several times cheaper than a search per pattern."""
    parts = []
    for sig in table:
        for pattern in sig.patterns:
            body = re.sub(r"\(\?P<\w+>", "(?:", pattern.pattern)
            if body.startswith("(?i)"):  # a global flag must become a scoped one inside the union
                body = "(?i:" + body[4:] + ")"
            parts.append("(?:" + body + ")")
    return re.compile("|".join(parts))


def _matches(lines: Sequence[LogLine], table: Sequence[Signature]) -> dict[str, _Hit]:
    hits: dict[str, _Hit] = {}
    could_match = _any_pattern(tuple(table)).search
    for i, line in enumerate(lines):
        if not line.message.strip() or _USER_TEXT.match(line.message) or not could_match(line.message):
            continue
        for sig in table:
            groups = sig.match(line.message)
            if groups is None:
                continue
            hit = hits.setdefault(sig.id, _Hit(sig))
            hit.indexes.append(i)
            for name, value in groups.items():
                values = hit.groups.setdefault(name, [])
                if value not in values:
                    values.append(value)
            break  # the first signature in table order claims the line
    for hit in hits.values():
        if hit.signature.root_cause_before:
            # From the last match back: "EngineCore failed to start." comes before its traceback,
            # "Engine core initialization failed" after it.
            hit.root_cause = next(filter(None, (exception_before(lines, i) for i in reversed(hit.indexes))), None)
    return hits


def _shown_lines(lines: Sequence[LogLine], hit: _Hit) -> list[dict]:
    wanted: set[int] = set()
    for i in hit.indexes[:MAX_SHOWN_MATCHES]:
        wanted.update(range(max(0, i - CONTEXT_BEFORE), min(len(lines), i + CONTEXT_AFTER + 1)))
    if hit.root_cause is not None:
        r = hit.root_cause.number - 1
        wanted.update(range(max(0, r - 1), min(len(lines), r + 1)))
    matched = {lines[i].number for i in hit.indexes}
    out = []
    for i in sorted(wanted):
        line = lines[i]
        text = line.text if len(line.text) <= MAX_LINE_CHARS else line.text[:MAX_LINE_CHARS] + " …"
        out.append({"line": line.number, "text": redact(text), "match": line.number in matched})
    return out


def _telling_message(lines: Sequence[LogLine], hit: _Hit) -> str:
    """The exception line if one matched (not the `raise ...` source line above it), else the first."""
    for i in hit.indexes:
        if _EXCEPTION_LINE.match(lines[i].message):
            return lines[i].message.strip()
    return lines[hit.indexes[0]].message.strip()


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "<" + key + ">"  # not captured in this log: reads as a placeholder


def _fill(template: str, groups: dict[str, list[str]]) -> str:
    """Fill {group} placeholders with the captured values; uncaptured ones become <group>."""
    values = _Blank({k: ", ".join(v) for k, v in groups.items()})
    try:
        return template.format_map(values)
    except (ValueError, IndexError):  # a literal brace in a fix text: leave it alone
        return template


def _finding(lines: Sequence[LogLine], hit: _Hit, manager: str) -> Finding:
    sig = hit.signature
    first = lines[hit.indexes[0]]
    evidence: dict = {
        "first_line": first.number,
        "line_numbers": [lines[i].number for i in hit.indexes],
        "count": len(hit.indexes),
        "message": redact(_telling_message(lines, hit))[:MAX_LINE_CHARS],
    }
    if hit.groups:
        evidence["captured"] = {k: [redact(x) for x in v] for k, v in hit.groups.items()}
    if first.process:
        evidence["process"] = first.process
    evidence["source"] = sig.source
    if hit.root_cause is not None:
        evidence["root_cause"] = {
            "line": hit.root_cause.number,
            "message": redact(hit.root_cause.message.strip())[:MAX_LINE_CHARS],
        }
    return Finding(
        id=sig.id,
        severity=sig.severity,
        title=_fill(sig.title, hit.groups),
        evidence=evidence,
        fix=Fix(text=_fill(sig.fix, hit.groups), commands=[_fill(c, hit.groups) for c in sig.commands_for(manager)]),
        links=list(sig.links),
        lines=_shown_lines(lines, hit),
    )


def _judge(lines: Sequence[LogLine], hits: dict[str, _Hit], table: Sequence[Signature], manager: str) -> list[Finding]:
    order = {sig.id: n for n, sig in enumerate(table)}
    roots = [h for h in hits.values() if not h.signature.downstream and h.signature.severity == "error"]
    cause: dict[str, str] = {}  # id -> the id it folds into
    for hit in hits.values():
        found = [i for i in hit.signature.explained_by if i in hits]
        if found:
            cause[hit.signature.id] = found[0]
        elif hit.signature.downstream and roots:
            cause[hit.signature.id] = min(roots, key=lambda h: h.indexes[0]).signature.id
    folded: dict[str, list[_Hit]] = {}  # root id -> the hits it explains
    for hit_id in cause:
        root, seen = hit_id, {hit_id}
        while root in cause and cause[root] not in seen:  # a cause may itself be explained by another
            root = cause[root]
            seen.add(root)
        if root != hit_id and root not in cause:
            folded.setdefault(root, []).append(hits[hit_id])
    gone = {h.signature.id for hs in folded.values() for h in hs}
    # The root cause is what the user fixes; its downstream noise is evidence, not a finding.
    findings = [_finding(lines, hit, manager) for hit in hits.values() if hit.signature.id not in gone]
    for finding in findings:
        if finding.id in folded:
            finding.evidence["downstream"] = [
                {"id": h.signature.id, "first_line": lines[h.indexes[0]].number, "count": len(h.indexes)}
                for h in sorted(folded[finding.id], key=lambda h: h.indexes[0])
            ]
    rank = {s: n for n, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: (rank[f.severity], f.evidence["first_line"], order[f.id]))
    return findings


def parse_lines(lines: Iterable[str]) -> list[LogLine]:
    return [parse_line(n, raw) for n, raw in enumerate(lines, start=1)]


def scan(lines: Iterable[str], signatures: Sequence[Signature] | None = None, manager: str = "systemd") -> list[Finding]:
    """Findings for a log: one per signature id, errors first, each with its line numbers. Fix
    commands are those for `manager` ("systemd" or "supervisor": who runs the service here)."""
    table = load_signatures() if signatures is None else signatures
    if isinstance(lines, str):  # a whole log as one string: its lines, not its characters
        lines = split_lines(lines)
    parsed = parse_lines(lines)
    return _judge(parsed, _matches(parsed, table), table, manager)
