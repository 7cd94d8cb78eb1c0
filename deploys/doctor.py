"""Fleet doctor: one report for the whole fleet.

    pyinfra INV deploys/doctor.py [--data gptoss_doctor_json=PATH]   table at the end (JSON to PATH)
    python deploys/doctor.py INV [--json] [--limit HOST]...          the same through pyinfra's API

Collect, then judge, then render: `gptoss-doctor collect` runs on every host in parallel (the
doctor the deploy installed at /opt/gptoss/doctor, on PATH as gptoss-doctor), only the snapshot
comes back, and the controller's own checks judge it (gptoss_doctor.report.diagnose ->
checks.run_checks, the controller's knowledge), so every host is judged by the same rules.
One table: hosts by findings, with drift from each host's manifest (/etc/gptoss/manifest.json),
and each serving host's state as the balancers (hosts of the `gptoss_lb` group) see it, read from
HAProxy's runtime socket on each balancer (`show stat`): UP, DRAIN, MAINT, DOWN and its last check.

Exit code, the doctor's contract over the fleet: the worst host's. 0: no error finding anywhere;
1: an error finding on some host; 2: a host could not be read (unreachable, no doctor) or bad
invocation. Under the pyinfra CLI a host with an error finding fails its operation, so pyinfra
exits 1 too.
"""

from __future__ import annotations

if __name__ == "__main__":  # script mode: gevent first, as the pyinfra CLI does
    from gevent import monkey

    monkey.patch_all()

import json
import os
import shlex
import sys

from gptoss_deploy import haproxy
from gptoss_deploy.doctor import LINK, split_exit_status, with_exit_status

SCHEMA = "gptoss-doctor/fleet@1"
DOCTOR = LINK  # gptoss-doctor on PATH, as the deploy links it
COLLECT = with_exit_status(f"timeout 300 {DOCTOR} collect")


# -- judge (pure) --------------------------------------------------------------------------------

def unreadable(name: str, why: str) -> dict:
    return {"host": name, "exit_code": 2, "error": why, "stack": None, "vllm_manifest": None,
            "vllm_installed": None, "drift": [], "counts": {}, "findings": []}


def extra_stack_files(data: dict) -> tuple[str, ...]:
    """The site's own stacks (gptoss_extra_stack_files, on the controller), as the deploy reads them."""
    v = data.get("gptoss_extra_stack_files")
    return tuple([v] if isinstance(v, str) else list(v or ()))


def judge(name: str, stdout: str, stderr: str, extra_stacks: tuple[str, ...] = (), wanted: str | None = None) -> dict:
    """One host's row from `gptoss-doctor collect` output, judged here by the controller's checks
    (checks.run_checks) with the controller's knowledge plus the site's stacks."""
    from gptoss_doctor import knowledge
    from gptoss_doctor.checks import run_checks
    from gptoss_doctor.report import build_report
    from gptoss_doctor.snapshot import SnapshotError, load_snapshot

    code, err_lines = split_exit_status(stderr)
    if code != 0 or not stdout.strip():
        tail = err_lines[-1:] or ["no output"]
        hint = "gptoss-doctor is not installed there (run deploys/gptoss.py)" if code in (126, 127) else tail[0][:300]
        return unreadable(name, f"`gptoss-doctor collect` exited {code}: {hint}")
    try:
        snap = load_snapshot(stdout, f"{name}:gptoss-doctor collect")
    except SnapshotError as e:
        return unreadable(name, f"its snapshot is unreadable: {e}")
    try:
        kb = knowledge.load(extra_stack_files=[os.path.expanduser(p) for p in extra_stacks])
    except (knowledge.KnowledgeError, OSError) as e:
        return unreadable(name, f"the knowledge (with gptoss_extra_stack_files={list(extra_stacks)}) is invalid: {e}")
    findings, statuses = run_checks(snap, kb)
    report = build_report(findings, snap.facts, statuses, name)
    manifest = snap.get("manifest") if snap.has("manifest") else None
    installed = (snap.get("vllm.install") or {}).get("version") if snap.has("vllm.install") else None
    shown = [f for f in report["findings"] if f["severity"] in ("error", "warning")]
    return {
        "host": name,
        "exit_code": report["exit_code"],
        "error": None,
        "stack": (manifest or {}).get("stack"),
        "vllm_manifest": ((manifest or {}).get("versions") or {}).get("vllm"),
        "vllm_installed": installed,
        "stack_wanted": wanted,
        "drift": drift_of(report["findings"], manifest, wanted),
        "counts": {s: sum(1 for f in report["findings"] if f["severity"] == s) for s in ("error", "warning", "info")},
        "findings": [{"id": f["id"], "severity": f["severity"], "title": f["title"],
                      "fix": (f.get("fix") or {}).get("text")} for f in shown],
    }


