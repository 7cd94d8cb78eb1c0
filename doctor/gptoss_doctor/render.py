"""Human output: a header, a few facts, findings grouped by severity, what was not checked, a
closing count.

Everything shown comes from the (already redacted) report dict, so what a user pastes is what
`--json` holds. Colour is plain ANSI (no rich import on the doctor's path): on a terminal, unless
NO_COLOR is set; FORCE_COLOR turns it on when piped (https://no-color.org, https://force-color.org).
On a terminal prose wraps to its width with its indentation kept; commands never wrap, so they
paste as printed; piped output is not wrapped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from typing import TextIO

from .findings import SEVERITIES

ANSI = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}
STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan", "ok": "green", "dim": "dim"}
MARK = {"error": "✗", "warning": "!", "info": "i"}
HEADING = {"error": "Errors", "warning": "Warnings", "info": "Info"}


class Console:
    """Lines to a stream, styled with ANSI codes when `color`, prose wrapped to `width` (None: no wrap)."""

    def __init__(self, stream: TextIO, color: bool, width: int | None):
        self.stream, self.color, self.width = stream, color, width

    def style(self, text: str, style: str | None) -> str:
        if not (self.color and style):
            return text
        codes = ";".join(ANSI[w] for w in style.split() if w in ANSI)
        return f"\x1b[{codes}m{text}\x1b[0m" if codes else text

    def print(self, text: str = "", style: str | None = None, wrap: bool = True, prefix: str = "",
              prefix_style: str | None = None) -> None:
        """One logical line: `prefix` (styled apart) then `text`, wrapped under the text's start."""
        lines = [text]
        if wrap and self.width and len(prefix) + len(text) > self.width:
            lead = len(text) - len(text.lstrip())
            lines = textwrap.wrap(text, width=max(20, self.width - len(prefix)), break_on_hyphens=False,
                                  break_long_words=False, subsequent_indent=" " * lead) or [""]
        pad = " " * len(prefix)
        out = [self.style(prefix, prefix_style) + self.style(lines[0], style)]
        out += [pad + self.style(line, style) for line in lines[1:]]
        self.stream.write("\n".join(out) + "\n")


def color_wanted(stream: TextIO, environ=None) -> bool:
    environ = os.environ if environ is None else environ
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR") not in (None, "", "0"):
        return True
    return bool(getattr(stream, "isatty", lambda: False)())


def make_console(stream: TextIO | None = None, environ=None) -> Console:
    stream = stream or sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    width = shutil.get_terminal_size((100, 24)).columns if tty else None
    return Console(stream, color_wanted(stream, environ), width)


# -- facts summary (pure) --------------------------------------------------------------------------


def _v(facts: dict, key: str):
    return (facts.get(key) or {}).get("value")


def _why(facts: dict, key: str) -> str:
    f = facts.get(key) or {}
    return f.get("failed") and f"could not collect: {f['failed']}" or f.get("absent") or "not collected"


def _gib(mib: int | None) -> str:
    return f"{mib / 1024:.0f} GiB" if mib else "? GiB"


def gpu_line(facts: dict) -> str:
    gpus = _v(facts, "nvidia.gpus")
    rocm = _v(facts, "rocm.gpus")
    driver = (_v(facts, "nvidia.driver") or {}).get("version")
    cuda_max = _v(facts, "nvidia.cuda_driver_max")
    if gpus:
        names = sorted({g["name"] for g in gpus})
        first = gpus[0]
        text = f"{len(gpus)}x {', '.join(names)} (cc {first.get('compute_cap')}, {_gib(first.get('memory_mib'))})"
        if driver:
            text += f" · driver {driver}" + (f" (CUDA <= {cuda_max})" if cuda_max else "")
        return text
    if rocm:
        return f"{len(rocm)}x {rocm[0].get('name')} ({rocm[0].get('gfx')}) · ROCm {_v(facts, 'rocm.version')}"
    return "none: " + _why(facts, "nvidia.gpus")


