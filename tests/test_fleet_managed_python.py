"""The stack's Python where the host lacks it, on the local fleet: a Debian 12 host (python3 3.11)
deployed with the launch stack (Python >=3.12,<3.13) gets uv's managed CPython 3.12 from a
mirror and its stack venv on it, serves, and a second run changes nothing; upgraded to that
stack with deploys/upgrade.py, the same.

No python-build-standalone archive can be downloaded here, so the mirror holds one made in the
test, in that project's layout: a CPython 3.12 install tree found on this machine (pyenv's, or
any `python3.12` whose prefix is its own), trimmed, made relocatable (an absolute RUNPATH to its
libpython becomes `$ORIGIN/../lib`, as upstream's builds have it) and packed with a `python/` top
directory as `<release>/cpython-<X.Y.Z>+<release>-x86_64-unknown-linux-gnu-install_only.tar.gz`.
uv checks every archive against the sha256 of its downloads list, and its built-in list knows
only upstream's files: the test serves a list of its own (`gptoss_python_downloads_json`, uv's
format: the upstream URL, which the mirror prefix replaces, and this archive's sha256) beside
the mirror (`gptoss_python_mirror`, with credentials that must never show up), from a loopback
HTTP server whose log shows what the host fetched. The host is put back on the fleet's stack
afterwards.

Needs root and the local fleet (run under `flock /tmp/gptoss-fleet.lock`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from test_fleet_deploy import TESTBED_INVENTORY, pyinfra, results, run_testbed, ssh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

from gptoss_deploy import managed_python as M  # noqa: E402

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root"),
]

LAUNCH = "vllm-0.10.1-gptoss"  # Python >=3.12,<3.13
RELEASE = "20260101"  # the release tag of the home-made archive
SECRET = "mirror-pass-0451"  # the mirror's password: never in pyinfra's output nor on the host


def cpython_312_prefix() -> Path | None:
    """A CPython 3.12 install tree on this machine whose prefix holds its own bin/ and lib/."""
    candidates = sorted(glob.glob("/root/.pyenv/versions/3.12.*/bin/python3.12"))
    candidates += [p for p in (shutil.which("python3.12"),) if p]
    for exe in candidates:
        r = subprocess.run([exe, "-c", "import sys; print(sys.base_prefix); print('%d.%d.%d' % sys.version_info[:3])"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            prefix = Path(r.stdout.split()[0])
            if (prefix / "lib" / "python3.12" / "os.py").is_file() and prefix != Path("/usr"):
                return prefix
    return None


def relocatable(binary: Path, prefix: Path) -> None:
    """An absolute RUNPATH/RPATH to <prefix>/lib becomes $ORIGIN/../lib, in place: the new string
    is shorter, so it is NUL-padded into the old one's bytes of .dynstr."""
    old = f"{prefix}/lib".encode() + b"\0"
    data = binary.read_bytes()
    if old in data:
        binary.write_bytes(data.replace(old, b"$ORIGIN/../lib".ljust(len(old), b"\0")))


