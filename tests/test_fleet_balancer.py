"""The fleet behind its balancer, end to end on the local fleet (`gptoss-testbed up --lb`): HAProxy
on the balancer host before every serving host, and each host's vLLM behind its own front.

A client sends completions (streamed and not) through the balancer all along, and counts what
it sees: 0 failed during an upgrade of 3 hosts and during an upgrade to the broken stack that is
rolled back; a host whose vLLM is SIGKILLed costs at most the requests in flight on it and leaves
the rotation within the check interval; a reload of the balancer drops nothing. From the
controller, against each host's address and the balancer's: every route outside the allow-list
refused, completions without the key refused, with the key served.

Its own testbed (GPTOSS_LB_TESTBED_STATE, default /var/lib/gptoss-testbed-lb; hosts 127.0.0.81-83,
the balancer 127.0.0.84, index on port 8781), so it never changes a fleet another test uses.
Run it under the shared lock: `flock /tmp/gptoss-fleet.lock uv run pytest tests/test_fleet_balancer.py -x`.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptoss_deploy import haproxy as H
from gptoss_testbed import exclusive
from gptoss_testbed.client import Client

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventories" / "testbed.py"
STATE_DIR = os.environ.get("GPTOSS_LB_TESTBED_STATE", "/var/lib/gptoss-testbed-lb")
FIRST_ADDRESS = os.environ.get("GPTOSS_LB_TESTBED_ADDRESS", "127.0.0.81")
INDEX_PORT = os.environ.get("GPTOSS_LB_TESTBED_INDEX_PORT", "8781")
MODEL = "openai/gpt-oss-20b"
# What real vLLM 0.26.0 answered without a key (issue 15), besides /health and /version.
OUTSIDE = (("POST", "/invocations"), ("GET", "/metrics"), ("GET", "/load"), ("GET", "/ping"), ("GET", "/openapi.json"),
           ("GET", "/docs"), ("GET", "/redoc"), ("POST", "/tokenize"), ("POST", "/detokenize"),
           ("POST", "/generative_scoring"), ("POST", "/scale_elastic_ep"), ("POST", "/is_scaling_elastic_ep"),
           ("POST", "/inference/v1/generate"))

pytestmark = [pytest.mark.fleet, pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root")]


def _env(**extra: str) -> dict:
    return {**os.environ, "GPTOSS_TESTBED_STATE": STATE_DIR, "PYINFRA_PROGRESS": "off", **extra}


def run_testbed(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("gptoss-testbed") or str(Path(sys.executable).with_name("gptoss-testbed"))
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=900, env=_env())


def pyinfra(deploy: str, *extra: str, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyinfra", "-y", str(INVENTORY), deploy, *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=_env(**env))


def ssh(fleet: dict, address: str, command: str) -> tuple[int, str]:
    r = subprocess.run(["ssh", "-i", fleet["ssh_key"], "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{address}", command],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def call(address: str, method: str, path: str, key: str | None = None, body: dict | None = None,
         port: int = 8000) -> int:
    conn = http.client.HTTPConnection(address, port, timeout=30)
    data = json.dumps(body if body is not None else {"model": MODEL, "prompt": "hi", "max_tokens": 2})
    conn.request(method, path, body=data if method == "POST" else None,
                 headers={"content-type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def lb_stat(fleet: dict) -> dict:
    """The balancer's view of its servers, read over ssh from its runtime socket."""
    rc, out = ssh(fleet, fleet["lb"]["address"], H.show_stat_command())
    assert rc == 0, out
    return H.parse_stat(out)


def stats_page(fleet: dict) -> dict:
    """The balancer's stats page as CSV: on the balancer's own loopback address, which the local
    fleet shares with the controller (a real balancer's is reached over ssh, as lb_stat does)."""
    conn = http.client.HTTPConnection(fleet["lb"]["address"], 8404, timeout=5)
    conn.request("GET", "/;csv")
    text = conn.getresponse().read().decode()
    conn.close()
    return H.parse_stat(text)


