"""Human output with rich: a header, a few facts, findings grouped by severity, a closing count.

Everything shown comes from the (already redacted) report dict, so what a user pastes is what
`--json` holds. Text that came from the box (paths, log lines) goes in as `Text`, never as
markup. On a terminal it is coloured; piped, it is plain text with no wrapping.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from rich.console import Console
from rich.text import Text

from .findings import SEVERITIES

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan", "ok": "green", "dim": "dim"}
MARK = {"error": "✗", "warning": "!", "info": "i"}
HEADING = {"error": "Errors", "warning": "Warnings", "info": "Info"}


def make_console(stream: TextIO | None = None) -> Console:
    stream = stream or sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream,
        highlight=False,
        soft_wrap=True,  # never re-wrap commands: they must paste as printed
        no_color=not tty,
        force_terminal=tty,
        emoji=False,
        width=None if tty else 200,
    )


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


def summary_lines(facts: dict) -> list[tuple[str, str]]:
    """(label, text) lines that say what the doctor looked at."""
    lines = [("gpu", gpu_line(facts))]
    # the deployed service's toolkit is the one serving uses (checks judge it too)
    home_key = "service.cuda_home" if isinstance(_v(facts, "service.cuda_home"), dict) else "cuda_home"
    home = _v(facts, home_key)
    whose = " (service)" if home_key == "service.cuda_home" else ""
    lines.append(
        ("cuda", f"{home['path']} (from {home['rule']}{whose}) · {home.get('version') or 'no version'}" if home else _why(facts, home_key))
    )
    venv = _v(facts, "venv")
    lines.append(("venv", f"{venv['path']} (from {venv['rule']}) · Python {venv.get('python')}" if venv else _why(facts, "venv")))
    if venv:
        lines.append(("stack", stack_line(facts)))
    serve = _v(facts, "service.serve")
    if serve:
        lines.append(
            (
                "service",
                f"{serve.get('model')} on {serve.get('host')}:{serve.get('port')} · TP {serve.get('tensor_parallel_size')}"
                + (" · API key set" if serve.get("api_key_set") else " · no API key"),
            )
        )
    if "service.manager" in facts:
        lines.append(("manager", manager_line(facts)))
    install = install_line(facts)
    if install:
        lines.append(("install", install))
    deep = _v(facts, "deep")
    if deep:
        steps = []
        for name in ("torch_import", "cuda_init", "matmul", "triton_kernel"):
            step = deep.get(name) or {}
            state = "ok" if step.get("ok") else "n/a" if step.get("ok") is None and step.get("error", "").startswith("skipped") else "FAILED"
            secs = f" {step['seconds']:.1f}s" if isinstance(step.get("seconds"), (int, float)) else ""
            steps.append(f"{name} {state}{secs}")
        lines.append(("deep", " · ".join(steps)))
        for name in ("torch_import", "cuda_init", "matmul", "triton_kernel"):
            step = deep.get(name) or {}
            error = step.get("error") or ""
            if step.get("ok") is False and not error.startswith("not run"):
                # the last line of the error is what to search for; the fact keeps the whole tail
                lines.append(("", f"{name}: {error.strip().splitlines()[-1][:300] if error.strip() else 'failed'}"))
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
        if val is None:
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
    head = Text("  ")
    head.append(f"{MARK[sev]} {f['id']}", style=STYLE[sev])
    head.append(f"  {f['title']}")
    console.print(head)
    for line in evidence_lines(f.get("evidence") or {}):
        console.print(Text("      " + line, style=STYLE["dim"]))
    for row in f.get("lines") or []:
        console.print(Text(f"      {row.get('line', ''):>6} | {row.get('text', '')}", style=STYLE["dim"]))
    fix = f.get("fix") or {}
    if fix.get("text"):
        console.print(Text("      fix: " + fix["text"]))
    for cmd in fix.get("commands") or []:
        console.print(Text("          " + cmd, style="bold"))
    for link in f.get("links") or []:
        console.print(Text("      see: " + link, style=STYLE["dim"]))


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
    if not checks:
        return found
    counts = count_statuses(checks)
    ran = ", ".join(f"{n} {w}" for w, n in sorted(counts.items()))
    return f"{found} · {len(checks)} checks ({ran})"


def render_report(report: dict, console: Console | None = None, title: str = "gptoss-doctor") -> None:
    console = console or make_console()
    header = Text(f"{title} {report.get('doctor_version', '')}", style="bold")
    if report.get("host"):
        header.append(f" · {report['host']}")
    if report.get("duration_s") is not None:
        header.append(f" · {report['duration_s']:.2f} s")
    console.print(header)
    facts = report.get("facts") or {}
    if facts:
        for label, text in summary_lines(facts):
            console.print(Text(f"  {label:<8}", style=STYLE["dim"]) + Text(text))
    crashed = {k: v for k, v in (report.get("checks") or {}).items() if v.startswith("crashed")}
    for sev in SEVERITIES:
        group = [f for f in report["findings"] if f["severity"] == sev]
        if not group:
            continue
        console.print()
        console.print(Text(f"{HEADING[sev]} ({len(group)})", style=STYLE[sev]))
        for f in group:
            render_finding(console, f)
    if crashed:
        console.print()
        console.print(Text(f"Checks that crashed ({len(crashed)}): a doctor bug, please report", style=STYLE["warning"]))
        for cid, status in crashed.items():
            console.print(Text(f"  {cid}: {status}"))
    console.print()
    ok = report["exit_code"] == 0
    console.print(Text(("no errors · " if ok else "") + closing_line(report), style=STYLE["ok" if ok else "error"]))


def render_check_list(specs: list, console: Console | None = None) -> None:
    console = console or make_console()
    width = max((len(s.id) for s in specs), default=10)
    for s in specs:
        line = Text(f"{s.id:<{width}}  ", style="bold")
        line.append(f"{s.severity:<7} {s.category:<10} ", style=STYLE.get(s.severity, ""))
        line.append(s.title)
        console.print(line)


def render_explain(entry: dict, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(Text(f"{entry['id']}  ({entry['kind']}, {entry['severity']})", style="bold"))
    console.print(Text(entry["title"]))
    if entry.get("text"):
        console.print()
        console.print(Text(entry["text"]))
    if entry.get("needs"):
        console.print(Text("\nneeds facts: " + ", ".join(entry["needs"]), style=STYLE["dim"]))
    for cmd in entry.get("commands") or []:
        console.print(Text("    " + cmd, style="bold"))
    if entry.get("supervisor_commands"):
        console.print(Text("without systemd (gptoss-supervise runs the service):", style=STYLE["dim"]))
        for cmd in entry["supervisor_commands"]:
            console.print(Text("    " + cmd, style="bold"))
    for link in entry.get("links") or []:
        console.print(Text("see: " + link, style=STYLE["dim"]))
