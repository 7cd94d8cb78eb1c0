"""gptoss-supervise: the service on hosts without systemd (deploys/gptoss_deploy/gptoss_supervise.py).

- The unit the deploy writes, read by the supervisor, gives exactly the unit's argv, env files,
  user and restart policy.
- The real program, run as a process here (no systemd on this machine): start / status / restart /
  stop with a pid file and a log file, the env file's values in the service's environment (not
  its argv), the unit's user, restart on failure, a failed start reported, bad input one line.
- `pyinfra @local` (marked fleet: it needs the local fleet's package index and root): the deploy
  detects that this machine has no systemd and runs the stand-in vLLM under gptoss-supervise,
  air-gapped (a wheelhouse, a base Python holding the stand-in torch), behind the same health
  gate; a second run changes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

from gptoss_deploy import config as C  # noqa: E402
from gptoss_deploy import gptoss_supervise as S  # noqa: E402
from gptoss_deploy import service  # noqa: E402
from gptoss_doctor.layout import RUN_DIR, SUPERVISE, UNIT_STEM  # noqa: E402

PROGRAM = REPO / "deploys" / "gptoss_deploy" / "gptoss_supervise.py"
RUN_STATE = f"{RUN_DIR}/{UNIT_STEM}.state"  # gptoss-supervise's state file (main pid, restarts)
DEBIAN = {"os_id": "debian", "os_like": None, "os_pretty": "Debian GNU/Linux 12 (bookworm)", "arch": "x86_64",
          "python_path": "/usr/bin/python3", "python_version": "3.11.2", "gpus": [], "nvswitch_count": 0, "init": "none"}


# -- the unit, as the supervisor reads it ------------------------------------------------------


def test_supervisor_runs_exactly_what_the_unit_says(kb, key_file):
    data = {"gptoss_stack": "vllm-0.26.0", "gptoss_gpu_family": "H100", "gptoss_api_key_file": key_file,
            "gptoss_extra_serve_args": ["--served-model-name", "a b$c%d"]}
    cfg = C.validate("h1", data, DEBIAN, kb)
    assert cfg.service_manager == "supervisor"
    spec = S.service_spec(service.unit_text(cfg), service.UNIT_PATH)
    assert spec["argv"] == cfg.serve_argv()  # quoting, $ and % round-trip
    assert spec["env_files"] == [(C.ENV_FILE, False), (C.KEY_FILE, False)]
    assert (spec["user"], spec["group"], spec["workdir"]) == (C.SERVICE_USER, C.SERVICE_USER, C.STATE_DIR)
    assert (spec["restart"], spec["restart_sec"], spec["stop_timeout"], spec["umask"]) == ("on-failure", 10.0, 60.0, 0o027)
    assert not any("sk-test" in a for a in spec["argv"])


def test_env_file_is_read_as_systemd_reads_it():
    text = "# comment\nexport A=1\nB='two words'\nC=\"x=y\"\nnot a line\n; other\nD=\n"
    assert S.parse_env_file(text) == {"A": "1", "B": "two words", "C": "x=y", "D": ""}


def test_restart_policy_follows_systemd():
    assert S.should_restart("on-failure", 1) and S.should_restart("on-failure", -9)
    assert not S.should_restart("on-failure", 0) and not S.should_restart("no", 1)
    assert S.should_restart("always", 0)


# -- the program, for real ---------------------------------------------------------------------


def _unit(tmp_path: Path, script: str, restart="on-failure", env_file: str | None = None, user: str | None = None) -> Path:
    # a user other than root must be able to run the interpreter (this venv's lives under /root)
    python = "/usr/bin/python3" if user and os.access("/usr/bin/python3", os.X_OK) else sys.executable
    argv = " ".join(service._systemd_quote(a) for a in [python, "-c", script])
    env_file = env_file or str(tmp_path / "svc.env")
    lines = ["[Unit]", "Description=test", "[Service]", f"EnvironmentFile={env_file}", "WorkingDirectory=/",
             f"ExecStart={argv}", f"Restart={restart}", "RestartSec=1", "TimeoutStopSec=5", "UMask=0027"]
    if user:
        import grp

        lines += [f"User={user}", f"Group={grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name}"]
    path = tmp_path / "svc-test.service"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(tmp_path: Path, unit: Path, *verb: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTOSS_SUPERVISE_RUN_DIR": str(tmp_path / "run"), "GPTOSS_SUPERVISE_LOG_DIR": str(tmp_path / "log")}
    return subprocess.run([sys.executable, str(PROGRAM), *verb, "--unit", str(unit)], env=env, capture_output=True,
                          text=True, timeout=60)


def _state(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "svc-test.state").read_text())


def _until(pred, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


SERVE = ("import os, sys, time; "
         "print('greeting=' + os.environ.get('GREETING', '?'), 'uid=%d' % os.getuid(), 'umask=%o' % os.umask(0o27), flush=True); "
         "time.sleep(600)")


@pytest.fixture()
def supervised(tmp_path):
    (tmp_path / "svc.env").write_text("GREETING='hello world'\n")
    user = "nobody" if os.geteuid() == 0 else None
    unit = _unit(tmp_path, SERVE, user=user)
    yield unit, user
    _run(tmp_path, unit, "stop")


def test_start_status_restart_stop(tmp_path, supervised):
    unit, user = supervised
    r = _run(tmp_path, unit, "start")
    assert r.returncode == 0, r.stderr
    assert "active" in r.stdout
    log = tmp_path / "log" / "svc-test.log"
    assert _until(lambda: "greeting=hello world" in log.read_text())
    st = _state(tmp_path)
    monitor = int((tmp_path / "run" / "svc-test.pid").read_text())
    assert st["state"] == "active" and S.pid_alive(monitor) and S.pid_alive(st["main_pid"])
    assert "umask=27" in log.read_text()
    if user:
        assert _uid_of(st["main_pid"]) == pwd.getpwnam(user).pw_uid
        assert f"uid={pwd.getpwnam(user).pw_uid}" in log.read_text()
        assert oct(os.stat(log).st_mode & 0o777) == "0o640"
    assert _run(tmp_path, unit, "is-active").stdout.strip() == "active"
    assert _run(tmp_path, unit, "start").returncode == 0  # idempotent: still the same monitor
    assert int((tmp_path / "run" / "svc-test.pid").read_text()) == monitor

    r = _run(tmp_path, unit, "restart")
    assert r.returncode == 0, r.stderr
    new = _state(tmp_path)["main_pid"]
    assert new != st["main_pid"] and not S.pid_alive(st["main_pid"])

    r = _run(tmp_path, unit, "stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert not S.pid_alive(new)
    assert not (tmp_path / "run" / "svc-test.pid").exists()
    r = _run(tmp_path, unit, "is-active")
    assert (r.returncode, r.stdout.strip()) == (3, "inactive")


def test_a_killed_service_is_restarted_on_failure(tmp_path, supervised):
    unit, _ = supervised
    assert _run(tmp_path, unit, "start").returncode == 0
    first = _state(tmp_path)["main_pid"]
    os.kill(first, signal.SIGKILL)
    assert _until(lambda: _state(tmp_path).get("restarts") == 1 and _state(tmp_path)["state"] == "active")
    assert _state(tmp_path)["main_pid"] != first
    assert "main process exited, status=-9" in (tmp_path / "log" / "svc-test.log").read_text()


def test_a_service_that_fails_is_reported_failed(tmp_path):
    (tmp_path / "svc.env").write_text("")
    unit = _unit(tmp_path, "import sys; print('boom', flush=True); sys.exit(3)", restart="no")
    _run(tmp_path, unit, "start")
    assert _until(lambda: _run(tmp_path, unit, "is-active").stdout.strip() == "failed")
    r = _run(tmp_path, unit, "status")
    assert r.returncode == 3 and "failed" in r.stdout and "exit 3" in r.stdout
    assert "boom" in (tmp_path / "log" / "svc-test.log").read_text()


def test_with_restart_on_failure_a_crash_loop_shows_auto_restart(tmp_path):
    (tmp_path / "svc.env").write_text("")
    unit = _unit(tmp_path, "import sys; sys.exit(1)")
    try:
        _run(tmp_path, unit, "start")
        assert _until(lambda: _run(tmp_path, unit, "is-active").stdout.strip() == "auto-restart")
    finally:
        _run(tmp_path, unit, "stop")


def test_bad_input_is_one_line(tmp_path):
    unit = _unit(tmp_path, "pass", env_file=str(tmp_path / "missing.env"))
    r = _run(tmp_path, unit, "start")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"gptoss-supervise: EnvironmentFile {tmp_path}/missing.env: No such file or directory; fix: re-run the gptoss deploy"
    r = _run(tmp_path, tmp_path / "nope.service", "start")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "nope.service" in r.stderr
    r = subprocess.run([sys.executable, str(PROGRAM), "reload"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("usage: gptoss-supervise")


# -- pyinfra @local: this machine has no systemd ------------------------------------------------


def _testbed_env() -> dict:
    """The default local fleet's `env --json`, booting it first (`up` is idempotent): its index
    serves the stand-in wheels this deploy installs."""
    from test_fleet_deploy import run_testbed

    up = run_testbed("up")
    if up.returncode:
        pytest.fail(f"gptoss-testbed up failed: {up.stderr.strip()[-2000:]}")
    r = run_testbed("env", "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _fetch(index: str, name: str, version: str, dest: Path) -> None:
    """One wheel file from the local fleet's PEP 503 index (its stand-in wheels)."""
    import re

    page = urllib.request.urlopen(f"{index}/{name}/", timeout=30).read().decode()
    for href in re.findall(r'href="([^"#]+)', page):
        file = href.rsplit("/", 1)[-1]
        if file.endswith(".whl") and f"-{version}-" in file.replace("%2B", "+"):
            url = urllib.parse.urljoin(f"{index}/{name}/", href)
            (dest / file.replace("%2B", "+")).write_bytes(urllib.request.urlopen(url, timeout=60).read())
            return
    raise AssertionError(f"{name} {version} not on {index}")