@pytest.fixture(scope="module")
def fleet():
    lock = exclusive.hold(STATE_DIR)
    up = run_testbed("up", "--hosts", "3", "--lb", "--first-address", FIRST_ADDRESS, "--index-port", INDEX_PORT)
    if up.returncode != 0:
        pytest.fail(f"gptoss-testbed up --lb failed: {up.stderr.strip()[-2000:]}")
    st = json.loads(run_testbed("status", "--json").stdout)
    st["addr"] = {h["name"]: h["address"] for h in st["hosts"]}
    names = [s["name"] for s in st["stacks"]]
    st["new"], st["old"] = names[-1], names[-2]
    run = pyinfra("deploys/gptoss.py", "--data", f"gptoss_stack={st['old']}")
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    yield st
    lock.close()


def wait_all_up(fleet: dict, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stat = lb_stat(fleet)
        if set(stat) == set(fleet["addr"]) and all(s["status"] == "UP" for s in stat.values()):
            return stat
        assert time.monotonic() < deadline, stat
        time.sleep(0.5)


def test_status_names_the_balancer(fleet):
    assert fleet["lb"] == {"name": "gptoss-lb", "address": "127.0.0.84", "port": 8000}
    assert set(wait_all_up(fleet)) == set(fleet["addr"])


def test_only_the_allow_list_answers_and_only_with_the_key(fleet):
    key = fleet["api_key"]
    for address in [*fleet["addr"].values(), fleet["lb"]["address"]]:
        for method, path in OUTSIDE:
            assert call(address, method, path, key=key) in (403, 404), (address, path)
        for method, path in (("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            assert call(address, method, path) == 401, (address, path)
            assert call(address, method, path, key="wrong") == 401, (address, path)
        assert call(address, "POST", "/v1/completions", key=key) == 200, address
        assert call(address, "GET", "/v1/models", key=key) == 200, address
        assert call(address, "GET", "/health") == 200, address
    for address in fleet["addr"].values():  # vLLM itself is not on the clients' port any more
        rc, out = ssh(fleet, address, "ss -ltnH")
        assert f"{address}:8001" in out and f"{address}:8000" in out


def test_a_second_deploy_changes_nothing(fleet):
    run = pyinfra("deploys/gptoss.py", "--json", "--data", f"gptoss_stack={fleet['old']}")
    totals = json.loads(run.stdout)["results"]["totals"]
    assert run.returncode == 0 and totals["success"] == 0 and totals["error"] == 0, totals


def test_removing_and_adding_a_serving_host_reloads_and_drops_nothing(fleet, tmp_path):
    wait_all_up(fleet)
    victim = list(fleet["addr"])[-1]
    without = tmp_path / "without.py"  # the same inventory less one serving host
    without.write_text(f"exec(open({str(INVENTORY)!r}).read())\n"
                       f"testbed = ([h for h in testbed[0] if h[0] != {victim!r}], testbed[1])\n")
    client = Client([f"{fleet['lb']['address']}:8000"], fleet["api_key"])
    client.start()
    time.sleep(2)
    rc, before = ssh(fleet, fleet["lb"]["address"], "systemctl show -p MainPID --value haproxy")
    for inventory, servers in ((without, set(fleet["addr"]) - {victim}), (INVENTORY, set(fleet["addr"]))):
        run = subprocess.run([sys.executable, "-m", "pyinfra", "-y", str(inventory), "deploys/gptoss.py",
                              "--limit", "gptoss-lb"], cwd=REPO, capture_output=True, text=True, timeout=600, env=_env())
        assert run.returncode == 0, run.stdout[-3000:]
        assert set(lb_stat(fleet)) == servers
        time.sleep(2)
    client.stop()
    rc, after = ssh(fleet, fleet["lb"]["address"], "systemctl show -p MainPID --value haproxy")
    print(f"a host removed and added again (two reloads): {client.summary()}")
    assert before == after, "haproxy was restarted, not reloaded"
    assert client.served > 20 and client.failed == [], (client.served, client.failed[:5])
    wait_all_up(fleet)


def test_upgrade_of_three_hosts_fails_no_request(fleet, tmp_path):
    wait_all_up(fleet)
    client = Client([f"{fleet['lb']['address']}:8000"], fleet["api_key"])
    client.start()
    run = pyinfra("deploys/upgrade.py", "--data", f"gptoss_stack={fleet['new']}",
                  GPTOSS_UPGRADE_REPORT=str(tmp_path / "report.json"))
    client.stop()
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    report = json.loads((tmp_path / "report.json").read_text())
    assert [h["status"] for h in report["hosts"]] == ["upgraded"] * 3
    assert all("scur=0" in h["lb_drain"] for h in report["hosts"])
    print(f"upgrade of 3 hosts behind the balancer: {client.summary()}")
    assert client.served > 50 and client.failed == [], (client.served, client.failed[:5])
    assert set(wait_all_up(fleet)) == set(fleet["addr"])


def test_upgrade_to_the_broken_stack_rolled_back_fails_no_request(fleet, tmp_path):
    wait_all_up(fleet)
    client = Client([f"{fleet['lb']['address']}:8000"], fleet["api_key"])
    client.start()
    run = pyinfra("deploys/upgrade.py", "--data", f"gptoss_stack={fleet['broken_stack']}",
                  "--data", "gptoss_health_timeout_s=15", GPTOSS_UPGRADE_REPORT=str(tmp_path / "report.json"))
    client.stop()
    assert run.returncode != 0 and "failed step: health-gate" in run.stdout + run.stderr
    canary = json.loads((tmp_path / "report.json").read_text())["hosts"][0]
    assert canary["status"] == "failed" and "back in rotation" in canary["rollback"]
    print(f"broken upgrade rolled back behind the balancer: {client.summary()}")
    assert client.served > 20 and client.failed == [], (client.served, client.failed[:5])
    assert wait_all_up(fleet)[canary["host"]]["status"] == "UP"


def test_the_fleet_doctor_shows_each_host_as_the_balancer_sees_it(fleet):
    wait_all_up(fleet)
    victim = list(fleet["addr"])[0]
    assert ssh(fleet, fleet["lb"]["address"], H.runtime_command("drain", victim, 0))[0] == 0
    try:
        run = subprocess.run([sys.executable, "deploys/doctor.py", str(INVENTORY), "--json"], cwd=REPO,
                             capture_output=True, text=True, timeout=600, env=_env())
    finally:
        ssh(fleet, fleet["lb"]["address"], H.runtime_command("ready", victim))
    report = json.loads(run.stdout)
    assert [b["host"] for b in report["balancers"]] == ["gptoss-lb"] and not report["balancers"][0]["error"]
    seen = {r["host"]: r["balancer"] for r in report["hosts"]}
    assert seen == {n: ("DRAIN (L7OK)" if n == victim else "UP") for n in fleet["addr"]}, seen  # drained, healthy
    # the same under the pyinfra CLI: a column in the table, a line per balancer
    cli = pyinfra("deploys/doctor.py", timeout=600)
    assert cli.returncode == 0, cli.stdout[-3000:]
    assert "balancer gptoss-lb: " + ", ".join(f"{n} UP (0 in flight)" for n in fleet["addr"]) in cli.stdout, cli.stdout


def test_a_killed_vllm_costs_at_most_its_requests_in_flight(fleet):
    wait_all_up(fleet)
    victim, address = list(fleet["addr"].items())[-1]
    client = Client([f"{fleet['lb']['address']}:8000"], fleet["api_key"])
    client.start()
    time.sleep(2)
    in_flight = client.in_flight  # every request in flight, on any host: a bound on the victim's
    rc, out = ssh(fleet, address, "pid=$(systemctl show -p MainPID --value gptoss-vllm); date +%s.%N; kill -9 $pid")
    assert rc == 0, out
    # the hosts share the controller's clock: the kill's own time, without the ssh round trip
    killed_at = float(out.split()[-1])
    t_kill = time.monotonic() - (time.time() - killed_at)
    seen_down = None
    while time.monotonic() - t_kill < 10:
        if stats_page(fleet)[victim]["status"].startswith("DOWN"):
            seen_down = time.monotonic() - t_kill
            break
    time.sleep(3)
    client.stop()
    print(f"SIGKILL on {victim}: out of rotation after {seen_down} s; {[(round(t - t_kill, 2), w[:90]) for t, _x, w in client.failed]}; {len(client.failed)} failed of "
          f"{client.served + len(client.failed)} ({in_flight} in flight at the kill)")
    assert seen_down is not None, "the balancer never took the killed host out"
    # within one check interval (500 ms in the testbed inventory), plus the check itself on a busy machine
    assert seen_down < 0.5 + 0.3, seen_down
    assert len(client.failed) <= in_flight, (in_flight, client.failed)
    late = [f for f in client.failed if f[0] - t_kill > 0.5 + 0.3]  # (time, target, why)
    assert not late, late  # nothing sent after it left the rotation failed
    wait_all_up(fleet, timeout=90)  # systemd restarts it (Restart=on-failure), the check brings it back