def drift_of(findings: list[dict], manifest: dict | None, wanted: str | None = None) -> list[str]:
    """What differs from the manifest (the doctor's manifest-drift finding), and a manifest
    stack other than the inventory's gptoss_stack (an unfinished rollout) (pure)."""
    if manifest is None:
        return ["no manifest"]
    out = []
    if wanted and manifest.get("stack") != wanted:
        out.append(f"stack {manifest.get('stack')} (inventory: {wanted})")
    for f in findings:
        if f["id"] == "manifest-drift":
            for d in (f.get("evidence") or {}).get("drift") or []:
                out.append(f"{d.get('name')} {d.get('installed') or 'missing'} (manifest {d.get('manifest')})")
    return out


def balancer_view(name: str, ok: bool, stdout: str, stderr: str) -> dict:
    """One balancer's `show stat`: {"host", "error", "servers": {server: {status, scur, check}}} (pure)."""
    servers = haproxy.parse_stat(stdout) if ok else {}
    if not ok or not servers:
        why = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"])[-1][:300]
        return {"host": name, "error": f"cannot read haproxy's runtime socket {haproxy.ADMIN_SOCKET}: {why} "
                                       f"(run deploys/gptoss.py for this gptoss_lb host)", "servers": {}}
    return {"host": name, "error": None, "servers": servers}


def in_rotation(row: dict, balancers: list[dict]) -> str:
    """How the balancers see one serving host: "UP", "DRAIN", "DOWN (L7STS)", "absent", one per balancer (pure)."""
    seen = []
    for b in balancers:
        s = b["servers"].get(row["host"])
        if b["error"]:
            seen.append("unknown")
        elif s is None:
            seen.append("absent")
        else:
            state = s["status"].split()[0]
            seen.append(state + (f" ({s['check']})" if state != "UP" and s["check"] else ""))
    return ", ".join(dict.fromkeys(seen))


def fleet_report(rows: list[dict], balancers: list[dict] = ()) -> dict:
    rows = sorted(rows, key=lambda r: (-r["exit_code"], -r["counts"].get("error", 0), -r["counts"].get("warning", 0), r["host"]))
    balancers = sorted(balancers, key=lambda b: b["host"])
    if balancers:
        for r in rows:
            r["balancer"] = in_rotation(r, balancers)
    worst = max([r["exit_code"] for r in rows] + [2 for b in balancers if b["error"]], default=0)
    return {"schema": SCHEMA, "exit_code": worst, "hosts": rows, "balancers": balancers}


def render_table(report: dict, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, width=160, highlight=False)
    table = Table(title=f"gptoss fleet doctor: {len(report['hosts'])} host(s)", show_lines=False)
    balancers = report.get("balancers") or []
    cols = ["host", "stack (manifest)", "vLLM installed", "drift from manifest"] + (["balancer"] if balancers else [])
    for col in cols + ["errors", "warnings", "findings"]:
        table.add_column(col, overflow="fold")
    style = {0: "green", 1: "red", 2: "magenta"}
    for r in report["hosts"]:
        found = r["error"] or ", ".join(f["id"] for f in r["findings"]) or "-"
        lb = [r.get("balancer") or "-"] if balancers else []
        table.add_row(r["host"], r["stack"] or "-", r["vllm_installed"] or "-", "; ".join(r["drift"]) or "none", *lb,
                      str(r["counts"].get("error", "-")), str(r["counts"].get("warning", "-")), found,
                      style=style.get(r["exit_code"]))
    console.print(table)
    for b in balancers:
        seen = ", ".join(f"{n} {s['status']} ({s['scur']} in flight)" for n, s in b["servers"].items())
        console.print(f"balancer {b['host']}: " + (b["error"] or seen or "no servers"))
    worst = report["exit_code"]
    console.print({0: "no errors on any host", 1: "error findings: see the hosts in red (gptoss-doctor on the host explains)",
                   2: "some hosts could not be read"}[worst] + f" · exit {worst}")