def stack_line(facts: dict) -> str:
    torch = _v(facts, "torch.build")
    vllm = _v(facts, "vllm.install")
    dists = {d["name"]: d["version"] for d in _v(facts, "venv.distributions") or []}
    triton = [f"{n} {dists[n]}" for n in ("triton", "pytorch-triton", "pytorch-triton-rocm") if n in dists]
    parts = [
        f"torch {torch['version']}" if torch else "torch: " + _why(facts, "torch.build"),
        f"vLLM {vllm['version']}" if vllm else "vLLM: " + _why(facts, "vllm.install"),
    ]
    parts += triton
    return " · ".join(parts)


def manager_line(facts: dict) -> str:
    """Who runs the service and whether it runs now (a fact: the doctor never starts it)."""
    m = _v(facts, "service.manager")
    if not isinstance(m, dict):
        return "none: " + _why(facts, "service.manager")
    who = "gptoss-supervise" if m.get("manager") == "supervisor" else str(m.get("manager"))
    parts = [f"{who} ({m.get('why')})" if m.get("why") else who]
    pid = m.get("main_pid") or m.get("pid")
    if m.get("running") is True:
        parts.append(f"{m.get('unit') or 'service'} running" + (f" (pid {pid})" if pid else ""))
    elif m.get("running") is False:
        parts.append(f"{m.get('unit') or 'service'} NOT running ({m.get('state') or 'unknown'})")
    else:
        parts.append(f"state unknown ({m.get('state_error') or m.get('state') or 'not collected'})")
    if m.get("log_file"):
        parts.append(f"log {m['log_file']}" + ("" if m.get("log_exists", True) else " (missing)"))
    return " · ".join(parts)


def install_line(facts: dict) -> str | None:
    """Where the deploy installed the stack from, when not from an index: the manifest's words."""
    manifest = _v(facts, "manifest")
    if not isinstance(manifest, dict):
        return None
    parts = []
    wh = manifest.get("wheelhouse")
    if isinstance(wh, dict) and wh.get("path"):
        parts.append(f"wheelhouse {wh['path']}" + (" (--no-deps)" if wh.get("no_deps") else ""))
    base = manifest.get("base_python")
    if isinstance(base, dict) and base.get("path"):
        parts.append(f"base Python {base['path']}" + (f" (torch {base['torch']})" if base.get("torch") else ""))
    return " · ".join(parts) or None


def _cuda_line(facts: dict) -> str:
    # the deployed service's toolkit is the one serving uses (checks judge it too)
    home_key = "service.cuda_home" if isinstance(_v(facts, "service.cuda_home"), dict) else "cuda_home"
    home = _v(facts, home_key)
    whose = " (service)" if home_key == "service.cuda_home" else ""
    return f"{home['path']} (from {home['rule']}{whose}) · {home.get('version') or 'no version'}" if home else _why(facts, home_key)


def _venv_line(facts: dict) -> str:
    venv = _v(facts, "venv")
    return f"{venv['path']} (from {venv['rule']}) · Python {venv.get('python')}" if venv else _why(facts, "venv")


def _service_line(facts: dict) -> str | None:
    serve = _v(facts, "service.serve")
    if not serve:
        return None
    return (f"{serve.get('model')} on {serve.get('host')}:{serve.get('port')} · TP {serve.get('tensor_parallel_size')}"
            + (" · API key set" if serve.get("api_key_set") else " · no API key"))


