#!/usr/bin/env python3
"""Benchmark: how well `gptoss_doctor.logscan` triages real failure logs it was not written from.

    uv run python bench/triage_corpus.py [--json] [--show-held]

Runs logscan.scan() over three sets and prints, overall and broken down by set and by vendor:
  named    logs whose cause id is among the findings (at the cause's severity: an error for an
           error id, an error or warning for a warning id), out of the logs that are not healthy;
  silent   failed starts (the log shows vLLM failing or exiting) with no error finding at all;
  alarms   healthy logs with any warning or error finding.
and lists the misses (a log not named, silent or alarmed) with the ids that were found.

The sets:
  existing  tests/fixtures/logs, all but the constructed ones: the cause is the first id of the
            sidecar's `expect` with severity error, else warning, else the first id;
            near-miss-* and healthy-* are healthy. A log is a failed start when its sidecar says
            so (`failed_start`) or, failing that, when it expects an error id.
  dev       tests/fixtures/log_corpus/dev: rule writers may read these.
  held      tests/fixtures/log_corpus/held: kept aside, measured only. Their misses are counted
            by cause id; --show-held also names the files (do not use that while writing rules).
The corpus sidecars give `cause` ("healthy" for a clean start), `vendor` and `failed_start`
(tests/fixtures/log_corpus/README.md).

Logs are read as the doctor reads them: open(path, newline="") and logscan.split_lines(). Only a
finding's `id` and `severity` are used, so new finding fields do not matter; an id the signature
table does not know (a new family id) counts at error or warning severity.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "logs"
CORPUS = REPO / "tests" / "fixtures" / "log_corpus"
SETS = ("existing", "dev", "held")

try:
    from gptoss_doctor import logscan
except ImportError:  # run without the workspace installed: the package lives under doctor/
    sys.path.insert(0, str(REPO / "doctor"))
    from gptoss_doctor import logscan


def read_lines(path: Path) -> list[str]:
    # newline="": a progress bar's lone \r stays inside its line, as the doctor reads logs
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        return logscan.split_lines(f.read())


def table_severities() -> dict[str, str]:
    return {s.id: s.severity for s in logscan.load_signatures()}


def _field(finding, name: str):
    return finding.get(name) if isinstance(finding, dict) else getattr(finding, name, None)


def existing_cases(severity: dict[str, str]) -> list[dict]:
    cases = []
    for log in sorted(FIXTURES.glob("*.log")):
        meta = json.loads(log.with_suffix(".json").read_text(encoding="utf-8"))
        if meta.get("constructed"):
            continue
        expect = list(meta.get("expect") or [])
        healthy = log.stem.startswith(("near-miss-", "healthy-"))
        cause = "healthy"
        if not healthy and expect:
            by_level = {lvl: [i for i in expect if severity.get(i) == lvl] for lvl in ("error", "warning")}
            cause = (by_level["error"] or by_level["warning"] or expect)[0]
        failed = meta.get("failed_start")
        if failed is None:
            failed = not healthy and any(severity.get(i) == "error" for i in expect)
        cases.append({"set": "existing", "name": log.stem, "path": log, "cause": cause,
                      "vendor": meta.get("vendor") or _vendor_from_name(log.stem),
                      "failed_start": bool(failed)})
    return cases


def _vendor_from_name(stem: str) -> str:
    return "rocm" if any(t in stem for t in ("rocm", "gfx", "mi3", "hip", "strix")) else "unlabelled"


def corpus_cases(split: str) -> list[dict]:
    cases = []
    for log in sorted((CORPUS / split).glob("*.log")):
        side = log.with_suffix(".json")
        if not side.exists():  # tests/test_log_corpus.py reports it; the bench measures the rest
            print(f"warning: {log} has no sidecar; skipped", file=sys.stderr)
            continue
        meta = json.loads(side.read_text(encoding="utf-8"))
        cases.append({"set": split, "name": log.stem, "path": log, "cause": meta.get("cause", "?"),
                      "vendor": meta.get("vendor", "unlabelled"),
                      "failed_start": bool(meta.get("failed_start"))})
    return cases


def judge(case: dict, severity: dict[str, str]) -> dict:
    findings = logscan.scan(read_lines(case["path"]))
    found = [(str(_field(f, "id")), str(_field(f, "severity"))) for f in findings]
    levels = {s for _, s in found}
    cause = case["cause"]
    healthy = cause == "healthy"
    wanted = {"error": {"error"}, "warning": {"error", "warning"}}.get(
        severity.get(cause, "new"), {"error", "warning"} if cause not in severity else {"error", "warning", "info"})
    named = (not healthy) and any(i == cause and s in wanted for i, s in found)
    return {**{k: v for k, v in case.items() if k != "path"},
            "found": [f"{i}:{s}" for i, s in found],
            "healthy": healthy,
            "named": named,
            "silent": case["failed_start"] and "error" not in levels,
            "alarm": healthy and bool(levels & {"error", "warning"})}


def tally(results: list[dict]) -> dict:
    failing = [r for r in results if not r["healthy"]]
    starts = [r for r in results if r["failed_start"]]
    healthy = [r for r in results if r["healthy"]]
    named = sum(r["named"] for r in failing)
    return {"logs": len(results),
            "named": named, "failing": len(failing),
            "named_rate": round(named / len(failing), 3) if failing else None,
            "silent": sum(r["silent"] for r in starts), "failed_starts": len(starts),
            "alarms": sum(r["alarm"] for r in healthy), "healthy": len(healthy)}


def summarize(results: list[dict]) -> dict:
    by_set = {s: tally([r for r in results if r["set"] == s]) for s in SETS}
    vendors = sorted({r["vendor"] for r in results})
    by_vendor = {v: tally([r for r in results if r["vendor"] == v]) for v in vendors}
    misses = [r for r in results if (not r["healthy"] and not r["named"]) or r["silent"] or r["alarm"]]
    held_miss_causes = Counter(r["cause"] for r in misses if r["set"] == "held")
    return {"total": tally(results), "by_set": by_set, "by_vendor": by_vendor,
            "misses": misses, "held_miss_causes": dict(sorted(held_miss_causes.items()))}


def _line(label: str, t: dict) -> str:
    rate = "n/a" if t["named_rate"] is None else f"{100 * t['named_rate']:.1f}%"
    return (f"  {label:<12} logs {t['logs']:>4}   named {t['named']:>3}/{t['failing']:<3} ({rate:>6})"
            f"   silent {t['silent']:>3}/{t['failed_starts']:<3}   alarms {t['alarms']}/{t['healthy']}")


def render(summary: dict, show_held: bool) -> str:
    out = ["triage corpus: named = right cause among the findings; silent = failed start with no error;",
           "alarms = warning or error on a healthy start", "", _line("total", summary["total"]), "", "by set:"]
    out += [_line(s, t) for s, t in summary["by_set"].items()]
    out += ["", "by vendor:"] + [_line(v, t) for v, t in summary["by_vendor"].items()]
    out += ["", "misses:"]
    shown = [m for m in summary["misses"] if show_held or m["set"] != "held"]
    for m in shown:
        what = [w for w, on in (("not named", not m["healthy"] and not m["named"]),
                                ("SILENT", m["silent"]), ("ALARM", m["alarm"])) if on]
        out.append(f"  [{m['set']}] {m['name']}: cause {m['cause']} -> {', '.join(what)};"
                   f" found: {', '.join(m['found']) or 'nothing'}")
    if not show_held and summary["held_miss_causes"]:
        counts = ", ".join(f"{c} x{n}" for c, n in summary["held_miss_causes"].items())
        out.append(f"  [held] {sum(summary['held_miss_causes'].values())} misses by cause: {counts}"
                   " (--show-held names them)")
    if not summary["misses"]:
        out.append("  none")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the summary and every log's result as JSON")
    ap.add_argument("--show-held", action="store_true", help="name the held-aside logs that were missed")
    args = ap.parse_args(argv)
    severity = table_severities()
    cases = existing_cases(severity) + corpus_cases("dev") + corpus_cases("held")
    results = [judge(c, severity) for c in cases]
    summary = summarize(results)
    if args.json:
        if not args.show_held:
            summary["misses"] = [m for m in summary["misses"] if m["set"] != "held"]
        print(json.dumps(summary, indent=1))
    else:
        print(render(summary, args.show_held))
    return 0


if __name__ == "__main__":
    sys.exit(main())
