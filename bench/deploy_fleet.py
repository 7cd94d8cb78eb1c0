"""Benchmark: first deploy and idempotent re-run of deploys/gptoss.py on 1, 2 and 4 local hosts.

    sudo .venv/bin/python bench/deploy_fleet.py [--sizes 1,2,4] [--json results.json]

For each size a fleet of its own is rebuilt from bare hosts (`gptoss-testbed down`, then
`up --hosts N`; state in --state-dir, addresses from --first-address, index on --index-port, so
the default fleet at 127.0.0.11 is left alone), then `pyinfra -y --json inventories/testbed.py
deploys/gptoss.py` runs twice.
The first run must succeed everywhere; the second must change nothing (pyinfra's JSON totals).
Goals: re-run of 4 hosts <= 1.5x the re-run of 1 host, and <= 10 s. Exit 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventories" / "testbed.py"
RERUN_RATIO_GOAL = 1.5
RERUN_SECONDS_GOAL = 10.0


def testbed(*args: str) -> None:
    exe = shutil.which("gptoss-testbed") or str(Path(sys.executable).with_name("gptoss-testbed"))
    r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=1200, env=os.environ)
    if r.returncode:
        sys.exit(f"deploy_fleet: gptoss-testbed {' '.join(args)} failed: {r.stderr.strip()[-500:]}")


def deploy() -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", "--json", str(INVENTORY), "deploys/gptoss.py"],
        cwd=REPO, capture_output=True, text=True, timeout=1800, env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )
    seconds = time.perf_counter() - t0
    try:
        res = json.loads(r.stdout)["results"]
    except (ValueError, KeyError, TypeError):
        sys.exit(f"deploy_fleet: pyinfra failed (rc {r.returncode}): {r.stderr.strip()[-1500:]}")
    if r.returncode or res["failed_hosts"] or res["totals"]["error"]:
        sys.exit(f"deploy_fleet: deploy failed on {res['failed_hosts']}: {r.stderr.strip()[-1500:]}")
    totals = dict(res["totals"])
    totals["changed"] = sorted({op["name"] for op in res["operations"] if op["success"]})
    return seconds, totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,2,4", help="host counts (default 1,2,4)")
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    ap.add_argument("--state-dir", default="/var/lib/gptoss-testbed-bench", help="the bench fleet's state dir")
    ap.add_argument("--first-address", default="127.0.0.71", help="first host address of the bench fleet")
    ap.add_argument("--index-port", default="8900", help="port of the bench fleet's package index")
    args = ap.parse_args(argv)
    # inventories/testbed.py and gptoss-testbed both read this: the bench fleet is its own.
    os.environ["GPTOSS_TESTBED_STATE"] = args.state_dir
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes {args.sizes!r}: give comma-separated integers such as 1,2,4")

    # One doctor wheel for the whole benchmark: edits to doctor/ while it runs must not look
    # like deploy changes (the deploy reinstalls the doctor whenever its wheel changes).
    wheel_dir = Path(args.state_dir + "-wheel")
    shutil.rmtree(wheel_dir, ignore_errors=True)
    uv = str(Path(sys.executable).with_name("uv"))
    subprocess.run([uv, "build", "--wheel", "--quiet", "--out-dir", str(wheel_dir), str(REPO / "doctor")], check=True)
    os.environ["GPTOSS_DOCTOR_WHEEL"] = str(next(wheel_dir.glob("*.whl")))

    rows = []
    for n in sizes:
        testbed("down")
        testbed("up", "--hosts", str(n), "--first-address", args.first_address, "--index-port", str(args.index_port))
        first_s, first_totals = deploy()
        rerun_s, rerun_totals = deploy()
        rows.append({"hosts": n, "first_s": round(first_s, 2), "first_changed_ops": first_totals["success"],
                     "rerun_s": round(rerun_s, 2), "rerun_changed_ops": rerun_totals["success"],
                     "rerun_unchanged_ops": rerun_totals["no_change"], "rerun_changed": rerun_totals["changed"]})
        print(f"{n} host(s): first deploy {first_s:6.2f} s ({first_totals['success']} ops changed), "
              f"re-run {rerun_s:5.2f} s ({rerun_totals['success']} changed, {rerun_totals['no_change']} unchanged)"
              + (f" changed: {', '.join(rerun_totals['changed'])}" if rerun_totals["changed"] else ""),
              flush=True)

    by = {r["hosts"]: r for r in rows}
    goals = {}
    if 1 in by and 4 in by:
        ratio = by[4]["rerun_s"] / by[1]["rerun_s"]
        goals["rerun_4_over_1"] = {"value": round(ratio, 2), "goal": f"<= {RERUN_RATIO_GOAL}", "met": ratio <= RERUN_RATIO_GOAL}
    if 4 in by:
        goals["rerun_4_seconds"] = {"value": by[4]["rerun_s"], "goal": f"<= {RERUN_SECONDS_GOAL}",
                                    "met": by[4]["rerun_s"] <= RERUN_SECONDS_GOAL}
    goals["reruns_change_nothing"] = {"value": sum(r["rerun_changed_ops"] for r in rows), "goal": "0",
                                      "met": all(r["rerun_changed_ops"] == 0 for r in rows)}
    for name, g in goals.items():
        print(f"goal {name}: {g['value']} (goal {g['goal']}) {'met' if g['met'] else 'MISSED'}")
    testbed("down")
    out = {"machine": f"{platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}", "rows": rows, "goals": goals}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if all(g["met"] for g in goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