def _deep_lines(facts: dict) -> list[tuple[str, str]]:
    deep = _v(facts, "deep")
    if not deep:
        return []
    steps, lines = [], []
    for name in ("torch_import", "cuda_init", "matmul", "triton_kernel"):
        step = deep.get(name) or {}
        state = "ok" if step.get("ok") else "n/a" if step.get("ok") is None and str(step.get("error") or "").startswith("skipped") else "FAILED"
        secs = f" {step['seconds']:.1f}s" if isinstance(step.get("seconds"), (int, float)) else ""
        steps.append(f"{name} {state}{secs}")
    lines.append(("deep", " · ".join(steps)))
    for name in ("torch_import", "cuda_init", "matmul", "triton_kernel"):
        step = deep.get(name) or {}
        error = str(step.get("error") or "")
        if step.get("ok") is False and not error.startswith("not run"):
            # the last line of the error is what to search for; the fact keeps the whole tail
            lines.append(("", f"{name}: {error.strip().splitlines()[-1][:300] if error.strip() else 'failed'}"))
    return lines


def _safe(label: str, fn, facts: dict) -> list[tuple[str, str]]:
    """A summary line, or one saying its facts have a shape this doctor does not know (a snapshot
    edited by hand, or from another version): the header never stops the report."""
    try:
        got = fn(facts)
    except (TypeError, KeyError, AttributeError, ValueError, IndexError) as e:
        return [(label, f"(facts of an unexpected shape: {type(e).__name__}: {e})")]
    if got is None:
        return []
    return got if isinstance(got, list) else [(label, got)]


def summary_lines(facts: dict) -> list[tuple[str, str]]:
    """(label, text) lines that say what the doctor looked at."""
    lines = _safe("gpu", gpu_line, facts) + _safe("cuda", _cuda_line, facts) + _safe("venv", _venv_line, facts)
    if _v(facts, "venv"):
        lines += _safe("stack", stack_line, facts)
    lines += _safe("service", _service_line, facts)
    if "service.manager" in facts:
        lines += _safe("manager", manager_line, facts)
    lines += _safe("install", install_line, facts)
    lines += _safe("deep", _deep_lines, facts)
    return lines


# -- findings ---------------------------------------------------------------------------------------


def _scalar(val) -> str:
    if isinstance(val, (dict, list, tuple)):
        return json.dumps(val, default=str)
    return str(val)


def evidence_lines(evidence: dict) -> list[str]:
    """Evidence as `key: value` lines; dicts one level deep as indented lines, None left out."""
    out = []
    for key, val in (evidence or {}).items():
        if val is None or val == {}:
            continue
        if isinstance(val, dict):
            out.append(f"{key}:")
            out += [f"  {k}: {_scalar(v)}" for k, v in val.items() if v is not None]
        elif isinstance(val, (list, tuple)) and val and any(isinstance(v, (dict, list)) for v in val):
            out.append(f"{key}:")
            out += [f"  - {_scalar(v)}" for v in val]
        elif isinstance(val, (list, tuple)):
            out.append(f"{key}: {', '.join(str(v) for v in val)}")
        else:
            out.append(f"{key}: {val}")
    return out


def render_finding(console: Console, f: dict) -> None:
    sev = f["severity"]
    console.print(f"  {f['title']}", prefix=f"  {MARK[sev]} {f['id']}", prefix_style=STYLE[sev])
    for line in evidence_lines(f.get("evidence") or {}):
        console.print(line, style=STYLE["dim"], prefix="      ")
    for row in f.get("lines") or []:
        console.print(f"{row.get('line', ''):>6} | {row.get('text', '')}", style=STYLE["dim"], prefix="      ", wrap=False)
    fix = f.get("fix") or {}
    if fix.get("text"):
        console.print(fix["text"], prefix="      fix: ")
    for cmd in fix.get("commands") or []:
        console.print(cmd, style="bold", prefix="          ", wrap=False)
    for link in f.get("links") or []:
        console.print(link, style=STYLE["dim"], prefix="      see: ", wrap=False)