local_fleet_only = [
    pytest.mark.fleet,
    pytest.mark.skipif(os.geteuid() != 0 or os.path.isdir("/run/systemd/system"),
                       reason="needs root on a machine without systemd"),
]


@local_fleet_only[0]
@local_fleet_only[1]
def test_pyinfra_local_deploy_runs_the_service_under_the_supervisor(tmp_path, bare_local_host):
    tb = _testbed_env()
    uv = shutil.which("uv") or str(REPO / ".venv" / "bin" / "uv")
    pypi, cu130 = tb["index_mirrors"]["pypi"], tb["index_mirrors"]["pytorch-cu130"]
    # the base Python of a vendor image: a venv holding the stand-in torch 2.11.0+cu130
    top = Path("/var/tmp/gptoss-supervisor-test")
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir(mode=0o755)
    base, wh = top / "base", top / "wheelhouse"
    wh.mkdir()
    subprocess.run([uv, "venv", "-q", "--python", "/usr/bin/python3", str(base)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", f"{base}/bin/python", "--default-index", pypi, "--index", cu130,
                    "--index-strategy", "unsafe-best-match", "torch==2.11.0+cu130"], check=True)
    for name, version in (("vllm", "0.26.0"), ("nvidia-cuda-nvcc", "13.0.88"), ("packaging", "26.4"), ("rich", "15.0.0"),
                          ("markdown-it-py", "4.3.0"), ("mdurl", "0.1.2"), ("pygments", "2.21.0")):
        _fetch(pypi, name, version, wh)
    model = top / "gpt-oss-20b"
    model.mkdir()
    shutil.copy(REPO / "tests/fixtures/gpu/gpt-oss-20b/config.json", model / "config.json")
    key = top / "api-key"
    key.write_text("sk-supervisor-test-0123\n")
    key.chmod(0o600)
    # JIT caches carried from a "warmed host" (jit_cache.py): unpacked for the service user
    jit = top / "jit-cache.tgz"
    with tarfile.open(jit, "w:gz") as tar:
        for name, data in ((".triton/cache/ab12/kernel.cubin", b"cubin"), ("cache/vllm/modelinfos/m.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    env = {**os.environ, "GPTOSS_E2E_WHEELHOUSE": str(wh), "GPTOSS_E2E_BASE_PYTHON": f"{base}/bin/python",
           "GPTOSS_E2E_API_KEY_FILE": str(key), "GPTOSS_E2E_PORT": "18123", "GPTOSS_E2E_GPU_FAMILY": "H100",
           "GPTOSS_E2E_HEALTH_TIMEOUT_S": "60", "GPTOSS_E2E_MODEL_PATH": str(model),
           "GPTOSS_E2E_STACK": "vllm-0.26.0", "GPTOSS_E2E_CUDA_HOME": "pip", "GPTOSS_E2E_EXTRA_SERVE_ARGS": "[]",
           "GPTOSS_E2E_JIT_CACHE": str(jit),
           "PYINFRA_PROGRESS": "off"}
    cmd = [str(REPO / ".venv/bin/pyinfra"), "-y", "--json", "tests/gpu/local_inventory.py", "deploys/gptoss.py"]
    sup = SUPERVISE
    try:
        first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
        assert "sk-supervisor-test" not in first.stdout + first.stderr
        status = subprocess.run([sup, "status"], capture_output=True, text=True)
        assert status.returncode == 0 and "active" in status.stdout
        st = json.loads(Path("/run/gptoss/gptoss-vllm.state").read_text())
        assert _uid_of(st["main_pid"]) == pwd.getpwnam("gptoss").pw_uid  # the unit's User=, not root
        assert st["argv"][2] == str(model) and "--served-model-name" in st["argv"]
        log = Path("/var/log/gptoss/gptoss-vllm.log").read_text()
        assert "Application startup complete." in log and "sk-supervisor-test" not in log
        cubin = Path(C.STATE_DIR) / ".triton/cache/ab12/kernel.cubin"
        assert cubin.read_bytes() == b"cubin" and cubin.stat().st_uid == pwd.getpwnam("gptoss").pw_uid
        assert Path(C.STATE_DIR, ".jit-cache.sha256").read_text().strip() == hashlib.sha256(jit.read_bytes()).hexdigest()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen("http://127.0.0.1:18123/v1/models", timeout=5)
        assert e.value.code == 401

        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        res = json.loads(second.stdout)["results"]
        assert res["totals"]["success"] == 0, [op["name"] for op in res["operations"] if op["success"]]
        assert json.loads(Path("/run/gptoss/gptoss-vllm.state").read_text())["main_pid"] == st["main_pid"]  # untouched

        # the doctor on this box finds the base's torch through the stack venv
        report = json.loads(subprocess.run(["gptoss-doctor", "--json"], capture_output=True, text=True).stdout)
        assert report["facts"]["torch.build"]["value"]["version"] == "2.11.0+cu130"
    finally:
        subprocess.run([sup, "stop"], capture_output=True)
    with pytest.raises(OSError):
        urllib.request.urlopen("http://127.0.0.1:18123/health", timeout=3)


# -- the rolling upgrade on a host without systemd ------------------------------------------------


def _served_version(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5) as r:
            return json.loads(r.read()).get("version")
    except (OSError, ValueError):
        return None


def _main_pid() -> int:
    return json.loads(Path(RUN_STATE).read_text())["main_pid"]


def _wheelhouse_of(tb: dict, stacks: list[str], dest: Path, key_file: str) -> None:
    """Every wheel the stacks install, resolved and fetched by the upgrade's own download-once code
    (gptoss_deploy.wheelhouse) from the local fleet's index, copied into one air-gapped wheelhouse."""
    from gptoss_deploy import wheelhouse as W
    from gptoss_doctor import knowledge

    kb = knowledge.load(extra_stack_files=tuple(tb["extra_stack_files"]))
    for stack in stacks:
        cfg = C.validate("wheelhouse", {"gptoss_stack": stack, "gptoss_gpu_family": "H100", "gptoss_api_key_file": key_file,
                                        "gptoss_index_mirrors": tb["index_mirrors"],
                                        "gptoss_extra_stack_files": tb["extra_stack_files"]},
                         DEBIAN, kb)
        for w in W.build(cfg, DEBIAN["python_version"], "x86_64").wheels:
            shutil.copy(w.path, dest / w.filename)


@local_fleet_only[0]
@local_fleet_only[1]
def test_upgrade_on_a_host_without_systemd(tmp_path, monkeypatch, bare_local_host):
    """deploys/upgrade.py through the deploy's own builder: a host under gptoss-supervise, air-gapped
    from a wheelhouse, is upgraded to the new stack (restarted by gptoss-supervise, installed from
    the wheelhouse), and an upgrade to the broken stack puts it back on the one it ran."""
    tb = _testbed_env()
    old, new, broken = "vllm-0.28.0", tb["today_stack"], tb["broken_stack"]
    from test_fleet_deploy import run_testbed

    versions = {s["name"]: s["vllm"] for s in json.loads(run_testbed("status", "--json").stdout)["stacks"]}
    top = Path("/var/tmp/gptoss-supervisor-upgrade-test")
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir(mode=0o755)
    wh = top / "wheelhouse"
    wh.mkdir()
    key = top / "api-key"
    key.write_text("sk-supervisor-upgrade-0123\n")
    key.chmod(0o600)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the download-once cache of this test
    _wheelhouse_of(tb, [old, new, broken], wh, str(key))
    # the doctor's own small dependencies, from the same wheelhouse
    for name, version in (("rich", "15.0.0"), ("markdown-it-py", "4.3.0"), ("mdurl", "0.1.2"), ("pygments", "2.21.0")):
        if not list(wh.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
            _fetch(tb["index_mirrors"]["pypi"], name, version, wh)
    model = top / "gpt-oss-20b"
    model.mkdir()
    shutil.copy(REPO / "tests/fixtures/gpu/gpt-oss-20b/config.json", model / "config.json")
    port = 18124
    env = {**os.environ, "GPTOSS_E2E_WHEELHOUSE": str(wh), "GPTOSS_E2E_NO_DEPS": "false",
           "GPTOSS_E2E_API_KEY_FILE": str(key), "GPTOSS_E2E_PORT": str(port), "GPTOSS_E2E_GPU_FAMILY": "H100",
           "GPTOSS_E2E_HEALTH_TIMEOUT_S": "60", "GPTOSS_E2E_MODEL_PATH": str(model), "GPTOSS_E2E_STACK": old,
           "GPTOSS_E2E_EXTRA_STACK_FILES": json.dumps(tb["extra_stack_files"]), "PYINFRA_PROGRESS": "off",
           # a server's PATH: the venvs are built on the python3 found there, which the service user
           # must be able to run (a python3 under /root, as pyenv's shims give here, it cannot)
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    pyinfra = [str(REPO / ".venv/bin/pyinfra"), "-y", "tests/gpu/local_inventory.py"]

    def run(deploy: str, *extra: str, report: Path | None = None) -> subprocess.CompletedProcess:
        e = {**env, **({"GPTOSS_UPGRADE_REPORT": str(report)} if report else {})}
        return subprocess.run([*pyinfra, deploy, *extra], cwd=REPO, env=e, capture_output=True, text=True, timeout=600)

    def manifest() -> dict:
        return json.loads(Path("/etc/gptoss/manifest.json").read_text())

    try:
        first = run("deploys/gptoss.py")
        assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
        assert _served_version(port) == versions[old]
        assert manifest()["service_manager"] == "supervisor" and manifest()["wheelhouse"]["path"] == str(wh)
        before = _main_pid()

        up = run("deploys/upgrade.py", "--data", f"gptoss_stack={new}", report=tmp_path / "up.json")
        out = up.stdout + up.stderr
        assert up.returncode == 0, out[-4000:]
        assert "systemctl" not in out and "no such directory on the host" not in out
        assert _served_version(port) == versions[new]
        assert os.readlink(C.CURRENT) == f"{C.STACKS_DIR}/{new}"
        assert (manifest()["stack"], manifest()["service_manager"]) == (new, "supervisor")
        assert [h["status"] for h in json.loads((tmp_path / "up.json").read_text())["hosts"]] == ["upgraded"]
        assert _main_pid() != before  # gptoss-supervise restarted it on the new stack
        assert "sk-supervisor-upgrade" not in out

        bad = run("deploys/upgrade.py", "--data", f"gptoss_stack={broken}", "--data", "gptoss_health_timeout_s=15",
                  report=tmp_path / "broken.json")
        out = bad.stdout + bad.stderr
        assert bad.returncode != 0
        assert "STOPPED at host @local" in out and "failed step: health-gate" in out, out[-4000:]
        assert f"back on {new}" in out, out[-4000:]
        assert _served_version(port) == versions[new]  # serving the stack it ran before, healthy
        assert os.readlink(C.CURRENT) == f"{C.STACKS_DIR}/{new}" and manifest()["stack"] == new
        assert subprocess.run([SUPERVISE, "is-active"], capture_output=True, text=True).stdout.strip() == "active"
    finally:
        subprocess.run([SUPERVISE, "stop"], capture_output=True)
