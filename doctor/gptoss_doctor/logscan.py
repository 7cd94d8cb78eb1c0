"""Log triage: match vLLM logs of every era against an ordered table of known failures.

    source ──► LogInput (blocks, lines capped to head+tail, binary refused)
           ──► parse_line (strip prefixes once) ──► _Scanner.feed (first signature that fits
               claims the line; bounded state) ──► judge (one finding per id, root cause beats
               downstream noise) ──► [Finding]

One pass, line by line, in memory bounded whatever the input: a line longer than
LINE_HEAD_CHARS + LINE_TAIL_CHARS is kept as its head and tail while it is read, so no pattern
ever sees more than that of one line, and the table refuses patterns that would backtrack over a
long run (an unbounded repeat at their start).

Never silent: beside the table's line rows, the scanner follows tracebacks (per process, across
chained exceptions), the start-up phase and the vLLM version, and the lines that say a process
ended (the `vllm-failed` row's patterns, systemd and gptoss-supervise exit statuses, an exception
or ERROR line that ends the log with the server never up after it). A failure no row explains is
reported as `vllm-failed` with its root-cause exception; an empty or binary input as
`not-a-vllm-log`.

The table is data: knowledge/signatures.toml, validated by `load_signatures()`. Order matters:
a line belongs to the first signature in the file whose pattern matches it, so the specific
signature sits above the generic one (Flutter's gradle_errors model). A signature marked
`downstream` (the engine died, "see root cause above") is reported only when no root-cause
error was found; otherwise it is folded into the root cause's evidence.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

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
    # "line": patterns match log lines (most rows). "failure": the row the failure detector emits
    # when vLLM failed and no line row names why; its patterns are the lines that say a process
    # ended. "input": the row emitted when the input is not a vLLM log (no patterns).
    kind: str = "line"
    # A cause of last resort ("a worker died"): it folds into any other root cause found, and
    # stands, as the cause, only where there is none.
    weak: bool = False
    # Box check ids (gptoss-doctor's own checks) that explain this log failure when the box
    # they judge is the one the log came from: `logs` on a deployed host reports them as the cause.
    box_causes: tuple[str, ...] = ()

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
    "kind": str,
    "box_causes": list,
    "weak": bool,
}
KINDS = ("line", "failure", "input")
# Commands only systemd answers: a row using them must say what to run without systemd.
_SYSTEMD_ONLY = re.compile(r"\b(?:systemctl|journalctl)\b")
_REQUIRED = ("id", "severity", "title", "fix", "source")


# A pattern that starts with an unbounded repeat ("[\w./-]*_C", ".*x", "\S+y") is tried from every
# position of a line and runs to its end each time: quadratic on a long run of such characters.
_LEADING_REPEAT = re.compile(r"^(?:\(\?i\))?(?:\((?:\?P<\w+>|\?:)?)*(?:\\[SsWwDd]|\[(?:\\.|[^\]])*\]|\.)(?:[*+]|\{\d*,\})")


def _compile(pattern: object, where: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise SignatureError(f"{where}: a pattern must be a non-empty string, got {pattern!r}")
    if _LEADING_REPEAT.match(pattern):
        raise SignatureError(f"{where}: {pattern!r} starts with an unbounded repeat (slow on long lines): "
                             "start it with literal text or anchor it with ^")
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
    for key in _REQUIRED + (("patterns",) if row.get("kind", "line") != "input" else ()):
        if key not in row or row[key] in ("", []):
            raise SignatureError(f"{where}: missing {key!r}")
    for key, value in row.items():
        if not isinstance(value, _FIELDS[key]):
            raise SignatureError(f"{where}: {key} must be {_FIELDS[key].__name__}, got {type(value).__name__}")
    where = f"{where} ({row['id']})"
    if not _KEBAB.match(row["id"]):
        raise SignatureError(f"{where}: id is not kebab-case")
    if row.get("kind", "line") not in KINDS:
        raise SignatureError(f"{where}: kind {row['kind']!r} not in {KINDS}")
    if row["severity"] not in SEVERITIES:
        raise SignatureError(f"{where}: severity {row['severity']!r} not in {SEVERITIES}")
    for key in ("commands", "links", "explained_by", "supervisor_commands", "box_causes"):
        for item in row.get(key, []):
            if not isinstance(item, str) or not item:
                raise SignatureError(f"{where}: {key} holds {item!r}, expected non-empty strings")
    if any(_SYSTEMD_ONLY.search(c) for c in row.get("commands", [])) and not row.get("supervisor_commands"):
        raise SignatureError(f"{where}: commands use systemctl/journalctl: add supervisor_commands (hosts without systemd)")
    for c in row.get("supervisor_commands", []):
        if _SYSTEMD_ONLY.search(c):
            raise SignatureError(f"{where}: supervisor_commands holds {c!r}: no systemd runs where these are shown")
    patterns = tuple(_compile(p, f"{where}: patterns") for p in row.get("patterns", []))
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
        kind=row.get("kind", "line"),
        box_causes=tuple(row.get("box_causes", [])),
        weak=row.get("weak", False),
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
    for kind in ("failure", "input"):
        if sum(s.kind == kind for s in signatures) > 1:
            raise SignatureError(f"{where}: more than one row of kind {kind!r}")
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
# Input: lines of bounded length, read in blocks, whatever the source
# --------------------------------------------------------------------------------------------

# What any pattern sees of one line: its head and its tail. A 3 MB progress bar keeps its prefix
# and its last redraw, a 1 MB base64 request line its start and end; the middle is dropped as it
# is read, so memory and the time of every pattern are bounded per line.
LINE_HEAD_CHARS = 4096
LINE_TAIL_CHARS = 4096
ELIDED = " … "
READ_BLOCK = 1 << 18
# The start of the input decides "binary": NUL bytes or undecodable bytes in this many.
SAMPLE_BYTES = 1 << 16
BINARY_SHARE = 0.10


def _cap(text: str) -> str:
    if len(text) <= LINE_HEAD_CHARS + LINE_TAIL_CHARS:
        return text
    return text[:LINE_HEAD_CHARS] + ELIDED + text[-LINE_TAIL_CHARS:]


class LogInput:
    """The lines of a log source, each capped to its head and tail, numbered as `grep -n` does.

    Sources: a str (a whole log), bytes, a binary or text file object, or any iterable of str or
    bytes lines. A binary stream is read in blocks and split on b"\\n" only (a progress bar's
    lone \\r stays inside its line), so a line with no end (/dev/zero) never fills memory. When
    the first SAMPLE_BYTES are mostly NUL or undecodable the input is not text: reading stops and
    `binary` says why.
    """

    def __init__(self, source) -> None:
        self.source = source
        self.binary: str | None = None
        self.chars = 0  # characters seen in the sample
        self._odd = 0  # NULs and undecodable characters in the sample

    def __iter__(self) -> Iterator[str]:
        src = self.source
        if isinstance(src, str):
            yield from self._texts(split_lines(src))
        elif isinstance(src, (bytes, bytearray)):
            yield from self._blocks(io.BytesIO(bytes(src)))
        elif hasattr(src, "read"):
            probe = src.read(0)
            if isinstance(probe, bytes):
                yield from self._blocks(src)
            else:
                yield from self._texts(src)
        else:
            yield from self._texts(src)

    # -- sampling ------------------------------------------------------------------------------

    def _sample(self, text: str) -> bool:
        """Count NULs and replacement characters at the start; True when the input is binary."""
        if self.chars >= SAMPLE_BYTES:
            return False
        self.chars += len(text) + 1
        self._odd += text.count("\0") + text.count("\ufffd")
        if self.chars >= SAMPLE_BYTES or self.binary is None:
            share = self._odd / max(self.chars, 1)
            if self.chars >= 512 and share > BINARY_SHARE:
                pct = round(100 * share)
                self.binary = f"{pct}% of its first {self.chars} bytes are NUL or not UTF-8 text"
                return True
        return False

    def finish_sample(self) -> None:
        """A short input: judge what was seen."""
        if self.binary is None and 0 < self.chars < 512 and self._odd / self.chars > BINARY_SHARE:
            self.binary = f"{round(100 * self._odd / self.chars)}% of its {self.chars} bytes are NUL or not UTF-8 text"

    # -- sources -------------------------------------------------------------------------------

    def _texts(self, lines: Iterable) -> Iterator[str]:
        for raw in lines:
            if isinstance(raw, (bytes, bytearray)):
                raw = bytes(raw).decode("utf-8", "replace")
            if raw.endswith("\n"):
                raw = raw[:-1]
            line = _cap(raw)
            if self._sample(line):
                return
            yield line
        self.finish_sample()

    def _blocks(self, stream) -> Iterator[str]:
        """Lines of a binary stream, read in blocks split in C: a line that runs past a block is
        carried over, and past LINE_HEAD_CHARS + LINE_TAIL_CHARS only its head and tail are."""
        head_max, tail_max = LINE_HEAD_CHARS, LINE_TAIL_CHARS
        cap = head_max + tail_max
        elided_mark = ELIDED.encode()
        head = b""  # the carried line's start (all of it while it is short)
        tail = b""  # its end, once it is long
        long = False
        seen = nul = 0
        read = stream.read
        while True:
            block = read(READ_BLOCK)
            if not block:
                break
            if seen < SAMPLE_BYTES:
                # NULs are counted per block: /dev/zero never ends a line to count them in
                seen += len(block)
                nul += block.count(b"\0")
                if seen >= 512 and nul / seen > BINARY_SHARE:
                    self.binary = f"{round(100 * nul / seen)}% of its first {seen} bytes are NUL"
                    return
            parts = block.split(b"\n")
            last = parts.pop()  # the start of a line this block does not end
            for i, piece in enumerate(parts):
                if i == 0 and (head or long):
                    if long:
                        raw = head + elided_mark + (tail + piece)[-tail_max:]
                    else:
                        raw = head + piece
                    head, tail, long = b"", b"", False
                else:
                    raw = piece
                if len(raw) > cap:
                    raw = raw[:head_max] + elided_mark + raw[-tail_max:]
                text = raw.decode("utf-8", "replace")
                if self.chars < SAMPLE_BYTES and self._sample(text):
                    return
                yield text
            if last:
                if not parts and (head or long):  # the carried line goes on through this block
                    if long:
                        tail = (tail + last)[-tail_max:]
                    elif len(head) + len(last) > cap:
                        joined = head + last
                        head, tail, long = joined[:head_max], joined[-tail_max:], True
                    else:
                        head += last
                elif len(last) > cap:
                    head, tail, long = last[:head_max], last[-tail_max:], True
                else:
                    head = last
        if head or long:
            raw = head + elided_mark + tail if long else head
            text = raw.decode("utf-8", "replace")
            if not (self.chars < SAMPLE_BYTES and self._sample(text)):
                yield text
        self.finish_sample()


# --------------------------------------------------------------------------------------------
# Lines: strip whatever the runtime put in front of vLLM's message
# --------------------------------------------------------------------------------------------

_ANSI_ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
# the same colour codes pasted without their ESC byte
_ANSI_BARE = re.compile(r"\[(?:\d{1,3};)*\d{1,3}m")
_LEVELS = "DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL"

# Each prefix is stripped at most once, in this order (outermost wrapper first).
_PREFIXES: tuple[tuple[str, str], ...] = (
    # a log copied out of a terminal UI (k9s, lazydocker): "│ ERROR ... │"
    ("frame", r"│ ?"),
    # journalctl -o short: "Nov 27 10:00:00 host vllm[123]: ", month names in the host's locale ("Okt", "авг", "6月")
    ("journal", r"(?:[^\W\d_]{3,5}\.?|\d{1,2}月) [ \d]?\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ [^\s:\[]+(?:\[\d+\])?: "),
    # journalctl -o short-iso / syslog: "2025-11-27T10:00:00+0000 host vllm[123]: "
    ("journal", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)? \S+ [^\s:\[]+(?:\[\d+\])?: "),
    # journalctl -o short-monotonic, dmesg: "[12345.678901] host vllm[123]: ", "[ 1234.5678] "
    ("journal", r"\[\s*\d+\.\d+\] \S+ [^\s:\[]+(?:\[\d+\])?: "),
    ("kernel", r"\[\s*\d+\.\d+\] "),
    # containerd/CRI log files (/var/log/pods/...): "2025-08-05T10:11:12.123456789Z stderr F "
    ("cri", r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d) (?:stdout|stderr) [FP] "),
    # docker compose: "vllm-1  | ", "gptoss_vllm_1 | "
    ("compose", r"[A-Za-z0-9][\w.-]*\s+\| ?"),
    # docker logs -t / kubectl --timestamps / many collectors: ISO timestamp first
    ("timestamp", r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\s+"),
    # "[2026-01-22 19:54:36] " and "[/bin/sh]: " from process supervisors
    ("timestamp", r"\[\d{4}-\d\d-\d\d[T ][\d:.,]+(?:Z|[+-]\d\d:?\d\d)?\]\s*"),
    ("supervisor", r"\[[^\]\s]+\]: "),
    # kubectl logs --prefix: "[pod/vllm-0/vllm] "
    ("supervisor", r"\[pod/[^\]\s]+\] "),
    # torch.distributed rank prefix
    ("rank", r"\[rank\d+\]:\s?"),
    # vLLM process prefix: "(VllmWorker TP0 pid=1234) ", "(EngineCore_DP0 pid=1) ", "(APIServer pid=1) "
    ("process", r"\((?:(?P<process>[A-Za-z][\w-]*(?: [\w=-]+)*?) )?pid=\d+(?:, ip=[\d.:a-f]+)?\)\s?"),
    # a child's output relayed by its parent: "(APIServer pid=1) (EngineCore_DP0 pid=68) ERROR ..."
    ("process", r"\((?:(?P<process>[A-Za-z][\w-]*(?: [\w=-]+)*?) )?pid=\d+(?:, ip=[\d.:a-f]+)?\)\s?"),
    # vLLM logger header, every era: "ERROR 08-05 10:11:12 [file.py:511] " / "INFO 02-16 18:30:09 file.py:190] "
    ("header", rf"(?P<level>{_LEVELS}) +\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)? +\[?[\w.<>-]+(?::\d+)?\] ?"),
    # vLLM's logger under a site's own format: "ERROR 56542 [async_llm_engine.py:64] " (level, pid, location)
    ("header", rf"(?P<level>{_LEVELS}) +\d+ \[[\w.<>-]+:\d+\] ?"),
    # uvicorn: "INFO:     Application startup complete."
    ("uvicorn", rf"(?P<level>{_LEVELS}):\s+"),
    # a traceback pasted with only the logger's location left: "[multiproc_executor.py:559] "
    ("location", r"\[[\w.<>-]+\.py:\d+\] ?"),
)


def _prefix_regex() -> tuple[re.Pattern, tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """All prefixes as ONE anchored regex of optional groups, in order: one match per line
    instead of one per prefix. Every group is optional, so the match never backtracks into an
    earlier choice: each prefix is taken, greedily and at most once, exactly as a loop would."""
    parts = []
    for n, (_, body) in enumerate(_PREFIXES):
        body = body.replace("(?P<level>", f"(?P<level{n}>").replace("(?P<process>", f"(?P<process{n}>")
        parts.append(f"(?P<p{n}>{body})?")
    rx = re.compile("^" + "".join(parts))
    kinds = tuple(kind for kind, _ in _PREFIXES)
    levels = tuple(rx.groupindex[g] for g in rx.groupindex if g.startswith("level"))
    processes = tuple(rx.groupindex[g] for g in rx.groupindex if g.startswith("process"))
    return rx, kinds, levels, processes


_PREFIX, _PREFIX_KINDS, _LEVEL_GROUPS, _PROCESS_GROUPS = _prefix_regex()
_PREFIX_GROUPS = tuple(_PREFIX.groupindex[f"p{n}"] for n in range(len(_PREFIXES)))
_PROCESS_PREFIX = re.compile("^" + next(body for kind, body in _PREFIXES if kind == "process"))
# indexes into Match.groups() of the level and process groups (a later one wins)
_L0, _L1, _L2 = reversed([g - 1 for g in _LEVEL_GROUPS])
_P0, _P1 = (g - 1 for g in _PROCESS_GROUPS)


class LogLine:
    """One line of the log. A plain slotted class: one is made per line of a 500 MB journal."""

    __slots__ = ("number", "text", "message", "level", "process", "_prefix")

    def __init__(self, number: int, text: str, message: str, level: str | None = None,
                 process: str | None = None, prefix: re.Match | None = None) -> None:
        self.number = number  # 1-based
        self.text = text  # the line as shown to the user: colour codes gone, trailing newline gone
        self.message = message  # the text with every known prefix stripped: what signatures match
        self.level = level  # DEBUG / INFO / WARNING / ERROR / CRITICAL when the prefix said so
        self.process = process  # "VllmWorker TP0", "EngineCore_DP0", "APIServer", ...
        self._prefix = prefix

    @property
    def stripped(self) -> tuple[str, ...]:
        """Kinds of prefix removed, outermost first."""
        if self._prefix is None:
            return ()
        groups = self._prefix.groups()
        return tuple(kind for kind, g in zip(_PREFIX_KINDS, _PREFIX_GROUPS) if groups[g - 1] is not None)

    def __repr__(self) -> str:
        return f"LogLine({self.number}, {self.message!r}, level={self.level!r}, process={self.process!r})"


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
    open(path, newline="") and split them here (or give scan() the binary file).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


_LEVEL_NAMES = {"WARN": "WARNING", "FATAL": "CRITICAL"}


def parse_line(number: int, raw: str) -> LogLine:
    """Strip colour codes, then each known prefix at most once, outermost first."""
    text = raw.rstrip("\r\n")
    if len(text) > LINE_HEAD_CHARS + LINE_TAIL_CHARS:
        text = _cap(text)
    if text.startswith('{"log":'):
        text = _unwrap_docker_json(text).rstrip("\r\n")
    if "\x1b" in text:
        text = _ANSI_ESC.sub("", text)
    if "0m" in text:  # pasted without ESC: every coloured line also holds a reset, "[0m" or "[0;0m"
        text = _ANSI_BARE.sub("", text)
    if "\r" in text:  # a progress bar redrawn in place: keep what the terminal showed last
        text = _last_redraw(text)
    # what pasting leaves at a line's end: a terminal UI's right border, a carriage return shown as "^M"
    if text.endswith("^M"):
        text = text[:-2]
    if "│" in text:
        trimmed = text.rstrip()
        if trimmed.endswith("│"):
            text = trimmed[:-1].rstrip()
    m = _PREFIX.match(text)
    end = m.end()
    if not end:
        return LogLine(number, text, text)
    groups = m.groups()
    level = groups[_L0] or groups[_L1] or groups[_L2]
    process = groups[_P1] or groups[_P0]
    return LogLine(number, text, text[end:], _LEVEL_NAMES.get(level, level), process, m)


def _normal_level(level: str | None) -> str | None:
    return None if level is None else _LEVEL_NAMES.get(level, level)


# --------------------------------------------------------------------------------------------
# Tracebacks: the exception a downstream message refers to
# --------------------------------------------------------------------------------------------

_EXCEPTION_LINE = re.compile(
    r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failure|Failed|Timeout))(?::\s*(?P<text>.*))?$"
)
# Wrappers that re-raise something else: never a root cause by themselves.
_WRAPPER_EXCEPTION = re.compile(
    r"CalledProcessError|failed to be inspected|Engine core initialization failed|EngineCore failed to start"
    r"|Engine process failed to start|WorkerProc initialization failed|Worker failed with error|"
    r"Error raised in subprocess|[Ss]ee (?:the )?stack trace|See root cause above"
)


def _exception(message: str) -> re.Match | None:
    """The match of an exception line ("KeyError: 'x'", "torch.OutOfMemoryError: ..."), cheaply refused."""
    if not message or not message[0].isalpha() and message[0] != "_":
        return None
    return _EXCEPTION_LINE.match(message)


def _traceback_part(message: str) -> tuple:
    """What a line is to a traceback: ("start",), ("frame", "vllm/x.py:12" or None), ("chain",),
    ("exception", is_wrapper) or (None,). Pure: remembered per message with the rest."""
    head = message.lstrip()[:40]
    if head.startswith(_TRACEBACK):
        return ("start",)
    if head.startswith('File "'):
        m = _FRAME.match(message)
        vllm = _VLLM_PATH.search(m.group("path")) if m else None
        return ("frame", f"{vllm.group(1)}:{m.group('line')}" if vllm else None)
    if head.startswith(_CHAINED):
        return ("chain",)
    if _exception(message):
        return ("exception", bool(_WRAPPER_EXCEPTION.search(message)))
    return (None,)


def exception_before(lines: Sequence[LogLine], index: int) -> LogLine | None:
    """The nearest exception line above lines[index] that is not itself a wrapper."""
    for i in range(index - 1, max(-1, index - 1 - ROOT_CAUSE_LOOKBACK), -1):
        if _exception(lines[i].message) and not _WRAPPER_EXCEPTION.search(lines[i].message):
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
# Scan: one pass, bounded state; then judge the hits into findings
# --------------------------------------------------------------------------------------------

MAX_LINE_NUMBERS = 20  # per finding: the first line numbers; count and last_line say the rest
MAX_VALUES = 8  # distinct captured values kept per group
MESSAGE_CACHE = 4096  # messages whose match is remembered: crash loops repeat the same lines


@dataclass
class _Shown:
    number: int
    text: str
    match: bool


def _shown_text(line: LogLine) -> str:
    text = line.text
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + " …"


@dataclass
class _Hit:
    signature: Signature
    first: LogLine
    count: int = 0
    last_line: int = 0
    line_numbers: list[int] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # name -> distinct values, in order
    message: str = ""  # the exception line if one matched, else the first matched message
    shown: dict[int, _Shown] = field(default_factory=dict)
    after: int = 0  # lines of context still to show after the last shown match
    root_cause: LogLine | None = None
    root_cause_before: LogLine | None = None
    phase: str | None = None  # the phase of the start in which it was first seen
    version: str | None = None  # the vLLM version the log showed by then


# Request logging (--enable-log-requests) copies users' prompts into the log: their words are
# not this server's failures.
_USER_TEXT = re.compile(r"^(?:Received request|Generated response|Added request) \S+: (?:prompt|output)")


def _gate_body(pattern: re.Pattern) -> str:
    body = re.sub(r"\(\?P<\w+>", "(?:", pattern.pattern)
    if body.startswith("(?i)"):  # a global flag must become a scoped one inside the union
        body = "(?i:" + body[4:] + ")"
    return "(?:" + body + ")"


@lru_cache(maxsize=8)
def _any_pattern(table: tuple[Signature, ...]) -> re.Pattern:
    """One regex for "could any line row match?": most lines of a log match none, and one search
    per line is several times cheaper than a search per pattern."""
    return re.compile("|".join(_gate_body(p) for sig in table if sig.kind == "line" for p in sig.patterns) or "(?!)")


# --------------------------------------------------------------------------------------------
# The failure detector: independent of the table's line rows, it sees vLLM fail and where
# --------------------------------------------------------------------------------------------

# Phases of a vLLM start, named by the lines that begin them (every era's wording). The phase of
# a failure is the last one begun before it; a new start (the version banner) begins "import".
PHASES = ("import", "model load", "profiling and KV cache", "CUDA graph capture", "API server", "serving")
UNKNOWN_PHASE = "a phase the log does not show"  # no start-up line before the failure
_PHASE_MARKERS: tuple[tuple[str, str], ...] = (
    ("import", r"vLLM API server version |Initializing a V\d LLM engine|█\s+version \d|non-default args:|\bvLLM version:? v?\d"),
    ("model load", r"Starting to load model|Loading model from|Loading weights|Loading safetensors checkpoint shards"
                   r"|Loading model weights|Using (?:[\w-]+ )?(?:attention )?backend\b|world_size=\d+ rank=\d+"),
    ("profiling and KV cache", r"Model loading took|Loading weights took|Memory profiling takes|torch\.compile takes"
                               r"|Compiling a graph for|Dynamo bytecode transform time|Available KV cache memory"
                               r"|GPU KV cache size|Maximum concurrency for|profile_run|determine_available_memory"),
    ("CUDA graph capture", r"Capturing CUDA graphs?|Capturing cudagraphs|CUDA graph capturing|capture_model"),
    ("API server", r"Graph capturing finished|init engine \(profile, create kv cache, warmup model\) took"
                   r"|Starting vLLM API server|Available routes are|Started server process|Waiting for application startup"),
    ("serving", r"Application startup complete|Avg prompt throughput|\"(?:GET|POST) /\S* HTTP/1\.\d\" 200"),
)
_VERSION = re.compile(
    r"vLLM API server version (?P<a>v?\d[\w.+-]*)|Initializing a V\d LLM engine \(v(?P<b>\d[\w.+-]*)\)"
    r"|█\s+version (?P<c>\d[\w.+-]*)|\bvLLM version:? (?P<d>v?\d[\w.+-]*)"
)
# A failure line that means nothing failed: a stop somebody asked for.
_STOPPED = re.compile(r"status=(?:0/SUCCESS|15/TERM|2/INT|0|-15|-2)\b")

_TRACEBACK = "Traceback (most recent call last)"
_QUIET_LEVELS = frozenset(("INFO", "DEBUG"))
_ERROR_LEVELS = frozenset(("ERROR", "CRITICAL"))
# another tool's error line: "docker: Error response from daemon: ...", "error: ...", "FATAL: ..."
_ERROR_TEXT = re.compile(r"(?:[\w.-]+: )?(?:[Ee]rror|ERROR|FATAL|[Ff]atal)\b:?")
_LOOKS_LIKE_A_LOG = re.compile(r"(?i)vllm|error|fail|exception|warning|traceback|killed|denied|not found")
_CHAINED = ("The above exception was the direct cause", "During handling of the above exception")
_FRAME = re.compile(r'\s*File "(?P<path>[^"]+)", line (?P<line>\d+)')
_VLLM_PATH = re.compile(r"(?:^|/)(vllm/[^\"]+\.py)$")
MAX_DETAIL_LINES = 3  # lines after an exception line that carry on its message


@dataclass
class _Exc:
    """An exception line and what the traceback above it said."""
    line: LogLine
    before: LogLine | None
    wrapper: bool
    raised_at: str | None  # the deepest vllm/ frame of its traceback: "vllm/v1/engine/core.py:708"
    phase: str
    version: str | None
    detail: list[str] = field(default_factory=list)
    claimed: bool = False  # a line row matched the exception line


@dataclass
class _Failure:
    """The lines that say vLLM ended, and the exception behind the last of them."""
    first: LogLine
    last: LogLine
    count: int = 0
    line_numbers: list[int] = field(default_factory=list)
    root: _Exc | None = None
    phase: str = UNKNOWN_PHASE
    version: str | None = None
    shown: dict[int, _Shown] = field(default_factory=dict)


class _Scanner:
    """Feed LogLines in order; state stays bounded whatever the number of lines."""

    def __init__(self, table: Sequence[Signature], manager: str) -> None:
        self.table = tuple(table)
        self.manager = manager
        self.lines_table = tuple(s for s in self.table if s.kind == "line")
        self.failure_sig = next((s for s in self.table if s.kind == "failure"), None)
        self.input_sig = next((s for s in self.table if s.kind == "input"), None)
        self.could_match = _any_pattern(self.table).search
        failure_patterns = self.failure_sig.patterns if self.failure_sig else ()
        self.events = re.compile("|".join(
            [f"(?P<phase{n}>{body})" for n, (_, body) in enumerate(_PHASE_MARKERS)]
            + [f"(?P<failed>{_gate_body(p)})" for p in failure_patterns[:1]]
            + [f"(?P<failed{n}>{_gate_body(p)})" for n, p in enumerate(failure_patterns[1:], start=1)]
        ))
        self.hits: dict[str, _Hit] = {}
        self.recent: deque[LogLine] = deque(maxlen=CONTEXT_BEFORE)
        self.awaiting: list = []  # hits and failures still showing context after a match
        self.cache: dict[str, tuple] = {}
        self.last_exception: LogLine | None = None  # the latest non-wrapper exception line
        self.before_exception: LogLine | None = None  # the line above it
        self.lines = 0
        # the detector
        self.phase = UNKNOWN_PHASE
        self.version: str | None = None
        self.first_version: str | None = None
        self.frames: dict[str, str | None] = {}  # process -> deepest vllm/ frame of its open traceback
        self.exceptions: deque[_Exc] = deque(maxlen=64)
        self.detail_of: _Exc | None = None
        self.failure: _Failure | None = None
        self.last_alive = 0  # the last line that shows the server up (startup complete, serving)
        self.terminal: _Exc | None = None  # the last exception line
        # the last ERROR line, or "Error: ..." of another tool (docker, a shell), with the phase then
        self.terminal_error: tuple[LogLine, str, bool] | None = None
        self.nonblank = False
        self.looks_vllm = False

    # -- one line ------------------------------------------------------------------------------

    def _classify(self, message: str) -> tuple:
        """(row, groups) of the line row that claims `message` or (None, None), the event
        ("phaseN" / "failedN" / None) it shows, and what the line is to a traceback: computed once
        per distinct message and remembered (crash loops repeat their lines)."""
        sig = groups = None
        blank = not message.strip()
        # an error line of vLLM's or another tool's ("docker: Error response ...", "FATAL: ...")
        error_text = not blank and bool(_ERROR_TEXT.match(message))
        looks = bool(_LOOKS_LIKE_A_LOG.search(message))
        if not blank and not _USER_TEXT.match(message):
            if self.could_match(message):
                for row in self.lines_table:
                    groups = row.match(message)
                    if groups is not None:
                        sig = row  # the first row in table order claims the line
                        break
            m = self.events.search(message)
            event = m.lastgroup if m else None
            version = None
            if event == "phase0":  # the start of a run is where the version is printed
                found_version = _VERSION.search(message)
                version = next(v for v in found_version.groups() if v) if found_version else None
        else:
            event = version = None
        found = (sig, groups, event, version, blank, error_text, looks, _traceback_part(message))
        if len(self.cache) >= MESSAGE_CACHE:
            self.cache.clear()
        self.cache[message] = found
        return found

    def feed(self, line: LogLine) -> None:
        self.lines = line.number
        if self.awaiting:
            for item in self.awaiting:
                item.shown.setdefault(line.number, _Shown(line.number, _shown_text(line), False))
                item.after -= 1
            self.awaiting = [h for h in self.awaiting if h.after > 0]
        message = line.message
        sig, groups, event, version, blank, error_text, looks, part = self.cache.get(message) or self._classify(message)
        if version:
            self.version = version
            self.first_version = self.first_version or version
        if event is not None:
            if event.startswith("phase"):
                phase = PHASES[int(event[5:])]
                if phase == PHASES[0] or self.phase == UNKNOWN_PHASE or PHASES.index(phase) > PHASES.index(self.phase):
                    self.phase = phase  # phases only move on, until a new start
                if phase == "serving":
                    self.last_alive = line.number
            elif not _STOPPED.search(message):
                self._failed(line)
        if sig is not None:
            self._record(line, sig, groups)
        level = line.level
        # tracebacks come at ERROR level or with no header; a quoted exception's detail on any line
        if (part[0] is not None and level not in _QUIET_LEVELS) or self.detail_of is not None:
            self._track_traceback(line, message, sig is not None, part)
        if (error_text or level in _ERROR_LEVELS) and not blank:
            self.terminal_error = (line, self.phase, sig is not None)
        if not self.looks_vllm and (level or line.process or sig or event or version or looks):
            self.looks_vllm = True  # a vLLM line, or one of a failure another tool logged (pip, a build, Ray)
        if not blank:
            self.nonblank = True
        self.recent.append(line)

    def _track_traceback(self, line: LogLine, message: str, claimed: bool, part: tuple) -> None:
        proc = line.process or ""
        kind = part[0]
        if kind == "start":
            if len(self.frames) > 64:
                self.frames.clear()
            self.frames[proc] = None
            self.detail_of = None
            return
        if kind == "frame":
            if part[1] and proc in self.frames:
                self.frames[proc] = part[1]
            self.detail_of = None
            return
        if kind == "chain":
            self.detail_of = None
            return
        if kind == "exception":
            wrapper = part[1]
            record = _Exc(line, self.recent[-1] if self.recent else None, wrapper,
                          self.frames.pop(proc, None), self.phase, self.version, claimed=claimed)
            self.exceptions.append(record)
            # the last exception of the log, in a traceback or quoted alone: if nothing after it
            # shows the server up, it ended the process
            self.terminal = record
            if not wrapper:
                self.before_exception, self.last_exception = record.before, line
            self.detail_of = record
            return
        detail = self.detail_of
        if detail is not None:
            # "pydantic ValidationError: 1 validation error for ModelConfig" says why on the next lines
            if message.strip() and len(detail.detail) < MAX_DETAIL_LINES and (line.process or "") == (detail.line.process or ""):
                detail.detail.append(message.strip()[:MAX_LINE_CHARS])
            else:
                self.detail_of = None

    def _root(self, line: LogLine) -> _Exc | None:
        """The exception behind a failure at `line`: the last of the chain that is not a wrapper,
        across processes (the engine's traceback, then the API server's "see root cause above")."""
        best = None
        for exc in reversed(self.exceptions):
            if line.number - exc.line.number > ROOT_CAUSE_LOOKBACK:
                break
            if not exc.wrapper:
                return exc
            best = best or exc
        return best

    def _failed(self, line: LogLine) -> None:
        f = self.failure
        if f is not None and f.last is line:
            return  # one line that is both a failure marker and a downstream row's match
        if f is None:
            f = self.failure = _Failure(line, line)
        f.last = line
        f.count += 1
        if len(f.line_numbers) < MAX_LINE_NUMBERS:
            f.line_numbers.append(line.number)
        root = self._root(line)
        if root is not None:
            f.root = root
        f.phase = root.phase if root is not None else self.phase
        f.version = self.version
        if f.count <= MAX_SHOWN_MATCHES:
            for before in self.recent:
                f.shown.setdefault(before.number, _Shown(before.number, _shown_text(before), False))
            f.shown[line.number] = _Shown(line.number, _shown_text(line), True)

    def _record(self, line: LogLine, sig: Signature, groups: dict[str, str]) -> None:
        hit = self.hits.get(sig.id)
        if hit is None:
            hit = self.hits[sig.id] = _Hit(sig, line, message=line.message.strip())
            hit.phase, hit.version = self.phase, self.version
        hit.count += 1
        hit.last_line = line.number
        if len(hit.line_numbers) < MAX_LINE_NUMBERS:
            hit.line_numbers.append(line.number)
        for name, value in groups.items():
            values = hit.groups.setdefault(name, [])
            if value not in values and len(values) < MAX_VALUES:
                values.append(value)
        if hit.count > 1 and not _exception(hit.message) and _exception(line.message.strip()):
            hit.message = line.message.strip()  # the exception line, not the `raise ...` source above it
        if hit.count <= MAX_SHOWN_MATCHES:
            for before in self.recent:
                hit.shown.setdefault(before.number, _Shown(before.number, _shown_text(before), False))
            hit.shown[line.number] = _Shown(line.number, _shown_text(line), True)
            if hit.after <= 0:
                self.awaiting.append(hit)
            hit.after = CONTEXT_AFTER
        if sig.root_cause_before and self.last_exception is not None \
                and line.number - self.last_exception.number <= ROOT_CAUSE_LOOKBACK:
            # the latest match that has an exception above it: "EngineCore failed to start." comes
            # before its traceback, "Engine core initialization failed" after it
            hit.root_cause, hit.root_cause_before = self.last_exception, self.before_exception
        if sig.downstream:
            self._failed(line)  # "engine core failed", "model failed to be inspected": vLLM ended

    # -- the end -------------------------------------------------------------------------------

    def _terminal_failure(self) -> None:
        """An exception that ends the log, with nothing after it showing the server up, ended it;
        unless a row claimed it (a request error a warning row knows) or it came while serving."""
        t = self.terminal
        if t is None or t.line.number < self.last_alive or t.claimed or t.phase == "serving":
            # no exception ends the log: an ERROR line that does, the same way
            e = self.terminal_error
            if e is None or (t is not None and t.line.number >= e[0].number):
                return
            line, phase, claimed = e
            if line.number < self.last_alive or claimed or phase == "serving":
                return
        else:
            line = t.line
        if self.failure is None or self.failure.last.number < line.number:
            self._failed(line)

    def findings(self, binary: str | None = None) -> list[Finding]:
        if binary is not None or not self.nonblank or not (self.looks_vllm or self.hits or self.exceptions or self.frames
                                                           or self.failure):
            why = (f"it is binary: {binary}" if binary is not None else
                   "it is empty" if not self.nonblank else
                   f"none of its {self.lines} lines looks like vLLM's (no vLLM log header, process prefix, traceback or known message)")
            # empty or binary: warn, nothing was judged; text without one vLLM line: say so, as info
            severity = None if binary is not None or not self.nonblank else "info"
            return [_not_a_log(self.input_sig, why, self.lines, severity)] if self.input_sig else []
        self._terminal_failure()
        return _judge(self, self.table, self.manager)


def _shown_lines(hit: _Hit) -> list[dict]:
    shown = dict(hit.shown)
    for line in (hit.root_cause_before, hit.root_cause):
        if line is not None:
            shown.setdefault(line.number, _Shown(line.number, _shown_text(line), False))
    return [{"line": s.number, "text": redact(s.text), "match": s.match} for s in sorted(shown.values(), key=lambda s: s.number)]


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "<" + key + ">"  # not captured in this log: reads as a placeholder


# "[[ ... {group} ... ]]" in a title or fix: a part shown only when every group in it was
# captured (a row whose patterns capture different values, one message shape each).
_OPTIONAL = re.compile(r"\[\[(.*?)\]\]", re.S)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _fill(template: str, groups: dict[str, list[str]]) -> str:
    """Fill {group} placeholders with the captured values; uncaptured ones become <group>."""
    if "[[" in template:
        template = _OPTIONAL.sub(
            lambda m: m.group(1) if all(g in groups for g in _PLACEHOLDER.findall(m.group(1))) else "", template)
    values = _Blank({k: ", ".join(v) for k, v in groups.items()})
    try:
        return template.format_map(values)
    except (ValueError, IndexError):  # a literal brace in a fix text: leave it alone
        return template


def _finding(hit: _Hit, manager: str) -> Finding:
    sig = hit.signature
    evidence: dict = {
        "first_line": hit.first.number,
        "last_line": hit.last_line,
        "count": hit.count,
        "line_numbers": list(hit.line_numbers),
        "message": redact(hit.message)[:MAX_LINE_CHARS],
    }
    if hit.groups:
        evidence["captured"] = {k: [redact(x) for x in v] for k, v in hit.groups.items()}
    if hit.first.process:
        evidence["process"] = hit.first.process
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
        fix=Fix(text=_fill(sig.fix, hit.groups), commands=[c for c in (_fill(c, hit.groups) for c in sig.commands_for(manager)) if c]),
        links=list(sig.links),
        lines=_shown_lines(hit),
    )


def _judge(sc: "_Scanner", table: Sequence[Signature], manager: str) -> list[Finding]:
    hits = sc.hits
    order = {sig.id: n for n, sig in enumerate(table)}
    errors = [h for h in hits.values() if not h.signature.downstream and h.signature.severity == "error"]
    roots = [h for h in errors if not h.signature.weak]
    weak_roots = [h for h in errors if h.signature.weak]
    cause: dict[str, str] = {}  # id -> the id it folds into
    for hit in hits.values():
        found = [i for i in hit.signature.explained_by if i in hits]
        if found:
            cause[hit.signature.id] = found[0]
        elif (hit.signature.downstream or hit.signature.weak) and roots:
            cause[hit.signature.id] = min(roots, key=lambda h: h.first.number).signature.id
        elif hit.signature.downstream and weak_roots:  # a weak cause is still a cause
            cause[hit.signature.id] = min(weak_roots, key=lambda h: h.first.number).signature.id
    folded: dict[str, list[_Hit]] = {}  # root id -> the hits it explains
    for hit_id in cause:
        root, seen = hit_id, {hit_id}
        while root in cause and cause[root] not in seen:  # a cause may itself be explained by another
            root = cause[root]
            seen.add(root)
        if root != hit_id and root not in cause:
            folded.setdefault(root, []).append(hits[hit_id])
    gone = {h.signature.id for hs in folded.values() for h in hs}
    standing = [hit for hit in hits.values() if hit.signature.id not in gone]
    # vLLM ended and no row knows why (only the downstream "see above" rows matched, or none):
    # the detector's finding names the exception, where vLLM raised it, the version and phase.
    # A stop somebody asked for (server-stopped) is no failure.
    failure = sc.failure
    unexplained = [h for h in standing if h.signature.downstream]
    known = any(h.signature.severity == "error" and not h.signature.downstream for h in standing)
    extra: list[Finding] = []
    if failure is not None and sc.failure_sig is not None and not known and "server-stopped" not in hits:
        standing = [h for h in standing if not h.signature.downstream]
        folded[sc.failure_sig.id] = unexplained
        extra.append(_failure_finding(sc, failure, manager))
    # The root cause is what the user fixes; its downstream noise is evidence, not a finding.
    findings = [_finding(hit, manager) for hit in standing] + extra
    for finding in findings:
        if finding.id in folded and folded[finding.id]:
            finding.evidence["downstream"] = [
                {"id": h.signature.id, "first_line": h.first.number, "count": h.count}
                for h in sorted(folded[finding.id], key=lambda h: h.first.number)
            ]
    for hit, finding in zip(standing, findings):
        if finding.severity != "info":
            finding.evidence["vllm_version"] = hit.version or sc.first_version or "unknown"
            finding.evidence["phase"] = hit.phase
    order[sc.failure_sig.id if sc.failure_sig else ""] = len(order)
    rank = {s: n for n, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: (rank[f.severity], f.evidence["first_line"], order.get(f.id, len(order))))
    return findings


# What to do next when vLLM failed in a phase and no row knows why. Keyed by PHASES.
NEXT_STEP = {
    "import": "It failed before loading the model: an import, a package or an argument/config error. "
              "Run `gptoss-doctor` on the box (packages, torch/CUDA pairing) and check the serve flags in the "
              "deploy's host data (gptoss_vllm_args) and /etc/gptoss/gptoss.env.",
    "model load": "It failed while loading the model or choosing its kernels: check the model path and its "
                  "permissions for the service user, the attention/MoE backend flags, and the GPUs (`nvidia-smi`).",
    "profiling and KV cache": "It failed while measuring memory or compiling: check what else holds GPU memory "
                              "(`nvidia-smi`), lower --gpu-memory-utilization or --max-model-len, or try --enforce-eager "
                              "to skip torch.compile.",
    "CUDA graph capture": "It failed while capturing CUDA graphs: confirm with --enforce-eager (no graphs), then "
                          "lower --max-cudagraph-capture-size or upgrade vLLM.",
    "API server": "The engine started and the API server failed: check --host/--port, the tool-server and "
                  "chat-template flags in the deploy's host data.",
    UNKNOWN_PHASE: "The log starts too late to tell when it failed: read the lines above the exception, or give "
                   "the whole log of this start (`gptoss-doctor logs` reads the service's own).",
    "serving": "It failed while serving requests: a request or a kernel crashed the engine. Upgrade vLLM, and "
               "report the traceback upstream with the request that preceded it.",
}


def _failure_finding(sc: "_Scanner", f: _Failure, manager: str) -> Finding:
    sig = sc.failure_sig
    root = f.root
    version = f.version or sc.first_version or "unknown"
    evidence: dict = {
        "first_line": f.first.number,
        "last_line": f.last.number,
        "count": f.count,
        "line_numbers": list(f.line_numbers),
        "message": redact(f.last.message.strip())[:MAX_LINE_CHARS],
        "vllm_version": version,
        "phase": f.phase,
    }
    shown = dict(f.shown)
    if root is not None:
        exc = root.line.message.strip()
        evidence["message"] = redact(exc)[:MAX_LINE_CHARS]
        evidence["root_cause"] = {
            "line": root.line.number,
            "message": redact(exc)[:MAX_LINE_CHARS],
            **({"detail": [redact(d) for d in root.detail]} if root.detail else {}),
            **({"raised_at": root.raised_at} if root.raised_at else {}),
            **({"process": root.line.process} if root.line.process else {}),
        }
        for line in (root.before, root.line):
            if line is not None:
                shown.setdefault(line.number, _Shown(line.number, _shown_text(line), line is root.line))
        what = exc if len(exc) <= 160 else exc[:160] + " …"
    else:
        what = f.last.message.strip()[:160]
    evidence["source"] = sig.source
    groups = {"phase": [f.phase], "exception": [redact(what)], "version": [version],
              "raised_at": [root.raised_at if root is not None and root.raised_at else "a frame the log does not show"]}
    return Finding(
        id=sig.id,
        severity=sig.severity,
        title=_fill(sig.title, groups),
        evidence=evidence,
        fix=Fix(text=_fill(sig.fix, groups) + " " + NEXT_STEP[f.phase],
                commands=[_fill(c, groups) for c in sig.commands_for(manager)]),
        links=list(sig.links),
        lines=[{"line": s.number, "text": redact(s.text), "match": s.match} for s in sorted(shown.values(), key=lambda s: s.number)],
    )


def _not_a_log(sig: Signature, why: str, lines: int, severity: str | None = None) -> Finding:
    return Finding(
        id=sig.id,
        severity=severity or sig.severity,
        title=_fill(sig.title, {"why": [why]}),
        evidence={"first_line": 0, "lines": lines, "why": why, "source": sig.source},
        fix=Fix(text=sig.fix, commands=list(sig.commands)),
        links=list(sig.links),
    )


def parse_lines(lines: Iterable[str]) -> Iterator[LogLine]:
    """LogLines of `lines`, numbered from 1, one at a time."""
    for n, raw in enumerate(lines, start=1):
        yield parse_line(n, raw)


def scan(source, signatures: Sequence[Signature] | None = None, manager: str = "systemd") -> list[Finding]:
    """Findings for a log: one per signature id, errors first, each with its count and first and
    last line numbers. `source`: a whole log as str or bytes, a binary or text file object, or
    any iterable of lines; it is read once, line by line, in bounded memory. Fix commands are
    those for `manager` ("systemd" or "supervisor": who runs the service here)."""
    table = load_signatures() if signatures is None else signatures
    scanner = _Scanner(table, manager)
    feed = scanner.feed
    src = LogInput(source)
    for n, raw in enumerate(src, start=1):
        feed(parse_line(n, raw))
    return scanner.findings(binary=src.binary)


# --------------------------------------------------------------------------------------------
# Logs and box together: a log failure explained by what the box shows
# --------------------------------------------------------------------------------------------

_SEVERITY_RANK = {s: n for n, s in enumerate(SEVERITIES)}


def tie_to_box(log_findings: Sequence[Finding], box_findings: Sequence[Finding],
               signatures: Sequence[Signature] | None = None, keep_unrelated: bool = True) -> list[Finding]:
    """Log and box findings of one host, with each log failure that a box finding explains folded
    into it: the box finding is the cause the user fixes, the log lines its evidence
    (`evidence.explains`). Which box check explains which log id is data: each row's
    `box_causes`, in order of preference. A box finding that explains an error becomes one.
    keep_unrelated=False: only the box findings that explain a log finding are returned."""
    table = load_signatures() if signatures is None else signatures
    causes = {s.id: s.box_causes for s in table}
    box = [f for f in box_findings if f.severity in ("error", "warning")]
    out: list[Finding] = list(box_findings) if keep_unrelated else []
    for lf in log_findings:
        cause = next((bf for want in causes.get(lf.id, ()) for bf in box if bf.id == want), None)
        if cause is None or lf.severity == "info":
            out.append(lf)
            continue
        explained = {"id": lf.id, "title": lf.title}
        for key in ("file", "first_line", "count", "message"):
            if key in lf.evidence:
                explained[key] = lf.evidence[key]
        if not keep_unrelated and "explains" not in cause.evidence:
            out.append(cause)
        cause.evidence.setdefault("explains", []).append(explained)
        if _SEVERITY_RANK[lf.severity] < _SEVERITY_RANK[cause.severity]:
            cause.evidence["severity_raised"] = f"{cause.severity} -> {lf.severity}: it explains the log's {lf.id}"
            cause.severity = lf.severity
        cause.lines = cause.lines or lf.lines
    return out


def box_summary(box_findings: Sequence[Finding], shown: Sequence[Finding]) -> Finding | None:
    """One info finding when the box has errors this log does not show (None otherwise)."""
    shown_ids = {id(f) for f in shown}
    rest = [f for f in box_findings if id(f) not in shown_ids and f.severity in ("error", "warning")]
    if not any(f.severity == "error" for f in rest):
        return None
    by = {s: sorted({f.id for f in rest if f.severity == s}) for s in ("error", "warning")}
    told = "; ".join(f"{s}s: {', '.join(ids)}" for s, ids in by.items() if ids) or "nothing else"
    return Finding(
        id="box-judged",
        severity="info",
        title=f"This host's box was judged too: {told}",
        evidence={"first_line": 0, "box_errors": by["error"], "box_warnings": by["warning"],
                  "tied": sorted({f.id for f in shown if "explains" in f.evidence})},
        fix=Fix(text="Box findings that explain a failure in the log are shown as its cause above; "
                     "`gptoss-doctor` shows the box's own findings in full.", commands=["gptoss-doctor"]),
    )
