"""Fleet doctor (deploys/doctor.py): judging snapshots on the controller with the real checks,
the table and JSON, exit codes; then on the local fleet: every host collected, drift from a
host's manifest, an error finding on one host, an unreachable host.

The fleet tests share the upgrade tests' testbed (GPTOSS_UPGRADE_TESTBED_STATE, default
/var/lib/gptoss-testbed-upgrade, hosts 127.0.0.41-43) so they never disturb another fleet.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_doctor.snapshot import SCHEMA, value
# the same testbed as the upgrade tests, so one definition of where it is and how to reach it
from test_fleet_upgrade import _env, boot_testbed

REPO = Path(__file__).resolve().parents[1]
INVENTORY = REPO / "inventories" / "testbed.py"


def _load_fleet_doctor():
    """deploys/doctor.py is a pyinfra deploy file and a script; outside pyinfra it is a plain module."""
    spec = importlib.util.spec_from_file_location("fleet_doctor", REPO / "deploys" / "doctor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FD = _load_fleet_doctor()


def snapshot(manifest: dict | None, vllm: str | None) -> str:
    facts = {}
    if manifest is not None:
        facts["manifest"] = value(manifest, "/etc/gptoss/manifest.json")
    if vllm is not None:
        facts["vllm.install"] = value({"version": vllm, "path": "/opt/gptoss/current/lib/python3.11/site-packages/vllm",
                                       "version_py": None})
    return json.dumps({"schema": SCHEMA, "doctor_version": "test", "collected_at": "2026-12-01T00:00:00+00:00", "host": "h",
                       "facts": facts})


MANIFEST = {"schema": "gptoss-deploy/manifest@1", "stack": "vllm-0.33.0", "versions": {"vllm": "0.33.0"}}


# -- judge / report / render (pure, the controller's real checks) ------------------------------------


def test_judge_reports_drift_from_the_manifest_with_the_controllers_checks():
    row = FD.judge("h2", snapshot(MANIFEST, "0.28.0"), "__exit=0")
    assert row["host"] == "h2" and row["stack"] == "vllm-0.33.0" and row["vllm_installed"] == "0.28.0"
    assert row["drift"] == ["vllm 0.28.0 (manifest 0.33.0)"]
    assert "manifest-drift" in [f["id"] for f in row["findings"]]
    assert row["counts"]["warning"] >= 1 and row["exit_code"] == 0


def test_a_stack_other_than_the_inventorys_is_drift():
    row = FD.judge("h3", snapshot(MANIFEST, "0.33.0"), "__exit=0", (), "vllm-0.34.0")
    assert row["drift"] == ["stack vllm-0.33.0 (inventory: vllm-0.34.0)"] and row["stack_wanted"] == "vllm-0.34.0"
    assert FD.judge("h3", snapshot(MANIFEST, "0.33.0"), "__exit=0", (), "vllm-0.33.0")["drift"] == []


def test_judge_no_drift_when_installed_matches():
    row = FD.judge("h1", snapshot(MANIFEST, "0.33.0"), "__exit=0")
    assert row["drift"] == [] and "manifest-drift" not in [f["id"] for f in row["findings"]]
    assert FD.judge("h1", snapshot(None, "0.33.0"), "__exit=0")["drift"] == ["no manifest"]


@pytest.mark.parametrize("stdout,stderr,expect", [
    ("", "sh: 1: /usr/local/bin/gptoss-doctor: not found\n__exit=127", "not installed there"),
    ("not json", "__exit=0", "unreadable"),
    ('{"schema": "other"}', "__exit=0", "schema is 'other'"),
    ("", "Terminated\n__exit=124", "exited 124: Terminated"),
])
def test_unreadable_hosts_are_exit_2_with_one_line(stdout, stderr, expect):
    row = FD.judge("bad", stdout, stderr)
    assert row["exit_code"] == 2 and expect in row["error"] and "\n" not in row["error"]


def test_site_stacks_join_the_controllers_knowledge(tmp_path):
    from gptoss_doctor import knowledge
    from gptoss_testbed import catalog

    site = tmp_path / "site-stacks.toml"
    site.write_text(catalog.broken_stack_toml(knowledge.load().latest_stack))
    manifest = {**MANIFEST, "stack": catalog.BROKEN_STACK, "versions": {"vllm": catalog.BROKEN_VLLM}}
    row = FD.judge("h", snapshot(manifest, "0.33.0"), "__exit=0", (str(site),))
    assert row["exit_code"] == 0 and row["drift"] == [f"vllm 0.33.0 (manifest {catalog.BROKEN_VLLM})"]
    (tmp_path / "bad.toml").write_text("[[stack]]\nname = 1\n")
    bad = FD.judge("h", snapshot(manifest, "0.33.0"), "__exit=0", (str(tmp_path / "bad.toml"),))
    assert bad["exit_code"] == 2 and "is invalid" in bad["error"] and "\n" not in bad["error"]


def test_fleet_exit_code_is_the_worst_host_and_worst_hosts_come_first():
    ok = {"host": "a", "exit_code": 0, "counts": {"warning": 1}}
    err = {"host": "b", "exit_code": 1, "counts": {"error": 2}}
    gone = FD.unreadable("c", "could not connect")
    assert FD.fleet_report([ok])["exit_code"] == 0
    assert FD.fleet_report([ok, err])["exit_code"] == 1
    rep = FD.fleet_report([ok, err, gone])
    assert rep["exit_code"] == 2 and [r["host"] for r in rep["hosts"]] == ["c", "b", "a"]
    assert rep["schema"] == "gptoss-doctor/fleet@1"


def test_table_has_a_row_per_host_with_drift_and_findings():
    rows = [FD.judge("h1", snapshot(MANIFEST, "0.33.0"), "__exit=0"), FD.judge("h2", snapshot(MANIFEST, "0.28.0"), "__exit=0"),
            FD.unreadable("h3", "could not connect")]
    buf = io.StringIO()
    FD.render_table(FD.fleet_report(rows), file=buf)
    text = buf.getvalue()
    lines = {name: next(line for line in text.splitlines() if f" {name} " in line) for name in ("h1", "h2", "h3")}
    assert "none" in lines["h1"] and "vllm 0.28.0 (manifest" in lines["h2"] and "manifest-drift" in lines["h2"]
    assert "could not connect" in lines["h3"]
    assert text.strip().endswith("some hosts could not be read · exit 2")


def test_script_mode_bad_inventory_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "deploys/doctor.py", str(tmp_path / "nope.py")], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.py: no such file" in r.stderr


# -- the local fleet -----------------------------------------------------------------------------------


def ssh(fleet: dict, address: str, command: str) -> None:
    r = subprocess.run(["ssh", "-i", fleet["ssh_key"], "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{address}", command],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def fleet_doctor(inventory: Path | str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "deploys/doctor.py", str(inventory), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=_env())


def deploy(stack: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pyinfra", "-y", str(INVENTORY), "deploys/gptoss.py", "--data",
                        f"gptoss_stack={stack}"], cwd=REPO, capture_output=True, text=True, timeout=900, env=_env())
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


@pytest.fixture(scope="module")
def fleet():
    lock, st = boot_testbed()
    st["new"] = st["stacks"][-1]["name"]
    deploy(st["new"])
    yield st
    deploy(st["new"])  # put back what the tests below changed on the hosts
    lock.close()


@pytest.mark.fleet
@pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root")
def test_fleet_doctor_on_the_local_fleet(fleet, tmp_path):
    names = list(fleet["addr"])
    clean = fleet_doctor(INVENTORY, "--json")
    assert clean.returncode == 0, clean.stderr
    report = json.loads(clean.stdout)
    assert sorted(r["host"] for r in report["hosts"]) == sorted(names)
    assert all(r["stack"] == fleet["new"] and r["drift"] == [] and r["exit_code"] == 0 for r in report["hosts"])

    # drift on one host (someone edited the manifest), an error finding on another (key world-readable)
    drifted, broken = names[1], names[2]
    ssh(fleet, fleet["addr"][drifted], "python3 -c \"import json; p='/etc/gptoss/manifest.json'; m=json.load(open(p)); "
        "m['versions']['vllm']='0.0.1'; json.dump(m, open(p, 'w'))\"")
    ssh(fleet, fleet["addr"][broken], "chmod 0755 /etc/gptoss && chmod 0644 /etc/gptoss/api-key")

    bad = fleet_doctor(INVENTORY, "--json")
    assert bad.returncode == 1, bad.stderr
    rows = {r["host"]: r for r in json.loads(bad.stdout)["hosts"]}
    assert any("(manifest 0.0.1)" in d for d in rows[drifted]["drift"]) and rows[drifted]["exit_code"] == 0
    assert rows[broken]["exit_code"] == 1 and "world-readable-secrets" in [f["id"] for f in rows[broken]["findings"]]
    assert json.loads(bad.stdout)["hosts"][0]["host"] == broken  # worst first

    # the same through the pyinfra CLI: the table on stdout, JSON in a file, exit 1
    json_path = tmp_path / "fleet.json"
    cli = subprocess.run([sys.executable, "-m", "pyinfra", "-y", str(INVENTORY), "deploys/doctor.py", "--data",
                          f"gptoss_doctor_json={json_path}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=_env())
    assert cli.returncode == 1
    table_rows = [line for line in cli.stdout.splitlines() if any(f" {n} " in line for n in names)]
    assert len(table_rows) == 3, cli.stdout
    assert "world-readable-secrets" in next(line for line in table_rows if f" {broken} " in line)
    assert json.loads(json_path.read_text())["exit_code"] == 1

    # a host that cannot be reached: exit 2, its row says so
    st = fleet
    hosts = [(n, {"ssh_hostname": a}) for n, a in st["addr"].items()] + [("ghost", {"ssh_hostname": "127.0.0.49"})]
    inv = tmp_path / "inv.py"
    inv.write_text(f"hosts = ({hosts!r}, {{'ssh_user': 'root', 'ssh_key': {st['ssh_key']!r}, "
                   f"'ssh_known_hosts_file': '/dev/null', 'ssh_strict_host_key_checking': 'no'}})\n")
    ghost = fleet_doctor(inv, "--json")
    assert ghost.returncode == 2, ghost.stderr
    rows = {r["host"]: r for r in json.loads(ghost.stdout)["hosts"]}
    assert rows["ghost"]["error"] == "could not connect" and len(rows) == 4


# -- live state on a deployed host: break it over ssh, run the doctor there, see it named ------------

STOP = "if [ -d /run/systemd/system ]; then systemctl stop gptoss-vllm; else /opt/gptoss/bin/gptoss-supervise stop; fi"
START = "if [ -d /run/systemd/system ]; then systemctl restart gptoss-vllm; else /opt/gptoss/bin/gptoss-supervise restart; fi"

# A STAND-IN for nvidia-smi (the fleet has no GPUs), written by this test: one 80 GiB H100 with
# 70000 MiB in use by the process whose pid is in /run/gptoss-test-holder.pid.
FAKE_NVIDIA_SMI = r"""#!/bin/sh
# STAND-IN for nvidia-smi, written by tests/test_fleet_doctor.py: there is no GPU on this host.
case "$*" in
  *--query-compute-apps*) echo "$(cat /run/gptoss-test-holder.pid), python3, 70000, GPU-STANDIN-0";;
  *--query-gpu*) echo "0, NVIDIA H100 80GB HBM3, GPU-STANDIN-0, 9.0, 81559, 70000, Enabled, 580.95.05";;
  *) echo "| NVIDIA-SMI 580.95.05    Driver Version: 580.95.05     CUDA Version: 13.0     |";;
