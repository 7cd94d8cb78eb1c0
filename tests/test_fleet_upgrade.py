"""Fleet upgrades: the pure planning pieces, then the rolling upgrade end to end on the local
fleet (booted Debian hosts under systemd-nspawn, stand-in vLLM wheels from the loopback index).

The fleet tests run on a testbed of their own (GPTOSS_UPGRADE_TESTBED_STATE, default
/var/lib/gptoss-testbed-upgrade; hosts 127.0.0.41-43, index on port 8741) so that they never
upgrade a fleet another test is deploying to. `gptoss-testbed up` is idempotent: the first
test boots it, later runs reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gptoss_deploy import config as C
from gptoss_deploy import rollout as R
from gptoss_deploy import wheelhouse as W
from gptoss_testbed import exclusive

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventories" / "testbed.py"
STATE_DIR = os.environ.get("GPTOSS_UPGRADE_TESTBED_STATE", "/var/lib/gptoss-testbed-upgrade")
FIRST_ADDRESS = os.environ.get("GPTOSS_UPGRADE_TESTBED_ADDRESS", "127.0.0.41")
INDEX_PORT = os.environ.get("GPTOSS_UPGRADE_TESTBED_INDEX_PORT", "8741")


# -- pure pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,hosts,size", [("1", 10, 1), ("3", 10, 3), ("25%", 10, 2), ("50%", 3, 1),
                                             ("100%", 8, 8), ("1%", 3, 1)])
def test_batch_size_count_or_percentage(spec, hosts, size):
    assert R.batch_size(spec, hosts) == size


def test_plan_batches_canary_alone_then_batches_in_order():
    names = [f"h{i}" for i in range(1, 8)]
    assert R.plan_batches(names, "1") == [["h1"], ["h2"], ["h3"], ["h4"], ["h5"], ["h6"], ["h7"]]
    assert R.plan_batches(names, "3") == [["h1"], ["h2", "h3", "h4"], ["h5", "h6", "h7"]]
    assert R.plan_batches(names, "50%") == [["h1"], ["h2", "h3", "h4"], ["h5", "h6", "h7"]]
    assert R.plan_batches(["only"], "5") == [["only"]]
    assert sum(R.plan_batches(names, "2"), []) == names  # every host exactly once


@pytest.mark.parametrize("value", [0, "0", "-1", "abc", "150%", "2.5", True, "%"])
def test_bad_batch_is_one_line_naming_host_key_value_and_fix(value):
    with pytest.raises(C.ConfigError) as e:
        R.settings("web-1", {"gptoss_upgrade_batch": value})
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"host web-1: gptoss_upgrade_batch={value!r}") and "fix:" in msg


def test_settings_defaults_and_hooks_need_both_halves():
    st = R.settings("h", {})
    assert (st.batch, st.keep_stacks, st.lb_drain_cmd, st.download_once) == ("1", 2, None, True)
    assert R.settings("h", {"gptoss_download_once": False, "gptoss_keep_stacks": 3}).download_once is False
    with pytest.raises(C.ConfigError, match="gptoss_lb_restore_cmd.*needs both"):
        R.settings("h", {"gptoss_lb_drain_cmd": "lb drain {host}"})
    with pytest.raises(C.ConfigError, match="gptoss_keep_stacks=0"):
        R.settings("h", {"gptoss_keep_stacks": 0})
    with pytest.raises(C.ConfigError, match="gptoss_download_once='proxy'"):
        R.settings("h", {"gptoss_download_once": "proxy"})


def test_prune_keeps_new_then_rollback_then_newest():
    installed = {"a": 1.0, "b": 2.0, "c": 3.0, "new": 4.0, "old": 0.5}
    assert R.stacks_to_prune(installed, 2, "new", "old") == ["a", "b", "c"]
    assert R.stacks_to_prune(installed, 3, "new", "old") == ["a", "b"]  # c is the newest other
    assert R.stacks_to_prune(installed, 1, "new", "old") == ["a", "b", "c", "old"]
    assert R.stacks_to_prune(installed, 2, "new", None) == ["a", "b", "old"]
    assert "new" not in R.stacks_to_prune({"new": 0.0}, 1, "new", None)


def test_rollback_stack_is_what_runs_or_what_was_recorded():
    s = C.STACKS_DIR
    assert R.rollback_stack("n", f"{s}/o", None) == "o"
    assert R.rollback_stack("n", f"{s}/o", "x") == "o"  # what runs now wins over an old record
    assert R.rollback_stack("n", f"{s}/n", "o") == "o"  # already switched by an interrupted run
    assert R.rollback_stack("n", f"{s}/n", None) is None
    assert R.rollback_stack("n", None, None) is None


def test_versions_match_uses_pep440():
    assert R.versions_match("0.10.1+gptoss", "0.10.1+gptoss")
    assert R.versions_match("v0.33.0", "0.33.0")
    assert not R.versions_match("0.33.1.dev0+broken", "0.33.0")
    assert not R.versions_match(None, "0.33.0")


def test_failure_text_names_host_step_rollback_doctor_and_untouched_hosts():
    ro = R.Rollout.__new__(R.Rollout)
    ro.batches = [["h1"], ["h2"], ["h3"]]
    ro.results = {n: R.HostResult(n, i) for i, n in enumerate(["h1", "h2", "h3"])}
    r = ro.results["h1"]
    r.status, r.step, r.error, r.rollback = "failed", "health-gate", "/health not 200 after 15s", "back on old: healthy"
    r.doctor = {"doctor": {"exit_code": 0, "findings": []},
                "logs": {"exit_code": 1, "findings": [{"id": "engine-core-failed", "severity": "error",
                                                       "title": "The engine core failed", "fix": None}]}}
    ro.results["h2"].status = ro.results["h3"].status = "not-reached"
    text = R.failure_text(ro, r, "new")
    assert "STOPPED at host h1" in text and "the canary" in text and "failed step: health-gate" in text
    assert "back on old" in text and "error engine-core-failed" in text and "doctor (gptoss-doctor --json): exit 0" in text
    assert text.splitlines()[-1] == "not reached (left untouched): h2, h3"


def test_execution_mode_error_refuses_serial_and_small_pools():
    from types import SimpleNamespace

    state = SimpleNamespace(pool=SimpleNamespace(size=3))
    R.staged_hosts(state).update({"h1", "h2", "h3"})
    assert R.execution_mode_error(state, ["h1", "h2", "h3"]) is None
    assert "--parallel" in R.execution_mode_error(SimpleNamespace(pool=SimpleNamespace(size=1)), ["h1", "h2"])
    serial = SimpleNamespace(pool=SimpleNamespace(size=3))
    R.staged_hosts(serial).add("h1")
    assert R.execution_mode_error(serial, ["h1", "h2", "h3"]).startswith("h2, h3 not staged yet")


def test_compile_keeps_index_urls_out_of_argv():
    from types import SimpleNamespace

    cfg = SimpleNamespace(indexes=(C.Index("pypi", "https://u:secret@m/simple"), C.Index("pytorch-cu128", "https://u:secret@m/cu128")),
                          index_strategy="unsafe-best-match", prerelease=None, torch_backend=None)
    argv = W.compile_args(cfg, "3.11", "x86_64", "/tmp/out.toml")
    assert not any("secret" in a for a in argv) and "--index-strategy" in argv
    assert argv[argv.index("--python-platform") + 1] == "x86_64-manylinux_2_28"
    env = W.compile_env(cfg)
    assert env["UV_DEFAULT_INDEX"] == "https://u:secret@m/simple" and env["UV_INDEX"] == "https://u:secret@m/cu128"


def test_mirror_credentials_follow_files_on_the_same_host():
    idx = ["https://u%40x:p%3Aw@mirror.example:8443/simple", "https://pypi.org/simple"]
    assert W.credentials_for("https://mirror.example:8443/files/a.whl", idx) == ("u@x", "p:w")
    assert W.credentials_for("https://mirror.example/files/a.whl", idx) is None  # another port
    assert W.credentials_for("https://files.pythonhosted.org/a.whl", idx) is None
    req = W._request("https://mirror.example:8443/files/a.whl", ("u", "p"))
    assert req.get_header("Authorization") == "Basic dTpw"


def test_pick_wheels_takes_the_best_wheel_for_the_host_and_refuses_sdists():
    lock = {"packages": [
        {"name": "torch", "version": "2.9.0", "wheels": [
            {"url": "https://x/torch-2.9.0-cp312-cp312-manylinux_2_28_x86_64.whl", "hashes": {"sha256": "a"}},
            {"url": "https://x/torch-2.9.0-cp311-cp311-manylinux_2_28_x86_64.whl", "hashes": {"sha256": "b"}},
            {"url": "https://x/torch-2.9.0-cp311-cp311-manylinux_2_28_aarch64.whl", "hashes": {"sha256": "c"}},
        ]},
        {"name": "six", "version": "1", "wheels": [{"url": "https://x/six-1-py2.py3-none-any.whl", "hashes": {"sha256": "d"}}]},
    ]}
    picked = W.pick_wheels(lock, "3.11", "x86_64")
    assert [p["sha256"] for p in picked] == ["b", "d"]
    assert [p["sha256"] for p in W.pick_wheels(lock, "3.11", "aarch64")] == ["c", "d"]
    with pytest.raises(W.WheelhouseError, match="sdistonly 1.0 has no wheel for Python 3.11.*gptoss_download_once=False"):
        W.pick_wheels({"packages": [{"name": "sdistonly", "version": "1.0", "sdist": {"url": "https://x/s.tar.gz"}}]},
                      "3.11", "x86_64")


# -- the local fleet -------------------------------------------------------------------------------

fleet_only = [
    pytest.mark.fleet,
    pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root"),
]


def _env(**extra: str) -> dict:
    return {**os.environ, "GPTOSS_TESTBED_STATE": STATE_DIR, "PYINFRA_PROGRESS": "off", **extra}


def run_testbed(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("gptoss-testbed") or str(Path(sys.executable).with_name("gptoss-testbed"))
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=900, env=_env())


def pyinfra_cmd(deploy: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pyinfra", "-y", str(INVENTORY), deploy, *extra]


def deploy(stack: str) -> None:
    run = subprocess.run(pyinfra_cmd("deploys/gptoss.py", "--data", f"gptoss_stack={stack}"), cwd=REPO,
                         capture_output=True, text=True, timeout=900, env=_env())
    assert run.returncode == 0, f"deploy of {stack} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"


def upgrade(stack: str, report: Path, *extra: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = _env(GPTOSS_UPGRADE_REPORT=str(report), **({"XDG_CACHE_HOME": str(cache)} if cache else {}))
    return subprocess.run(pyinfra_cmd("deploys/upgrade.py", "--data", f"gptoss_stack={stack}", *extra), cwd=REPO,
                          capture_output=True, text=True, timeout=900, env=env)


def ssh(fleet: dict, address: str, command: str) -> tuple[int, str]:
    r = subprocess.run(["ssh", "-i", fleet["ssh_key"], "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{address}", command],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def served_version(address: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{address}:8000/version", timeout=5) as r:
            return json.loads(r.read()).get("version")
    except (OSError, ValueError):
        return None


def healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:8000/health", timeout=1) as r:
            return r.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


class Prober(threading.Thread):
    """/health on every host every 200 ms, all hosts probed at once per round; bounded in time."""

    def __init__(self, hosts: dict[str, str], limit_s: float = 600):
        super().__init__(daemon=True)
        self.hosts, self.limit_s, self.rounds = hosts, limit_s, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        with ThreadPoolExecutor(len(self.hosts)) as pool:
            while not self._stop_event.is_set() and time.monotonic() < deadline:
                t = time.monotonic()
                oks = dict(zip(self.hosts, pool.map(healthy, self.hosts.values())))
                self.rounds.append((t, oks))
                self._stop_event.wait(max(0.0, 0.2 - (time.monotonic() - t)))

    def stop(self) -> list[tuple[float, dict]]:
        self._stop_event.set()
        self.join(10)
        return self.rounds

    def down_rounds(self, name: str) -> int:
        return sum(1 for _, oks in self.rounds if not oks[name])


def boot_testbed():
    """Hold this testbed (another pytest process waits for it), bring it up, and return the lock
    and `status --json` with each host's address under "addr". The fleet-doctor tests share it."""
    lock = exclusive.hold(STATE_DIR)
    up = run_testbed("up", "--first-address", FIRST_ADDRESS, "--index-port", INDEX_PORT)
    if up.returncode != 0:
        pytest.fail(f"gptoss-testbed up failed: {up.stderr.strip()[-2000:]}")
    st = json.loads(run_testbed("status", "--json").stdout)
    st["addr"] = {h["name"]: h["address"] for h in st["hosts"]}
    return lock, st