def make_archive(prefix: Path, out: Path) -> tuple[str, Path]:
    """(version, archive) in python-build-standalone's install_only layout."""
    version = subprocess.run([str(prefix / "bin" / "python3.12"), "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    tree = out / "tree" / "python"
    skip = shutil.ignore_patterns("__pycache__", "test", "idlelib", "config-3.*", "site-packages", "pip*", "idle*", "2to3*")
    shutil.copytree(prefix, tree, symlinks=True, ignore=skip)
    relocatable(tree / "bin" / "python3.12", prefix)
    check = subprocess.run([str(tree / "bin" / "python3.12"), "-c", "import sys; print(sys.prefix)"],
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == str(tree), f"the copied tree does not run: {check.stderr}"
    archive = out / "mirror" / RELEASE / f"cpython-{version}+{RELEASE}-x86_64-unknown-linux-gnu-install_only.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(tree, arcname="python")
    return version, archive


def downloads_json(version: str, archive: Path) -> str:
    major, minor, patch = (int(x) for x in version.split("."))
    name = f"cpython-{version}-linux-x86_64-gnu"
    return json.dumps({name: {
        "name": "cpython", "arch": {"family": "x86_64", "variant": None}, "os": "linux", "libc": "gnu",
        "major": major, "minor": minor, "patch": patch, "prerelease": "", "variant": None, "build": RELEASE,
        "url": f"{M.UPSTREAM}/{RELEASE}/{archive.name.replace('+', '%2B')}",
        "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
    }})


class Mirror:
    """A loopback HTTP server over `root`, keeping the paths it was asked for."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, fmt, *args):
                mirror.requests.append(self.path)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fleet() -> dict:
    up = run_testbed("up")
    if up.returncode != 0:
        pytest.fail(f"gptoss-testbed up failed: {up.stderr.strip()[-2000:]}")
    st = run_testbed("status", "--json")
    assert st.returncode == 0, st.stderr
    return json.loads(st.stdout)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> dict:
    """The loopback mirror with the home-made archive and its downloads list."""
    prefix = cpython_312_prefix()
    if prefix is None:
        pytest.skip("no CPython 3.12 install tree on this machine to pack as the mirror's archive")
    root = tmp_path_factory.mktemp("pbs")
    version, archive = make_archive(prefix, root)
    (root / "mirror" / "downloads.json").write_text(downloads_json(version, archive))
    server = Mirror(root / "mirror")
    url = server.url.replace("http://", f"http://mirror-user:{SECRET}@")
    yield {"server": server, "version": version, "path": f"/{RELEASE}/{archive.name.replace('+', '%2B')}",
           "data": ("--data", f"gptoss_python_mirror={url}", "--data", f"gptoss_python_downloads_json={url}/downloads.json")}
    server.close()


class Host:
    """The fleet's last host, without CPython 3.12 (Debian 12's python3 is 3.11) and, after the
    test, back on the fleet's own stack with uv's CPython gone."""

    def __init__(self, fleet: dict):
        self.h, self.key = fleet["hosts"][-1], fleet["ssh_key"]
        self.name = self.h["name"]

    def run(self, cmd: str) -> str:
        rc, out = ssh(self.h["address"], self.key, cmd)
        assert rc == 0, f"{cmd}: {out}"
        return out.strip()

    def reset(self) -> subprocess.CompletedProcess:
        back = pyinfra(TESTBED_INVENTORY, "--limit", self.name)  # the fleet's own stack
        if back.returncode == 0:
            self.run(f"rm -rf {M.INSTALL_DIR} /opt/gptoss/stacks/{LAUNCH}")
        return back


@pytest.fixture()
def host(fleet) -> Host:
    h = Host(fleet)
    assert h.run("python3 -c 'import sys; print(sys.version_info >= (3, 12))'") == "False"
    assert h.reset().returncode == 0
    yield h
    back = h.reset()
    assert back.returncode == 0, back.stderr[-3000:]


def assert_on_managed_python(host: Host, mirror: dict) -> None:
    venv = f"/opt/gptoss/stacks/{LAUNCH}"
    assert mirror["path"] in mirror["server"].requests, mirror["server"].requests
    assert host.run("readlink /opt/gptoss/current") == venv
    home = host.run(f"sed -n 's/^home = //p' {venv}/pyvenv.cfg")
    assert home == f"{M.INSTALL_DIR}/cpython-3.12-linux-x86_64-gnu/bin", home
    assert host.run(f"readlink -f {venv}/bin/python").startswith(f"{M.INSTALL_DIR}/cpython-{mirror['version']}-")
    # the service user runs it (the service did: the health gate passed)
    assert host.run("runuser -u gptoss -- /opt/gptoss/current/bin/python -c 'import platform; "
                    "print(platform.python_version())'") == mirror["version"]
    assert host.run(f"grep -rl {SECRET} /opt/gptoss /etc/gptoss /var/lib/gptoss /var/cache/gptoss 2>/dev/null || true") == ""


def test_a_host_without_the_stacks_python_gets_a_venv_on_the_mirrored_one(host, mirror):
    data = ("--limit", host.name, "--data", f"gptoss_stack={LAUNCH}", *mirror["data"])
    mirror["server"].requests.clear()
    first = pyinfra(TESTBED_INVENTORY, *data)
    res = results(first)
    assert first.returncode == 0 and res["failed_hosts"] == [], first.stderr[-4000:]
    assert SECRET not in first.stdout + first.stderr
    assert_on_managed_python(host, mirror)

    second = pyinfra(TESTBED_INVENTORY, *data)
    res2 = results(second)
    changed = [op["name"] for op in res2["operations"] if op["success"]]
    assert second.returncode == 0 and res2["totals"]["success"] == 0, f"changed on re-run: {changed}"


def test_an_upgrade_to_the_stack_brings_its_python_too(host, mirror):
    """deploys/upgrade.py: the wheels resolved on the controller for CPython 3.12, the venv staged on it."""
    mirror["server"].requests.clear()
    run = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", "--json", str(TESTBED_INVENTORY), "deploys/upgrade.py",
         "--limit", host.name, "--data", f"gptoss_stack={LAUNCH}", *mirror["data"]],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "PYINFRA_PROGRESS": "off"})
    res = results(run)
    assert run.returncode == 0 and res["failed_hosts"] == [], run.stderr[-4000:]
    assert f"upgraded to {LAUNCH}" in run.stderr + run.stdout
    assert SECRET not in run.stdout + run.stderr
    assert_on_managed_python(host, mirror)
