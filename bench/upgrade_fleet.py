"""Benchmark: rolling upgrade (deploys/upgrade.py) of 1 and 3 local hosts.

    sudo .venv/bin/python bench/upgrade_fleet.py [--json results.json]

On a fleet of its own (--state-dir, --first-address, --index-port; default 127.0.0.41-43, the
same one tests/test_fleet_upgrade.py uses), for 1 host (`--limit` the canary) and for 3 hosts:
deploy the OLD stack everywhere, delete NEW and the uv cache on every host, zero the loopback index's
counters, empty the controller's wheelhouse cache, then upgrade to NEW. Reported per run: the
wall time, the bytes the upstream (loopback) index served, and per host its time out of service
twice: as the upgrade measured it (drain -> gate passed) and as a /health probe every 100 ms saw
it (first failed probe -> first 200 again). The baseline is each host's own restart + health
gate on its current stack (`systemctl restart` then the same health gate), measured first.
A third run with gptoss_download_once=False shows what the hosts would pull without the wheelhouse.

Behind the balancer (a fleet of its own booted with `--lb`: --lb-state-dir, default 127.0.0.81-84,
the one tests/test_fleet_balancer.py uses): during an upgrade of its 3 hosts, two clients send
completions (every other one streamed) all along, one through the balancer, one straight to the
hosts in turn; reported: requests served and failed by each, their p50/p99 latency, and what the
balancer adds (lb - direct). `--only-balancer` runs just that part.

Goals (exit 1 if missed): every host's time out of service <= its own restart + health gate
(+1 s for the /version check and SSH round trips), and the downtime the probe saw <= the
probe's view of a plain restart (+0.3 s, three probe periods); 3-host upstream bytes <= 1.2x
the 1-host's; never more than one host down at once; 0 requests failed through the balancer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gptoss_testbed import exclusive

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventories" / "testbed.py"
BYTES_RATIO_GOAL = 1.2
SLACK_S = 1.0  # /version check + SSH round trips: part of the gate, not of a restart
PROBE_SLACK_S = 0.3  # three probe periods


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=1800, **kw)


def testbed(*args: str) -> str:
    exe = shutil.which("gptoss-testbed") or str(Path(sys.executable).with_name("gptoss-testbed"))
    r = sh([exe, *args], env=os.environ)
    if r.returncode:
        sys.exit(f"upgrade_fleet: gptoss-testbed {' '.join(args)} failed: {r.stderr.strip()[-500:]}")
    return r.stdout


def pyinfra(deploy: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "pyinfra", "-y", str(INVENTORY), deploy, *extra], cwd=REPO,
              env={**os.environ, "PYINFRA_PROGRESS": "off", **(env or {})})


def ssh(fleet: dict, address: str, command: str) -> str:
    r = sh(["ssh", "-i", fleet["ssh_key"], "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{address}", command])
    if r.returncode:
        sys.exit(f"upgrade_fleet: on {address}: `{command[:80]}` failed: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout


def healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:8000/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


class Prober(threading.Thread):
    """/health of every host every 100 ms; per host the seconds from first failure to 200 again."""

    def __init__(self, hosts: dict[str, str]):
        super().__init__(daemon=True)
        self.hosts, self.stop_event = hosts, threading.Event()
        self.down_since: dict[str, float] = {}
        self.downtime: dict[str, float] = {n: 0.0 for n in hosts}
        self.max_down = 0

    def run(self) -> None:
        deadline = time.monotonic() + 1200
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                t = time.monotonic()
                oks = dict(zip(self.hosts, pool.map(healthy, self.hosts.values())))
                self.max_down = max(self.max_down, sum(1 for ok in oks.values() if not ok))
                for n, ok in oks.items():
                    if not ok and n not in self.down_since:
                        self.down_since[n] = t
                    elif ok and n in self.down_since:
                        self.downtime[n] += t - self.down_since.pop(n)
                self.stop_event.wait(max(0.0, 0.1 - (time.monotonic() - t)))

    def stop(self) -> dict[str, float]:
        self.stop_event.set()
        self.join(10)
        return {n: round(v, 2) for n, v in self.downtime.items()}


def baseline(fleet: dict, name: str, address: str) -> tuple[float, float]:
    """One host's own restart + health gate on the stack it runs (the deploy's gate script, timed
    on the host), and its time out of service as the /health probe saw it."""
    import shlex

    from gptoss_deploy import config as C
    from gptoss_deploy.service import _HEALTH_PY

    prober = Prober({name: address})
    prober.start()
    out = ssh(fleet, address, (
        f"t0=$(date +%s.%N); systemctl restart {C.UNIT} && python3 -c {shlex.quote(_HEALTH_PY)} "
        f"http://{address}:8000 openai/gpt-oss-20b 60 {C.UNIT} {C.KEY_FILE} >/dev/null && "
        f"echo \"$(date +%s.%N) $t0\""))
    time.sleep(0.5)  # the probe sees the host back
    probed = prober.stop()[name]
    end, start = (float(x) for x in out.split())
    return round(end - start, 2), probed


def stats(fleet: dict, reset: bool = False) -> int:
    if reset:
        urllib.request.urlopen(urllib.request.Request(fleet["stats_url"] + "/reset", data=b"", method="POST"), timeout=10).read()
        return 0
    with urllib.request.urlopen(fleet["stats_url"], timeout=10) as r:
        return json.loads(r.read())["total_bytes"]


def run_upgrade(fleet: dict, hosts: dict[str, str], label: str, *extra: str) -> dict:
    from gptoss_deploy import config as C

    r = pyinfra("deploys/gptoss.py", "--data", f"gptoss_stack={fleet['old']}")
    if r.returncode:
        sys.exit(f"upgrade_fleet: deploying {fleet['old']} failed: {r.stderr.strip()[-1500:]}")
    for addr in fleet["addr"].values():
        # NEW nowhere, and no host's uv cache holds its wheels: every host must get them somewhere.
        ssh(fleet, addr, f"rm -rf {C.STACKS_DIR}/{fleet['new']} /var/cache/gptoss/uv/*")
    stats(fleet, reset=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = {"GPTOSS_UPGRADE_REPORT": str(report), "XDG_CACHE_HOME": f"{tmp}/cache"}
        prober = Prober(hosts)
        prober.start()
        t0 = time.perf_counter()
        limit = ["--limit", next(iter(hosts))] if len(hosts) == 1 else []
        r = pyinfra("deploys/upgrade.py", "--data", f"gptoss_stack={fleet['new']}", *limit, *extra, env=env)
        wall = time.perf_counter() - t0
        probed = prober.stop()
        if r.returncode:
            sys.exit(f"upgrade_fleet: {label} upgrade failed: {r.stderr.strip()[-2000:]}")
        rep = json.loads(report.read_text())
    return {"label": label, "hosts": len(hosts), "wall_s": round(wall, 2), "upstream_bytes": stats(fleet),
            "max_hosts_down": prober.max_down,
            "per_host": {h["host"]: {"out_of_service_s": h["out_of_service_s"], "restart_gate_s": h["restart_gate_s"],
                                     "probed_down_s": probed[h["host"]]} for h in rep["hosts"]}}


def balancer_run(state_dir: str, first_address: str, index_port: str) -> dict:
    """An upgrade of 3 hosts behind the balancer, with a client through it and one going direct."""
    from gptoss_testbed.client import Client

    env = {"GPTOSS_TESTBED_STATE": state_dir}
    saved = os.environ.get("GPTOSS_TESTBED_STATE")
    os.environ.update(env)
    try:
        lock = exclusive.hold(state_dir)  # noqa: F841  (held until this run returns)
        testbed("up", "--hosts", "3", "--lb", "--first-address", first_address, "--index-port", str(index_port))
        st = json.loads(testbed("status", "--json"))
        names = [s["name"] for s in st["stacks"]]
        old, new = names[-2], names[-1]
        r = pyinfra("deploys/gptoss.py", "--data", f"gptoss_stack={old}")
        if r.returncode:
            sys.exit(f"upgrade_fleet: deploying {old} behind the balancer failed: {r.stdout.strip()[-1500:]}")
        lb = f"{st['lb']['address']}:{st['lb']['port']}"
        direct = [f"{h['address']}:8000" for h in st["hosts"]]
        # the same load both ways: 4 workers each, at the same time
        through, straight = Client([lb], st["api_key"]), Client(direct, st["api_key"])
        through.start()
        straight.start()
        time.sleep(2)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            r = pyinfra("deploys/upgrade.py", "--data", f"gptoss_stack={new}",
                        env={"GPTOSS_UPGRADE_REPORT": f"{tmp}/report.json"})
        wall = time.perf_counter() - t0
        time.sleep(1)
        through.stop(), straight.stop()
        if r.returncode:
            sys.exit(f"upgrade_fleet: upgrade behind the balancer failed: {r.stdout.strip()[-2000:]}")
        lb_s, direct_s = through.summary(), straight.summary()
        added = {k: None if lb_s[k] is None or direct_s[k] is None else round(lb_s[k] - direct_s[k], 1)
                 for k in ("p50_ms", "p99_ms")}
        return {"label": "3 hosts behind the balancer", "upgrade": f"{old} -> {new}", "wall_s": round(wall, 2),
                "through_balancer": lb_s, "direct": direct_s, "balancer_adds_ms": added}
    finally:
        if saved is None:
            os.environ.pop("GPTOSS_TESTBED_STATE", None)
        else:
            os.environ["GPTOSS_TESTBED_STATE"] = saved


def print_balancer(b: dict) -> None:
    print(f"{b['label']} ({b['upgrade']}, wall {b['wall_s']:.2f} s):", flush=True)
    for k in ("through_balancer", "direct"):
        v = b[k]
        print(f"    {k:<17} served {v['served']:>5}  failed {v['failed']:>4}  p50 {v['p50_ms']} ms  p99 {v['p99_ms']} ms"
              + (f"  e.g. {v['first_failures'][0]}" if v["first_failures"] else ""), flush=True)
    print(f"    the balancer adds: p50 {b['balancer_adds_ms']['p50_ms']} ms, p99 {b['balancer_adds_ms']['p99_ms']} ms",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lb-state-dir", default="/var/lib/gptoss-testbed-lb", help="the balancer fleet's state dir")
    ap.add_argument("--lb-first-address", default="127.0.0.81", help="first host address of the balancer fleet")
    ap.add_argument("--lb-index-port", default="8781", help="port of the balancer fleet's package index")
    ap.add_argument("--only-balancer", action="store_true", help="only the upgrade behind the balancer")
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    ap.add_argument("--state-dir", default="/var/lib/gptoss-testbed-upgrade", help="the bench fleet's state dir")
    ap.add_argument("--first-address", default="127.0.0.41", help="first host address of the bench fleet")
    ap.add_argument("--index-port", default="8741", help="port of the bench fleet's package index")
    args = ap.parse_args(argv)
    if args.only_balancer:
        b = balancer_run(args.lb_state_dir, args.lb_first_address, args.lb_index_port)
        print_balancer(b)
        met = b["through_balancer"]["failed"] == 0
        print(f"goal failed_through_balancer: {b['through_balancer']['failed']} (goal 0): {'met' if met else 'MISSED'}")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"balancer": b}, indent=1) + "\n")
        return 0 if met else 1
    os.environ["GPTOSS_TESTBED_STATE"] = args.state_dir  # read by gptoss-testbed and inventories/testbed.py
    lock = exclusive.hold(args.state_dir)  # noqa: F841  (held until exit)
    testbed("up", "--hosts", "3", "--first-address", args.first_address, "--index-port", str(args.index_port))
    st = json.loads(testbed("status", "--json"))
    env = json.loads(testbed("env", "--json"))
    names = [s["name"] for s in st["stacks"]]
    fleet = {"ssh_key": st["ssh_key"], "stats_url": env["stats_url"], "old": names[-2], "new": names[-1],
             "addr": {h["name"]: h["address"] for h in st["hosts"]}}
    print(f"fleet: {', '.join(fleet['addr'])}; upgrade {fleet['old']} -> {fleet['new']}", flush=True)

    r = pyinfra("deploys/gptoss.py", "--data", f"gptoss_stack={fleet['old']}")
    if r.returncode:
        sys.exit(f"upgrade_fleet: deploying {fleet['old']} failed: {r.stderr.strip()[-1500:]}")
    measured = {n: baseline(fleet, n, a) for n, a in fleet["addr"].items()}
    base = {n: v[0] for n, v in measured.items()}
    base_probed = {n: v[1] for n, v in measured.items()}
    print("baseline restart + health gate: " + ", ".join(f"{n} {base[n]:.2f} s (probe saw {base_probed[n]:.2f} s down)"
                                                         for n in base), flush=True)

    canary = next(iter(fleet["addr"]))
    runs = [run_upgrade(fleet, {canary: fleet["addr"][canary]}, "1 host"),
            run_upgrade(fleet, fleet["addr"], "3 hosts"),
            run_upgrade(fleet, fleet["addr"], "3 hosts, download once off", "--data", "gptoss_download_once=False")]
    for run in runs:
        print(f"{run['label']:<27} wall {run['wall_s']:6.2f} s  upstream {run['upstream_bytes']:>9} bytes  "
              f"max hosts down at once {run['max_hosts_down']}", flush=True)
        for h, v in run["per_host"].items():
            print(f"    {h}: out of service {v['out_of_service_s']:.2f} s (baseline restart + gate {base[h]:.2f} s); "
                  f"probe saw it down {v['probed_down_s']:.2f} s (baseline restart {base_probed[h]:.2f} s)", flush=True)

    b = balancer_run(args.lb_state_dir, args.lb_first_address, args.lb_index_port)
    print_balancer(b)

    one, three = runs[0], runs[1]
    ratio = three["upstream_bytes"] / max(one["upstream_bytes"], 1)
    worst = max((v["out_of_service_s"] - base[h], h) for run in runs for h, v in run["per_host"].items())
    worst_probed = max((v["probed_down_s"] - base_probed[h], h) for run in runs for h, v in run["per_host"].items())
    goals = {
        "upstream_bytes_3_over_1": {"value": round(ratio, 3), "goal": f"<= {BYTES_RATIO_GOAL}", "met": ratio <= BYTES_RATIO_GOAL},
        "out_of_service_minus_baseline_worst_s": {"value": round(worst[0], 2), "host": worst[1],
                                                  "goal": f"<= {SLACK_S}", "met": worst[0] <= SLACK_S},
        "probed_down_minus_baseline_restart_worst_s": {"value": round(worst_probed[0], 2), "host": worst_probed[1],
                                                       "goal": f"<= {PROBE_SLACK_S}", "met": worst_probed[0] <= PROBE_SLACK_S},
        "one_host_down_at_a_time": {"value": max(r["max_hosts_down"] for r in runs), "goal": "<= 1",
                                    "met": all(r["max_hosts_down"] <= 1 for r in runs)},
        "failed_through_balancer": {"value": b["through_balancer"]["failed"], "goal": "0",
                                    "met": b["through_balancer"]["failed"] == 0},
    }
    for k, g in goals.items():
        print(f"goal {k}: {g['value']} (goal {g['goal']}): {'met' if g['met'] else 'MISSED'}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"baseline_s": base, "baseline_probed_down_s": base_probed,
                                                   "runs": runs, "balancer": b, "goals": goals}, indent=1) + "\n")
    return 0 if all(g["met"] for g in goals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