@pytest.fixture(scope="module")
def fleet():
    lock, st = boot_testbed()
    env = json.loads(run_testbed("env", "--json").stdout)
    st["stats_url"] = env["stats_url"]
    names = [s["name"] for s in st["stacks"]]
    st["new"], st["old"] = names[-1], names[-2]
    st["vllm"] = {s["name"]: s["vllm"] for s in st["stacks"]}
    yield st
    lock.close()


def on_stack(fleet: dict, stack: str) -> dict[str, bool]:
    """Every host: `current` -> the stack's complete venv, and the service serves its version."""
    out = {}
    for name, addr in fleet["addr"].items():
        rc, text = ssh(fleet, addr, f"readlink {C.CURRENT}; test -f {C.STACKS_DIR}/{stack}/{C.MARKER} && echo complete")
        out[name] = (text.split() == [f"{C.STACKS_DIR}/{stack}", "complete"]
                     and R.versions_match(served_version(addr), fleet["vllm"][stack]))
    return out


def no_half_installed(fleet: dict) -> dict[str, str]:
    """Hosts whose `current` points at a venv without its completion marker (must be none)."""
    bad = {}
    for name, addr in fleet["addr"].items():
        rc, text = ssh(fleet, addr, f"t=$(readlink {C.CURRENT}); test -f \"$t/{C.MARKER}\" || echo \"$t\"")
        if text.strip():
            bad[name] = text.strip()
    return bad


