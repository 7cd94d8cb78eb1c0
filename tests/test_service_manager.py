"""Hosts without systemd, as the manifest and the doctor see them.

- The manifest records the service manager, gptoss-supervise's log and pid files, the wheelhouse
  and the base Python.
- The doctor's `service.manager` fact on fake roots with real files: the manifest's word, systemd
  as PID 1, gptoss-supervise's pid file checked against /proc; `systemctl is-active` bounded.
- Every check case, judged again as if gptoss-supervise ran the service: the same findings, and
  no fix that says systemctl/journalctl for the service; every log signature likewise.
- `gptoss-doctor logs` with no FILE reads the service's log: the supervisor's log file, or
  `journalctl -u gptoss-vllm -b --no-pager` where systemd runs it.
- End to end: the real gptoss-supervise runs a service under a fake root whose /proc is the real
  one; the doctor says it runs (with its pid), reads its log, and says it stopped.

The `systemctl` and `journalctl` written here are stand-ins (shell scripts in a fake root's
/usr/bin): this machine has no systemd.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gptoss_doctor.checks import run_one
from gptoss_doctor.cli import main
from gptoss_doctor.collect.service import service_manager
from gptoss_doctor.findings import REGISTRY
from gptoss_doctor.logscan import SignatureError, load_signatures, parse_signatures, scan
from gptoss_doctor.render import render_report
from gptoss_doctor.report import build_report
from gptoss_doctor.service_manager import commands_for

import fakeroot
from gptoss_doctor.snapshot import Snapshot

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

from gptoss_deploy import config as C  # noqa: E402
from gptoss_deploy import manifest as M  # noqa: E402
from gptoss_deploy import service as unit_mod  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
PROGRAM = REPO / "deploys" / "gptoss_deploy" / "gptoss_supervise.py"
SUPERVISE = "/opt/gptoss/bin/gptoss-supervise"
LOG = "/var/log/gptoss/gptoss-vllm.log"
PORT_IN_USE = "ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): address already in use"

DEBIAN = {"os_id": "debian", "os_like": None, "os_pretty": "Debian GNU/Linux 12 (bookworm)", "arch": "x86_64",
          "python_path": "/usr/bin/python3", "python_version": "3.11.2", "gpus": [], "nvswitch_count": 0}
BASE = "/opt/torch/.venv/bin/python3"
PROBE = {"version": "3.12.3", "is_venv": True, "site": ["/opt/torch/.venv/lib/python3.12/site-packages"],
         "torch": "2.11.0+cu130", "torch_cuda": "13.0", "executable": BASE}
WHEELS = ["vllm-0.26.0-cp38-abi3-manylinux_2_31_x86_64.whl", "flashinfer_python-0.6.14-py3-none-any.whl"]


# -- the manifest (pure) -------------------------------------------------------------------------


def test_manifest_records_supervisor_log_wheelhouse_and_base_python(kb, key_file):
    data = {"gptoss_stack": "vllm-0.26.0", "gptoss_gpu_family": "H200", "gptoss_api_key_file": key_file,
            "gptoss_wheelhouse": "/srv/wheelhouse", "gptoss_wheelhouse_no_deps": True, "gptoss_base_python": BASE}
    facts = {**DEBIAN, "airgap": {"wheelhouse": WHEELS, "base": PROBE}, "init": "none"}
    m = json.loads(M.manifest_text(C.validate("gpu1", data, facts, kb)))
    assert (m["service_manager"], m["service_log"], m["supervise"]) == ("supervisor", LOG, SUPERVISE)
    assert m["service_pid_file"] == "/run/gptoss/gptoss-vllm.pid"
    assert m["wheelhouse"] == {"path": "/srv/wheelhouse", "no_deps": True}
    assert m["base_python"]["path"] == BASE and m["base_python"]["torch"] == "2.11.0+cu130"
    assert m["base_python"]["site_packages"] == PROBE["site"]


def test_manifest_of_an_indexed_systemd_host_says_so(kb, key_file):
    data = {"gptoss_stack": "vllm-0.26.0", "gptoss_gpu_family": "H200", "gptoss_api_key_file": key_file}
    m = json.loads(M.manifest_text(C.validate("gpu1", data, {**DEBIAN, "init": "systemd"}, kb)))
    assert m["service_manager"] == "systemd" and m["service_log"] is None and m["supervise"] is None
    assert m["wheelhouse"] is None and m["base_python"] is None


# -- the service.manager fact, on fake roots -------------------------------------------------------


class Box(fakeroot.Box):
    timeout_s = 5.0

    def __init__(self, root: Path):
        super().__init__(root, path="/usr/bin:/bin")

    def manifest(self, **fields) -> None:
        self.write("/etc/gptoss/manifest.json", json.dumps({"stack": "vllm-0.26.0", **fields}))


@pytest.fixture()
def box(tmp_path):
    return Box(tmp_path / "root")


SUPERVISED = {"service_manager": "supervisor", "service_log": LOG, "service_pid_file": "/run/gptoss/gptoss-vllm.pid",
              "supervise": SUPERVISE}


def _fact(box: Box, **kw) -> dict:
    return service_manager(box.env(**kw))["service.manager"]


def test_nothing_deployed_is_absent(box):
    fact = _fact(box)
    assert "nothing deployed" in fact["absent"]


def test_supervised_service_running_by_its_pid_file_and_proc(box):
    box.manifest(**SUPERVISED)
    box.write(SUPERVISE, "#!/usr/bin/python3\n", 0o755)
    box.write("/run/gptoss/gptoss-vllm.pid", "4242\n")
    box.write("/run/gptoss/gptoss-vllm.state", json.dumps({"state": "active", "main_pid": 4250}))
    box.write("/proc/4242/stat", "4242 (gptoss-supervis) S 1 4242 4242 0 -1")
    box.write(LOG, "INFO: started\n")
    m = _fact(box)["value"]
    assert (m["manager"], m["running"], m["state"], m["pid"], m["main_pid"]) == ("supervisor", True, "active", 4242, 4250)
    assert m["log_file"] == LOG and m["log_exists"] and m["pid1_systemd"] is False
    assert "manifest" in m["why"]


@pytest.mark.parametrize("proc_stat, state, want", [
    (None, "active", "failed"),  # the monitor died without saying so
    ("4242 (gptoss-supervis) Z 1", "active", "failed"),  # a zombie is not running
    (None, "inactive", "inactive"),  # stopped with `gptoss-supervise stop`
    ("4242 (gptoss-supervis) S 1", "auto-restart", "auto-restart"),  # a crash loop: alive, not serving
])
def test_supervised_service_not_running(box, proc_stat, state, want):
    box.manifest(**SUPERVISED)
    box.write(SUPERVISE, "", 0o755)
    box.write("/run/gptoss/gptoss-vllm.pid", "4242\n")
    box.write("/run/gptoss/gptoss-vllm.state", json.dumps({"state": state, "main_pid": 4250}))
    if proc_stat:
        box.write("/proc/4242/stat", proc_stat)
    m = _fact(box)["value"]
    assert (m["running"], m["state"]) == (False, want)


def test_no_manifest_field_no_systemd_and_supervise_installed_is_supervisor(box):
    box.manifest()  # a manifest written before it recorded the manager
    box.write(SUPERVISE, "", 0o755)
    m = _fact(box)["value"]
    assert m["manager"] == "supervisor" and m["manifest_manager"] is None and m["log_file"] == LOG
    assert m["running"] is False and m["log_exists"] is False


def test_systemd_as_pid1_asks_systemctl_is_active(box):
    (box.root / "run/systemd/system").mkdir(parents=True)
    box.manifest(service_manager="systemd")
    box.tool("systemctl", 'echo "$@" > /tmp/.unused 2>/dev/null; [ "$2" = gptoss-vllm.service ] && echo activating; exit 3')
    m = _fact(box)["value"]
    assert (m["manager"], m["pid1_systemd"], m["state"], m["running"]) == ("systemd", True, "activating", False)
    box.tool("systemctl", "echo active")
    assert _fact(box)["value"]["running"] is True


def test_a_hung_systemctl_is_bounded(box, monkeypatch):
    from gptoss_doctor.collect import service as S

    monkeypatch.setattr(S, "SYSTEMCTL_TIMEOUT_S", 0.3)
    (box.root / "run/systemd/system").mkdir(parents=True)
    box.manifest(service_manager="systemd")
    box.tool("systemctl", "sleep 5")
    started = time.perf_counter()
    m = _fact(box)["value"]
    assert time.perf_counter() - started < 3
    assert m["running"] is None and "did not finish in 0.3 s" in m["state_error"]


def test_manifest_systemd_without_systemd_is_unknown_state(box):
    box.manifest(service_manager="systemd")
    m = _fact(box)["value"]
    assert (m["manager"], m["pid1_systemd"], m["running"]) == ("systemd", False, None)
    assert "not PID 1" in m["state_error"]


# -- every fix, under either manager ------------------------------------------------------------------


def _supervised(pid1: bool) -> dict:
    return {"value": {"manager": "supervisor", "why": "test", "pid1_systemd": pid1, "manifest_manager": "supervisor",
                      "unit": "gptoss-vllm.service", "supervise": SUPERVISE, "supervise_installed": True,
                      "log_file": LOG, "log_exists": True, "state": "active", "running": True, "pid": 1, "main_pid": 2}}


def _cases():
    return sorted((FIXTURES / "checks").glob("*/*.json"))


def _case_snapshot(path: Path) -> Snapshot:
    from test_checks import apply_case, load_base

    case = json.loads(path.read_text())
    return apply_case(load_base(case["snapshot"]), case, path.name)


SERVICE_SYSTEMD = ("systemctl restart gptoss-vllm", "systemctl edit", "journalctl -u gptoss-vllm")


@pytest.mark.parametrize("pid1", [False, True], ids=["container", "systemd-host-chose-supervisor"])
def test_every_check_case_under_gptoss_supervise_names_its_commands(kb, pid1):
    """Each fixture case judged twice: as recorded (systemd) and with gptoss-supervise running the
    service. The findings are the same; under the supervisor no fix names systemctl/journalctl for
    the service, each systemd restart has become `gptoss-supervise restart`, and where systemd is
    not PID 1 no command names systemctl at all."""
    checked = restarts = 0
    for path in _cases():
        spec = REGISTRY.get(path.parent.name)
        if spec is None or spec.id == "service-manager-mismatch":  # judges the manager fact itself
            continue
        snap = _case_snapshot(path)
        as_systemd, _ = run_one(snap, kb, spec)
        sup = Snapshot(copy.deepcopy(snap.data))
        sup.set("service.manager", _supervised(pid1))
        as_supervised, _ = run_one(sup, kb, spec)
        assert [f.id for f in as_supervised] == [f.id for f in as_systemd], path
        for before, after in zip(as_systemd, as_supervised):
            commands = " ;; ".join(after.fix.commands)
            assert not any(s in commands for s in SERVICE_SYSTEMD), f"{path}: {commands}"
            if not pid1:
                assert "systemctl" not in commands and "journalctl" not in commands, f"{path}: {commands}"
            if any(c.startswith("systemctl restart gptoss-vllm") for c in before.fix.commands):
                assert f"{SUPERVISE} restart" in after.fix.commands, path
                restarts += 1
            checked += 1
    assert checked > 40 and restarts > 10  # the cases exercise many fixes, not a few


def test_systemd_fixes_keep_systemctl(kb):
    snap = _case_snapshot(FIXTURES / "checks" / "stale-vllm-env-service" / "gptoss-vars-after-upgrade.json")
    (finding,), _ = run_one(snap, kb, REGISTRY["stale-vllm-env-service"])
    assert finding.fix.commands[-1] == "systemctl restart gptoss-vllm"


def test_every_log_signature_under_the_supervisor_names_no_systemd_command():
    table = load_signatures()
    with_alternatives = [s for s in table if s.supervisor_commands]
    assert len(with_alternatives) >= 5
    for sig in table:
        for c in sig.commands_for("supervisor"):
            assert "systemctl" not in c and "journalctl" not in c, (sig.id, c)
    (finding,) = scan([PORT_IN_USE], manager="supervisor")
    assert finding.fix.commands == ["ss -ltnp", f"{SUPERVISE} status"]
    (finding,) = scan([PORT_IN_USE])
    assert "systemctl status gptoss-vllm" in finding.fix.commands


def test_a_signature_with_systemctl_needs_supervisor_commands():
    row = ('[[signature]]\nid = "x"\nseverity = "error"\ntitle = "t"\npatterns = ["boom"]\nfix = "f"\n'
           'source = "s"\ncommands = ["systemctl restart gptoss-vllm"]\n')
    with pytest.raises(SignatureError, match="add supervisor_commands"):
        parse_signatures(row, "test.toml")
    with pytest.raises(SignatureError, match="no systemd runs where these are shown"):
        parse_signatures(row + 'supervisor_commands = ["journalctl -u gptoss-vllm"]\n', "test.toml")
    (sig,) = parse_signatures(row + f'supervisor_commands = ["{SUPERVISE} restart"]\n', "test.toml")
    assert sig.commands_for("supervisor") == (f"{SUPERVISE} restart",)


def test_commands_for_reads_old_snapshots_and_junk():
    assert commands_for({}).restart() == "systemctl restart gptoss-vllm"
    old = {"manifest": {"value": {"service_manager": "supervisor", "service_log": "/srv/log/v.log"}}}
    assert commands_for(old).restart() == f"{SUPERVISE} restart" and commands_for(old).log() == "cat /srv/log/v.log"
    assert commands_for({"service.manager": {"value": "junk"}, "manifest": {"value": ["x"]}}).manager == "systemd"


# -- `gptoss-doctor logs` with no FILE ---------------------------------------------------------------


def _logs(capsys, box: Box, *argv: str):
    rc = main(["logs", *argv], env=box.env())
    out, err = capsys.readouterr()
    return rc, out, err


def test_logs_reads_the_supervisors_log_file(capsys, box):
    box.manifest(**SUPERVISED)
    box.write(SUPERVISE, "", 0o755)
    box.write(LOG, (FIXTURES / "logs" / "port-in-use-uvicorn.log").read_text())
    rc, out, err = _logs(capsys, box, "--json")
    report = json.loads(out)
    (finding,) = [f for f in report["findings"] if f["id"] == "port-in-use"]
    assert finding["evidence"]["file"] == LOG
    assert f"{SUPERVISE} status" in finding["fix"]["commands"]
    assert rc == report["exit_code"] == 1 and err == ""


def test_logs_reads_the_units_journal_where_systemd_runs_it(capsys, box):
    (box.root / "run/systemd/system").mkdir(parents=True)
    box.manifest(service_manager="systemd")
    box.tool("systemctl", "echo active")
    argv_file = box.root / "journalctl.argv"
    log = box.write("/srv/journal.txt", "Nov 27 10:00:00 gpu1 vllm[123]: " + PORT_IN_USE + "\n")
    box.tool("journalctl", f'echo "$@" > {argv_file}; cat {log}')
    rc, out, _ = _logs(capsys, box, "--json")
    (finding,) = json.loads(out)["findings"]
    assert finding["id"] == "port-in-use" and finding["evidence"]["file"] == "journalctl -u gptoss-vllm -b --no-pager"
    assert argv_file.read_text().split() == ["-u", "gptoss-vllm", "-b", "--no-pager"]
    assert "systemctl status gptoss-vllm" in finding["fix"]["commands"] and rc == 1


def _one_line_error(rc, out, err, *needles):
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_logs_without_a_deploy_or_a_log_is_one_line(capsys, box):
    _one_line_error(*_logs(capsys, box), "no FILE given", "nothing deployed", "- for stdin")
    box.manifest(**SUPERVISED)
    box.write(SUPERVISE, "", 0o755)
    _one_line_error(*_logs(capsys, box), LOG, "does not exist", f"{SUPERVISE} status")


def test_logs_when_journalctl_fails_is_one_line(capsys, box):
    (box.root / "run/systemd/system").mkdir(parents=True)
    box.manifest(service_manager="systemd")
    box.tool("systemctl", "echo active")
    box.tool("journalctl", "echo 'Failed to open journal' >&2; exit 1")
    _one_line_error(*_logs(capsys, box), "journalctl -u gptoss-vllm -b --no-pager", "exited 1", "Failed to open journal")
    box.tool("journalctl", "echo 'Hint: You are currently not seeing messages from other users and the system.' >&2; "
                           "echo '-- No entries --'")
    _one_line_error(*_logs(capsys, box), "shows nothing to this user")


def test_logs_of_a_file_still_reads_the_file_and_names_this_boxs_commands(capsys, box, tmp_path):
    box.manifest(**SUPERVISED)
    box.write(SUPERVISE, "", 0o755)
    other = tmp_path / "copied.log"
    other.write_text(PORT_IN_USE + "\n")
    rc, out, _ = _logs(capsys, box, "--json", str(other))
    (finding,) = json.loads(out)["findings"]
    assert finding["evidence"]["file"] == str(other) and f"{SUPERVISE} status" in finding["fix"]["commands"]


# -- the header ---------------------------------------------------------------------------------------


def _header(facts: dict) -> str:
    import io

    from gptoss_doctor.render import make_console

    stream = io.StringIO()
    render_report(build_report([], facts, {}, "gpu1", 0.1), console=make_console(stream))
    return stream.getvalue()


def test_header_shows_the_manager_whether_it_runs_and_the_install_source():
    facts = {"service.manager": _supervised(False),
             "manifest": {"value": {"wheelhouse": {"path": "/srv/wh", "no_deps": True},
                                    "base_python": {"path": BASE, "torch": "2.11.0+cu130"}}}}
    text = _header(facts)
    assert "gptoss-supervise (test) · gptoss-vllm.service running (pid 2) · log /var/log/gptoss/gptoss-vllm.log" in text
    assert f"wheelhouse /srv/wh (--no-deps) · base Python {BASE} (torch 2.11.0+cu130)" in text
    stopped = {"value": {**_supervised(False)["value"], "running": False, "state": "failed", "manager": "systemd",
                         "log_file": None}}
    assert "gptoss-vllm.service NOT running (failed)" in _header({"service.manager": stopped})
    assert "none: nothing deployed" in _header({"service.manager": {"absent": "nothing deployed"}})


# -- end to end: the real gptoss-supervise, the doctor watching it --------------------------------------


def test_the_doctor_follows_a_real_supervised_service(capsys, box, tmp_path):
    """A fake root whose /proc is the real one: the real program starts a service from the unit
    file, the doctor sees it running (the monitor's pid), reads its log with `logs` and no FILE,
    and sees it stopped after `gptoss-supervise stop`."""
    (box.root / "proc").symlink_to("/proc")
    script = f"print({PORT_IN_USE!r}, flush=True); import time; time.sleep(600)"
    argv = " ".join(unit_mod._systemd_quote(a) for a in [sys.executable, "-c", script])
    box.write("/etc/gptoss/empty.env", "")
    unit = box.write("/etc/systemd/system/gptoss-vllm.service",
                     f"[Service]\nEnvironmentFile={box.root}/etc/gptoss/empty.env\nExecStart={argv}\n"
                     "Restart=on-failure\nRestartSec=1\nTimeoutStopSec=5\n")
    box.manifest(**SUPERVISED)
    box.write(SUPERVISE, PROGRAM.read_text(), 0o755)  # the deploy installs the same program there
    env = {**os.environ, "GPTOSS_SUPERVISE_RUN_DIR": str(box.root / "run/gptoss"),
           "GPTOSS_SUPERVISE_LOG_DIR": str(box.root / "var/log/gptoss")}

    def supervise(verb):
        return subprocess.run([sys.executable, str(PROGRAM), verb, "--unit", str(unit)], env=env,
                              capture_output=True, text=True, timeout=60)

    try:
        assert supervise("start").returncode == 0
        monitor = int((box.root / "run/gptoss/gptoss-vllm.pid").read_text())
        m = _fact(box)["value"]
        assert (m["manager"], m["running"], m["pid"]) == ("supervisor", True, monitor)
        end = time.time() + 15
        while PORT_IN_USE not in (box.root / LOG.lstrip("/")).read_text() and time.time() < end:
            time.sleep(0.1)
        rc, out, _ = _logs(capsys, box, "--json")
        assert "port-in-use" in [f["id"] for f in json.loads(out)["findings"]]
    finally:
        supervise("stop")
    m = _fact(box)["value"]
    assert (m["running"], m["state"], m["pid"]) == (False, "inactive", None)


@pytest.mark.parametrize("case, check_id", [
    ("service-env-file-missing/env-file-deleted-supervised", "service-env-file-missing"),
    ("stale-vllm-env-service/gptoss-vars-after-upgrade-supervised", "stale-vllm-env-service"),
])
def test_supervised_fixture_cases_restart_with_gptoss_supervise(kb, case, check_id):
    (finding,), _ = run_one(_case_snapshot(FIXTURES / "checks" / f"{case}.json"), kb, REGISTRY[check_id])
    assert finding.fix.commands[-1] == f"{SUPERVISE} restart"
    assert "systemd" not in finding.title


def test_the_doctor_and_the_deploy_agree_on_the_supervisors_paths():
    """The doctor cannot import the deploys (it runs alone on hosts): its copy of the paths must
    be the deploy's."""
    from gptoss_deploy import supervisor
    from gptoss_doctor import service_manager as SM

    assert (SM.SUPERVISE, SM.default_log_file(), SM.default_pid_file()) == (
        supervisor.PROGRAM, supervisor.LOG_FILE, supervisor.PID_FILE)
    assert SM.UNIT == C.UNIT and SM.UNIT_PATH == unit_mod.UNIT_PATH
    import re

    for sig in load_signatures():  # the log signatures' own supervisor commands name the same program and log
        for c in sig.supervisor_commands:
            for path in re.findall(r"/[^\s;'\"]*gptoss[^\s;'\"]*", c):
                assert path in (SM.SUPERVISE, SM.default_log_file(), SM.UNIT_PATH), (sig.id, c)