esac
"""


def on_host(fleet: dict, address: str, command: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    r = subprocess.run(["ssh", "-i", fleet["ssh_key"], "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{address}", command],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode in ok, f"`{command}` exited {r.returncode}: {r.stderr[-2000:]}"
    return r


def host_doctor(fleet: dict, address: str, *args: str) -> dict:
    """`gptoss-doctor --json` run on the host, as an operator would there."""
    r = on_host(fleet, address, "gptoss-doctor --json " + " ".join(args), ok=(0, 1))
    return json.loads(r.stdout)


def named(report: dict, check_id: str) -> list[dict]:
    return [f for f in report["findings"] if f["id"] == check_id]


@pytest.mark.fleet
@pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root")
def test_live_state_breaks_are_named_on_a_deployed_host(fleet):
    """The three breaks that left the box doctor at "no errors" on the lent H200, and the other
    live-state faults, made for real on a deployed testbed host, each named by the doctor
    running there; each put back before the next."""
    address = fleet["addr"][sorted(fleet["addr"])[0]]
    clean = host_doctor(fleet, address)
    assert clean["exit_code"] == 0, [f["id"] for f in clean["findings"]]
    port = clean["facts"]["service.port"]["value"]["port"]
    # no GPU here: said plainly, and never a bare "no errors"
    assert named(clean, "no-gpu") and "the GPUs" in [g["what"] for g in clean["not_checked"]]

    # 1. another process holds the service's port
    try:
        on_host(fleet, address, f"{STOP}; setsid nohup python3 -m http.server {port} --bind 127.0.0.1 "
                                 ">/dev/null 2>&1 & echo $! > /run/gptoss-test-port.pid; sleep 1")
        (held,) = named(host_doctor(fleet, address), "port-held-by-other")
        assert held["severity"] == "error" and "http.server" in held["title"], held["title"]
    finally:
        on_host(fleet, address, f"kill $(cat /run/gptoss-test-port.pid); rm -f /run/gptoss-test-port.pid; {START}")

    # 2. CUDA_VISIBLE_DEVICES= added to the service's env file
    try:
        on_host(fleet, address, "cp -p /etc/gptoss/gptoss.env /root/gptoss.env.bak && echo CUDA_VISIBLE_DEVICES= >> /etc/gptoss/gptoss.env")
        (hidden,) = named(host_doctor(fleet, address), "visible-devices-invalid")
        assert "CUDA_VISIBLE_DEVICES=''" in hidden["title"] and "hides every GPU" in hidden["title"]
    finally:
        on_host(fleet, address, "cp -p /root/gptoss.env.bak /etc/gptoss/gptoss.env")

    # 3. the model / HF cache unusable by the service's user (judged as that user, not as root)
    paths = clean["facts"]["service.access"]["value"]["paths"]
    target = paths[0]["path"]
    top = "/" + target.strip("/").split("/")[0] + "/" + target.strip("/").split("/")[1]
    try:
        on_host(fleet, address, f"stat -c %a {top} > /root/mode.bak && chmod 0700 {top}")
        (denied,) = named(host_doctor(fleet, address), "service-user-cannot-read")
        assert f"cannot enter {top} (0700" in denied["title"], denied["title"]
    finally:
        on_host(fleet, address, f"chmod $(cat /root/mode.bak) {top}")

    # 4. GPU memory held by another process (nvidia-smi is a stand-in: the fleet has no GPU)
    try:
        on_host(fleet, address, "cat > /usr/local/bin/nvidia-smi <<'EOF'\n" + FAKE_NVIDIA_SMI + "EOF\n"
                "chmod 0755 /usr/local/bin/nvidia-smi; setsid nohup sleep 600 >/dev/null 2>&1 & echo $! > /run/gptoss-test-holder.pid")
        report = host_doctor(fleet, address)
        (held,) = named(report, "gpu-memory-held")
        assert "held by pid" in held["title"] and "sleep 600" in held["title"], held["title"]
        assert not named(report, "no-gpu")
        # the other vendor's torch (a ROCm build) on this NVIDIA box
        version_py = clean["facts"]["torch.build"]["value"]["path"]
        on_host(fleet, address, f"cp -p {version_py} /root/torch-version.bak && "
                                f"sed -i -E \"s/^cuda = .*/cuda = None/; s/^hip = .*/hip = '6.4.43482'/\" {version_py}")
        (vendor,) = named(host_doctor(fleet, address), "torch-wrong-vendor")
        assert "ROCm" in vendor["title"], vendor["title"]
    finally:
        on_host(fleet, address, f"cp -p /root/torch-version.bak {clean['facts']['torch.build']['value']['path']}", ok=(0, 1))
        on_host(fleet, address, "kill $(cat /run/gptoss-test-holder.pid); rm -f /usr/local/bin/nvidia-smi /run/gptoss-test-holder.pid",
                ok=(0, 1))

    # 5. a CPU-only torch in the deployed venv
    venv = clean["facts"]["venv"]["value"]["path"]
    version_py = clean["facts"]["torch.build"]["value"]["path"]
    try:
        on_host(fleet, address, f"cp -p {version_py} /root/torch-version.bak && "
                                f"sed -i -E \"s/^cuda = .*/cuda = None/; s/^hip = .*/hip = None/\" {version_py}")
        (cpu,) = named(host_doctor(fleet, address), "torch-cpu-only")
        assert "install the CUDA build" in cpu["title"] and venv in " ".join(cpu["fix"]["commands"])
    finally:
        on_host(fleet, address, f"cp -p /root/torch-version.bak {version_py}")

    # 6. too little free disk for the model still to download: a 1 MiB filesystem over the HF cache
    disk = clean["facts"]["model.disk"]["value"]
    assert disk["complete"] is False, disk  # the stand-in vLLM never downloads the model
    hub = disk["filesystem_of"]
    try:
        on_host(fleet, address, f"mount -t tmpfs -o size=1m gptoss-test-small {hub}")
        (full,) = named(host_doctor(fleet, address), "model-disk-space")
        assert "GiB free" in full["title"] and hub in full["title"], full["title"]
    finally:
        on_host(fleet, address, f"umount {hub}", ok=(0, 1, 32))

    # 7. --venv X: a venv beside the deployment, its python a broken link, a dist-info without
    # METADATA; judged on its own (the manifest describes the deployed venv, not X)
    try:
        sp = "/tmp/gptoss-test-venv/lib/python3.11/site-packages"
        on_host(fleet, address, f"rm -rf /tmp/gptoss-test-venv && mkdir -p {sp}/pytorch_triton-3.4.0.dist-info /tmp/gptoss-test-venv/bin && "
                                "printf 'home = /nonexistent\\nversion_info = 3.11.2\\n' > /tmp/gptoss-test-venv/pyvenv.cfg && "
                                "ln -s /nonexistent/python3.11 /tmp/gptoss-test-venv/bin/python && "
                                f"echo 'triton/__init__.py,,' > {sp}/pytorch_triton-3.4.0.dist-info/RECORD")
        report = host_doctor(fleet, address, "--venv", "/tmp/gptoss-test-venv")
        assert named(report, "venv-python-broken") and named(report, "dist-info-without-metadata")
        assert "not the deployed venv" in report["facts"]["manifest"]["absent"]
        assert report["facts"]["venv"]["value"]["deployed"] is False
    finally:
        on_host(fleet, address, "rm -rf /tmp/gptoss-test-venv")

    assert host_doctor(fleet, address)["exit_code"] == 0  # put back