def count_statuses(checks: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in checks.values():
        word = status.split(":", 1)[0]
        counts[word] = counts.get(word, 0) + 1
    return counts


def closing_line(report: dict) -> str:
    by_sev = {s: sum(1 for f in report["findings"] if f["severity"] == s) for s in SEVERITIES}
    found = ", ".join(f"{n} {s}{'s' if n != 1 and s != 'info' else ''}" for s, n in by_sev.items())
    checks = report.get("checks") or {}
    gaps = report.get("not_checked") or []
    if report["exit_code"] == 0:
        # "no errors" only when the parts that matter were all judged
        found = (f"no errors in what could be checked, but NOT checked: {', '.join(g['what'] for g in gaps)} · "
                 if gaps else "no errors · ") + found
    if not checks:
        return found
    counts = count_statuses(checks)
    ran = ", ".join(f"{n} {w}" for w, n in sorted(counts.items()))
    return f"{found} · {len(checks)} checks ({ran})"


def render_report(report: dict, console: Console | None = None, title: str = "gptoss-doctor") -> None:
    console = console or make_console()
    header = f"{title} {report.get('doctor_version', '')}"
    if report.get("host"):
        header += f" · {report['host']}"
    if report.get("duration_s") is not None:
        header += f" · {report['duration_s']:.2f} s"
    console.print(header, style="bold", wrap=False)
    facts = report.get("facts") or {}
    if facts:
        for label, text in summary_lines(facts):
            console.print(text, prefix=f"  {label:<8} ", prefix_style=STYLE["dim"])
    crashed = {k: v for k, v in (report.get("checks") or {}).items() if v.startswith("crashed")}
    for sev in SEVERITIES:
        group = [f for f in report["findings"] if f["severity"] == sev]
        if not group:
            continue
        console.print()
        console.print(f"{HEADING[sev]} ({len(group)})", style=STYLE[sev])
        for f in group:
            render_finding(console, f)
    gaps = report.get("not_checked") or []
    if gaps:
        console.print()
        console.print(f"Not checked ({len(gaps)})", style=STYLE["warning"])
        for g in gaps:
            skipped = f" ({len(g['checks'])} checks skipped)" if g.get("checks") else ""
            console.print(f"{g['why']}{skipped}: {g['do']}", prefix=f"  - {g['what']}: ")
    if crashed:
        console.print()
        console.print(f"Checks that crashed ({len(crashed)}): a doctor bug, please report", style=STYLE["warning"])
        for cid, status in crashed.items():
            console.print(f"  {cid}: {status}")
    console.print()
    ok = report["exit_code"] == 0 and not gaps
    console.print(closing_line(report), style=STYLE["ok" if ok else "error" if report["exit_code"] else "warning"])


def render_check_list(specs: list, console: Console | None = None, signatures: list | None = None) -> None:
    console = console or make_console()
    width = max((len(s.id) for s in [*specs, *(signatures or [])]), default=10)
    for s in specs:
        console.print(f"{s.severity:<7} {s.category:<10} {s.title}", prefix=f"{s.id:<{width}}  ", prefix_style="bold")
    if signatures:
        console.print()
        console.print(f"Log signatures ({len(signatures)}), matched by `gptoss-doctor logs`:", style="bold")
        for sig in signatures:
            console.print(f"{sig.severity:<7} {'log':<10} {sig.title}", prefix=f"{sig.id:<{width}}  ", prefix_style="bold")


def render_explain(entry: dict, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(f"{entry['id']}  ({entry['kind']}, {entry['severity']})", style="bold", wrap=False)
    console.print(entry["title"])
    if entry.get("text"):
        console.print()
        for para in entry["text"].split("\n\n"):
            console.print(" ".join(para.split()))
            console.print()
    if entry.get("needs"):
        console.print("needs facts: " + ", ".join(entry["needs"]), style=STYLE["dim"])
    for cmd in entry.get("commands") or []:
        console.print(cmd, style="bold", prefix="    ", wrap=False)
    if entry.get("supervisor_commands"):
        console.print("without systemd (gptoss-supervise runs the service):", style=STYLE["dim"])
        for cmd in entry["supervisor_commands"]:
            console.print(cmd, style="bold", prefix="    ", wrap=False)
    for link in entry.get("links") or []:
        console.print(link, style=STYLE["dim"], prefix="see: ", wrap=False)