def emit(report: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        render_table(report)


def run_collect(host) -> tuple[str, str]:
    ok, out = host.run_shell_command(COLLECT, print_output=False, print_input=False)
    return out.stdout, out.stderr


def is_balancer(host) -> bool:
    from gptoss_deploy.balancer import is_balancer as lb

    return lb(host)


def read_balancer(host) -> dict:
    ok, out = host.run_shell_command(haproxy.show_stat_command(), print_output=False, print_input=False)
    return balancer_view(host.name, ok, out.stdout, out.stderr)


# -- script mode: pyinfra's API ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    ap = argparse.ArgumentParser(prog="python deploys/doctor.py", description="gptoss fleet doctor")
    ap.add_argument("inventory")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--limit", action="append", default=[], metavar="HOST", help="only these hosts (repeatable)")
    a = ap.parse_args(argv)
    if not os.path.isfile(a.inventory):
        print(f"gptoss fleet doctor: inventory {a.inventory}: no such file; fix: give an inventory file such as "
              f"inventories/cluster.py", file=sys.stderr)
        return 2

    import logging

    import gevent
    from pyinfra.api import Config, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    logging.getLogger("pyinfra").setLevel(logging.ERROR)  # known_hosts chatter; our errors are rows
    # The order pyinfra's CLI sets things up in: the inventory file may read the contexts.
    state, config = State(), Config()
    ctx_state.set(state)
    ctx_config.set(config)
    try:
        inventory = make_inventory(a.inventory, cwd=os.getcwd())
    except Exception as e:  # the inventory's own one-line errors (PyinfraError and the like)
        print(f"gptoss fleet doctor: inventory {a.inventory}: {e}", file=sys.stderr)
        return 2
    unknown = [n for n in a.limit if inventory.get_host(n, None) is None]
    if unknown:
        print(f"gptoss fleet doctor: --limit {unknown[0]}: not a host of {a.inventory}", file=sys.stderr)
        return 2
    ctx_inventory.set(inventory)
    wanted = [h for h in inventory if not a.limit or h.name in a.limit]
    state.init(inventory, config, initial_limit=wanted if a.limit else None)
    with ctx_state.use(state):
        try:
            connect_all(state)
        except PyinfraError:
            pass  # no host reachable: every row says so below
        active = [h for h in wanted if h in state.active_hosts]

        def one(h):
            with ctx_host.use(h):
                if is_balancer(h):
                    try:
                        return read_balancer(h)
                    except Exception as e:
                        return balancer_view(h.name, False, "", f"{type(e).__name__}: {e}")
                try:
                    data = h.data.dict()
                    return judge(h.name, *run_collect(h), extra_stack_files(data), data.get("gptoss_stack"))
                except Exception as e:  # a lost connection: this host is unreadable
                    return unreadable(h.name, f"{type(e).__name__}: {e}"[:300])

        jobs = [gevent.spawn(one, h) for h in active]
        gevent.joinall(jobs)
        rows = [j.value for j in jobs if "servers" not in j.value]
        lbs = [j.value for j in jobs if "servers" in j.value]
        rows += [unreadable(h.name, "could not connect") for h in wanted if h not in active and not is_balancer(h)]
        lbs += [balancer_view(h.name, False, "", "could not connect") for h in wanted if h not in active and is_balancer(h)]
        for h in active:
            h.disconnect()
    report = fleet_report(rows, lbs)
    emit(report, a.json)
    return report["exit_code"]


# -- under the pyinfra CLI: one operation per host; the last to finish prints the table ------------


def _deploy_for_this_host() -> None:
    from pyinfra import host
    from pyinfra.api import StringCommand, operation

    @operation()
    def fleet_doctor(json_path: str | None):
        """`gptoss-doctor collect` on this host, judged on the controller; the table once all are in."""
        if not host.state.is_executing:
            return
        st = host.state
        fleet = getattr(st, "_gptoss_fleet_doctor", None)
        if fleet is None:
            fleet = st._gptoss_fleet_doctor = {"rows": {}, "expected": {h.name for h in st.inventory.get_active_hosts()}}
        if is_balancer(host):
            try:
                row = read_balancer(host)
            except Exception as e:  # a lost connection
                row = balancer_view(host.name, False, "", f"{type(e).__name__}: {e}")
            row["exit_code"] = 2 if row["error"] else 0
        else:
            try:
                data = host.data.dict()
                row = judge(host.name, *run_collect(host), extra_stack_files(data), data.get("gptoss_stack"))
            except Exception as e:  # a lost connection: this host is unreadable
                row = unreadable(host.name, f"{type(e).__name__}: {e}"[:300])
        fleet["rows"][host.name] = row
        if fleet["expected"] <= set(fleet["rows"]):
            rows = [r for r in fleet["rows"].values() if "servers" not in r]
            lbs = [r for r in fleet["rows"].values() if "servers" in r]
            rows += [unreadable(h.name, "could not connect") for h in st.inventory
                     if st.is_host_in_limit(h) and h.name not in fleet["rows"] and not is_balancer(h)]
            report = fleet_report(rows, lbs)
            render_table(report)
            if json_path:
                with open(json_path, "w") as f:
                    json.dump(report, f, indent=1)
        if row["exit_code"]:
            why = row["error"] or ", ".join(f"{f['severity']} {f['id']}" for f in row.get("findings", []) if f["severity"] == "error")
            yield StringCommand("echo", shlex.quote(f"gptoss fleet doctor: {host.name}: {why}"), ">&2", "&&", "false")
        elif "servers" in row:
            host.noop(f"balancer: {len(row['servers'])} server(s)")
        else:
            host.noop(f"{row['counts'].get('warning', 0)} warning(s), no errors")

    fleet_doctor(name="gptoss-doctor collect, judged on the controller", json_path=host.data.get("gptoss_doctor_json"))


if __name__ == "__main__":
    raise SystemExit(main())
else:
    from pyinfra.context import ctx_host

    if ctx_host.isset():  # exec'd by `pyinfra INV deploys/doctor.py` for one host
        _deploy_for_this_host()