def stacks_on(fleet: dict) -> dict[str, set]:
    return {name: set(ssh(fleet, addr, f"ls {C.STACKS_DIR}")[1].split()) for name, addr in fleet["addr"].items()}


def upstream_bytes(fleet: dict) -> int:
    with urllib.request.urlopen(fleet["stats_url"], timeout=10) as r:
        return json.loads(r.read())["total_bytes"]


def reset_stats(fleet: dict) -> None:
    urllib.request.urlopen(urllib.request.Request(fleet["stats_url"] + "/reset", data=b"", method="POST"), timeout=10).read()


@pytest.mark.usefixtures("fleet")
class TestOnTheLocalFleet:
    pytestmark = fleet_only

    def test_rolling_upgrade_never_takes_two_hosts_down_and_ends_on_new(self, fleet, tmp_path):
        deploy(fleet["old"])
        assert all(on_stack(fleet, fleet["old"]).values())
        lb_log = tmp_path / "lb.log"
        prober = Prober(fleet["addr"])
        prober.start()
        run = upgrade(fleet["new"], tmp_path / "report.json",
                      "--data", f"gptoss_lb_drain_cmd=echo drain {{host}} >> {lb_log}",
                      "--data", f"gptoss_lb_restore_cmd=echo restore {{host}} >> {lb_log}")
        rounds = prober.stop()
        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        assert len(rounds) > 20, "the prober barely ran"
        worst = max(sum(1 for ok in oks.values() if not ok) for _, oks in rounds)
        assert worst <= 1, f"{worst} hosts were down at the same time"
        for name in fleet["addr"]:
            assert prober.down_rounds(name) > 0, f"{name} was never seen restarting: was it upgraded at all?"
        assert on_stack(fleet, fleet["new"]) == {n: True for n in fleet["addr"]}
        report = json.loads((tmp_path / "report.json").read_text())
        assert [h["status"] for h in report["hosts"]] == ["upgraded"] * 3
        assert report["batches"] == [[n] for n in fleet["addr"]]  # canary, then one host per batch
        hosts = list(fleet["addr"])
        assert lb_log.read_text().split("\n")[:-1] == [f"{what} {h}" for h in hosts for what in ("drain", "restore")]
        assert not no_half_installed(fleet)
        # kept: NEW and the rollback stack (gptoss_keep_stacks defaults to 2); older ones pruned
        assert stacks_on(fleet) == {n: {fleet["old"], fleet["new"]} for n in fleet["addr"]}
        # the upgrade leaves what the deploy itself would: deploying NEW now changes nothing
        again = subprocess.run(pyinfra_cmd("deploys/gptoss.py", "--json", "--data", f"gptoss_stack={fleet['new']}"),
                               cwd=REPO, capture_output=True, text=True, timeout=900, env=_env())
        totals = json.loads(again.stdout)["results"]["totals"]
        assert again.returncode == 0 and totals["success"] == 0 and totals["error"] == 0, totals

    def test_bad_settings_are_refused_before_any_host_is_touched(self, fleet, tmp_path):
        before = {n: ssh(fleet, a, f"ls -la --time-style=+%s.%N {C.STACKS_DIR} /etc/gptoss; readlink {C.CURRENT}")[1]
                  for n, a in fleet["addr"].items()}
        for bad, says in ((["--data", f"gptoss_stack={fleet['new']}", "--data", "gptoss_upgrade_batch=0%"],
                           "gptoss_upgrade_batch='0%': not a host count or a percentage; fix:"),
                          (["--data", "gptoss_stack=vllm-9.9.9"], "gptoss_stack='vllm-9.9.9': not a stack in the knowledge"),
                          (["--data", f"gptoss_stack={fleet['new']}", "--data", "gptoss_keep_stack=1"],
                           "unknown key; fix: did you mean gptoss_keep_stacks?")):
            run = subprocess.run(pyinfra_cmd("deploys/upgrade.py", *bad), cwd=REPO, capture_output=True, text=True,
                                 timeout=300, env=_env())
            assert run.returncode != 0 and says in run.stdout + run.stderr, (run.stdout + run.stderr)[-2000:]
            assert "Traceback" not in run.stdout + run.stderr
        after = {n: ssh(fleet, a, f"ls -la --time-style=+%s.%N {C.STACKS_DIR} /etc/gptoss; readlink {C.CURRENT}")[1]
                 for n, a in fleet["addr"].items()}
        assert before == after

    def test_batches_after_the_canary_restart_together(self, fleet, tmp_path):
        deploy(fleet["old"])
        canary, *rest = list(fleet["addr"])
        prober = Prober(fleet["addr"])
        prober.start()
        run = upgrade(fleet["new"], tmp_path / "report.json", "--data", "gptoss_upgrade_batch=100%")
        rounds = prober.stop()
        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        assert json.loads((tmp_path / "report.json").read_text())["batches"] == [[canary], rest]
        down_sets = [{n for n, ok in oks.items() if not ok} for _, oks in rounds]
        assert not any(canary in d and len(d) > 1 for d in down_sets), "the canary was down together with its batch"
        assert any(set(rest) <= d for d in down_sets), "the second batch did not restart together"
        assert on_stack(fleet, fleet["new"]) == {n: True for n in fleet["addr"]}

    def test_upgrade_to_the_broken_stack_stops_at_the_canary_and_rolls_it_back(self, fleet, tmp_path):
        deploy(fleet["new"])
        prober = Prober(fleet["addr"])
        prober.start()
        run = upgrade(fleet["broken_stack"], tmp_path / "report.json", "--data", "gptoss_health_timeout_s=15")
        prober.stop()
        out = run.stdout + run.stderr
        canary, *others = list(fleet["addr"])
        assert run.returncode != 0
        assert f"STOPPED at host {canary}" in out and "failed step: health-gate" in out, out[-3000:]
        assert "doctor (gptoss-doctor --json): exit" in out and "log triage" in out
        assert f"not reached (left untouched): {', '.join(others)}" in out
        report = json.loads((tmp_path / "report.json").read_text())
        status = {h["host"]: h["status"] for h in report["hosts"]}
        assert status == {canary: "failed", **{o: "not-reached" for o in others}}
        assert prober.down_rounds(canary) > 0
        for o in others:
            assert prober.down_rounds(o) == 0, f"{o} went down although the rollout stopped at {canary}"
        assert on_stack(fleet, fleet["new"]) == {n: True for n in fleet["addr"]}  # the canary serves the old stack again
        assert healthy(fleet["addr"][canary])
        assert not no_half_installed(fleet)

    def test_staging_failure_on_one_host_stops_before_any_restart(self, fleet, tmp_path):
        deploy(fleet["old"])
        victim = list(fleet["addr"])[-1]
        addr = fleet["addr"][victim]
        # uv on the victim answers --version (so the deploy keeps it) and fails every install.
        fake = ("mv /opt/gptoss/bin/uv /opt/gptoss/bin/uv.real && printf '%s\\n' '#!/bin/sh' "
                "'[ \"$1\" = --version ] && exec /opt/gptoss/bin/uv.real --version' "
                "'echo \"uv: simulated install failure\" >&2; exit 1' > /opt/gptoss/bin/uv && chmod 755 /opt/gptoss/bin/uv"
                f" && rm -rf {C.STACKS_DIR}/{fleet['new']}")
        assert ssh(fleet, addr, fake)[0] == 0
        try:
            prober = Prober(fleet["addr"])
            prober.start()
            run = upgrade(fleet["new"], tmp_path / "report.json")
            prober.stop()
        finally:
            ssh(fleet, addr, "mv -f /opt/gptoss/bin/uv.real /opt/gptoss/bin/uv")
        assert run.returncode != 0
        assert "simulated install failure" in run.stdout + run.stderr
        assert "stopped before any restart" in run.stdout + run.stderr
        for name in fleet["addr"]:
            assert prober.down_rounds(name) == 0, f"{name} was restarted although staging failed on {victim}"
        assert on_stack(fleet, fleet["old"]) == {n: True for n in fleet["addr"]}

    def test_interrupted_upgrade_then_rerun_converges(self, fleet, tmp_path):
        deploy(fleet["old"])
        report = tmp_path / "report.json"
        env = _env(GPTOSS_UPGRADE_REPORT=str(report))
        proc = subprocess.Popen(pyinfra_cmd("deploys/upgrade.py", "--data", f"gptoss_stack={fleet['new']}"), cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        canary = list(fleet["addr"])[0]
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    hosts = {h["host"]: h["status"] for h in json.loads(report.read_text())["hosts"]}
                except (OSError, ValueError):
                    hosts = {}
                if hosts.get(canary) == "upgraded":
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the upgrade finished before it could be interrupted"
            os.kill(proc.pid, signal.SIGKILL)  # the controller dies mid-rollout
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        assert not no_half_installed(fleet)
        mid = on_stack(fleet, fleet["new"])
        assert mid[canary] and not all(mid.values()), f"not interrupted mid-way: {mid}"
        again = upgrade(fleet["new"], tmp_path / "report2.json")
        assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
        assert on_stack(fleet, fleet["new"]) == {n: True for n in fleet["addr"]}
        statuses = {h["host"]: h["status"] for h in json.loads((tmp_path / "report2.json").read_text())["hosts"]}
        assert statuses[canary] == "already"
        assert not no_half_installed(fleet)
        # a third run restarts nothing; with gptoss_keep_stacks=1 it prunes the rollback stack too
        prober = Prober(fleet["addr"])
        prober.start()
        third = upgrade(fleet["new"], tmp_path / "report3.json", "--data", "gptoss_keep_stacks=1")
        prober.stop()
        assert third.returncode == 0
        assert {h["status"] for h in json.loads((tmp_path / "report3.json").read_text())["hosts"]} == {"already"}
        assert all(prober.down_rounds(n) == 0 for n in fleet["addr"])
        assert stacks_on(fleet) == {n: {fleet["new"]} for n in fleet["addr"]}

    def test_rerun_repairs_a_half_installed_venv_and_a_switch_without_restart(self, fleet, tmp_path):
        """The states a controller killed mid-install or mid-switch leaves behind, made on purpose."""
        deploy(fleet["old"])
        _canary, half, unrestarted = list(fleet["addr"])
        new = f"{C.STACKS_DIR}/{fleet['new']}"
        # killed mid-install: a venv dir without its completion marker
        ssh(fleet, fleet["addr"][half], f"rm -rf {new} && mkdir -p {new}/bin && echo broken > {new}/bin/vllm")
        # killed between the switch and the restart: NEW is installed, staged and switched to, OLD still serves
        ssh(fleet, fleet["addr"][unrestarted], f"rm -rf {new}")
        staged = upgrade(fleet["new"], tmp_path / "r0.json", "--limit", unrestarted)  # installs + stages NEW there
        assert staged.returncode == 0
        deploy(fleet["old"])  # back on OLD everywhere, NEW still installed and staged on `unrestarted`
        staged = f"{R.STAGED_DIR}/{fleet['new']}"
        switch_no_restart = (
            f"cp -p {staged}/gptoss.env {C.ENV_FILE} && cp -p {staged}/manifest.json {C.MANIFEST} && "
            f"cp -p {staged}/{C.UNIT} /etc/systemd/system/{C.UNIT} && "
            f"ln -sfn {new} {C.CURRENT}.tmp && mv -T {C.CURRENT}.tmp {C.CURRENT} && systemctl daemon-reload")
        assert ssh(fleet, fleet["addr"][unrestarted], switch_no_restart)[0] == 0
        assert R.versions_match(served_version(fleet["addr"][unrestarted]), fleet["vllm"][fleet["old"]])
        run = upgrade(fleet["new"], tmp_path / "report.json")
        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        assert on_stack(fleet, fleet["new"]) == {n: True for n in fleet["addr"]}
        statuses = {h["host"]: h["status"] for h in json.loads((tmp_path / "report.json").read_text())["hosts"]}
        assert statuses[unrestarted] == "upgraded"  # /version said OLD: restarted, not skipped
        assert not no_half_installed(fleet)

    def test_unreachable_host_stops_the_upgrade_before_any_restart(self, fleet, tmp_path):
        deploy(fleet["old"])
        inv = tmp_path / "with_ghost.py"
        inv.write_text(
            "import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('tb', {str(INVENTORY)!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "hosts, data = mod.testbed\n"
            "testbed = (hosts + [('ghost', {'ssh_hostname': '127.0.0.49', 'gptoss_bind_address': '127.0.0.49'})], data)\n")
        prober = Prober(fleet["addr"])
        prober.start()
        run = subprocess.run([sys.executable, "-m", "pyinfra", "-y", str(inv), "deploys/upgrade.py", "--data",
                              f"gptoss_stack={fleet['new']}"], cwd=REPO, capture_output=True, text=True, timeout=900,
                             env=_env())
        prober.stop()
        assert run.returncode != 0
        assert "ghost failed staging or could not be reached" in run.stdout + run.stderr
        assert all(prober.down_rounds(n) == 0 for n in fleet["addr"])
        assert on_stack(fleet, fleet["old"]) == {n: True for n in fleet["addr"]}

    def test_host_lost_mid_rollout_stops_it_and_a_rerun_converges(self, fleet, tmp_path):
        """A host powers off while it is being upgraded: the rollout stops there, naming it; the
        host after it is untouched; once the host is back, a re-run finishes the job."""
        deploy(fleet["old"])
        canary, lost, last = list(fleet["addr"])
        report = tmp_path / "report.json"
        proc = subprocess.Popen(pyinfra_cmd("deploys/upgrade.py", "--data", f"gptoss_stack={fleet['new']}"), cwd=REPO,
                                env=_env(GPTOSS_UPGRADE_REPORT=str(report)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if {h["host"]: h["status"] for h in json.loads(report.read_text())["hosts"]}.get(canary) == "upgraded":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        stop = (f"from gptoss_testbed import hosts; "
                f"print(hosts.stop_host(hosts.Host({lost!r}, {fleet['addr'][lost]!r})))")
        stopped = subprocess.run([sys.executable, "-c", stop], capture_output=True, text=True, timeout=120, env=_env())
        try:
            out, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert stopped.stdout.strip() == "True", stopped.stderr
        assert proc.returncode != 0
        assert f"STOPPED at host {lost}" in out, out[-3000:]
        statuses = {h["host"]: h["status"] for h in json.loads(report.read_text())["hosts"]}
        assert statuses == {canary: "upgraded", lost: "failed", last: "not-reached"}
        assert R.versions_match(served_version(fleet["addr"][last]), fleet["vllm"][fleet["old"]])  # untouched
        back = run_testbed("up", "--first-address", FIRST_ADDRESS, "--index-port", INDEX_PORT)
        assert back.returncode == 0, back.stderr
        again = upgrade(fleet["new"], tmp_path / "report2.json")
        assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
        assert on_stack(fleet, fleet["new"]) == {n: True for n in fleet["addr"]}
        assert not no_half_installed(fleet)

    def test_wheels_come_from_upstream_once_per_fleet(self, fleet, tmp_path):
        """Bytes served by the loopback (upstream) index: 3 hosts at most 1.2x of 1 host."""
        measured = {}
        for hosts in (1, 3):
            deploy(fleet["old"])
            for addr in fleet["addr"].values():  # NEW not installed anywhere: every host must stage it
                ssh(fleet, addr, f"rm -rf {C.STACKS_DIR}/{fleet['new']}")
            reset_stats(fleet)
            limit = ["--limit", list(fleet["addr"])[0]] if hosts == 1 else []
            run = upgrade(fleet["new"], tmp_path / f"r{hosts}.json", *limit, cache=tmp_path / f"cache{hosts}")
            assert run.returncode == 0, f"{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
            measured[hosts] = upstream_bytes(fleet)
        assert measured[1] > 0
        assert measured[3] <= 1.2 * measured[1], measured
