"""The local fleet (`gptoss-testbed`): booted hosts, the named package index, the stand-in wheels.

The `fleet` tests boot their own testbed (own state dir, a free block of loopback addresses and port)
so they never touch a testbed someone else is using, share it for the whole session, and take
it down at the end. They need root. The other tests are pure and run anywhere.

What is expected of the stand-in vLLM is read from the knowledge (lifecycle rows), not written
here: a flag the knowledge says was removed must be refused, one it says is valid accepted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

import pytest

from gptoss_doctor import knowledge
from gptoss_testbed import catalog, cli, fleet, index as tb_index, wheels

REPO = Path(__file__).resolve().parents[1]
def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((address, port)) == 0


def _free_block() -> tuple[str, int]:
    """Three loopback addresses with nothing on :22 or :8000, and a free index port: other
    engineers' and CI's testbeds may be up on this machine at the same time."""
    for last in range(171, 250, 4):
        addrs = [f"127.0.0.{last + i}" for i in range(3)]
        if not any(_listening(a, p) for a in addrs for p in (22, 8000)):
            for port in range(8771, 8871):
                if not _listening("127.0.0.1", port):
                    return addrs[0], port
    raise RuntimeError("no free loopback block for a test testbed")


STATE = Path(f"/var/lib/gptoss-testbed-pytest-{os.getpid()}")
FIRST, INDEX_PORT = _free_block()
ADDRESSES = [f"127.0.0.{int(FIRST.split('.')[-1]) + i}" for i in range(3)]
UV = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))

fleet_only = [pytest.mark.fleet, pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root")]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def run_testbed(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTOSS_TESTBED_STATE": str(STATE)}
    return subprocess.run([sys.executable, "-m", "gptoss_testbed.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def ssh(tb: dict, address: str, command: str) -> subprocess.CompletedProcess:
    """The real ssh client, as root, with the testbed's key."""
    return subprocess.run(["ssh", "-i", tb["status"]["ssh_key"], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{address}", command],
                          capture_output=True, text=True, timeout=30)


def get(url: str, key: str | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_ok(whl: bytes) -> None:
    """Every file in the wheel is in RECORD with its right hash and size."""
    with zipfile.ZipFile(io.BytesIO(whl)) as zf:
        record_name = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        rows = {line.split(",")[0]: line.split(",")[1:] for line in zf.read(record_name).decode().splitlines()}
        assert set(rows) == set(zf.namelist())
        for name in zf.namelist():
            if name == record_name:
                continue
            data = zf.read(name)
            digest = "sha256=" + urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert rows[name] == [digest, str(len(data))], name


def uv_venv(path: Path) -> Path:
    subprocess.run([UV, "venv", "-q", "-p", sys.executable, str(path)], check=True, capture_output=True)
    return path


def uv_install(venv: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "UV_CACHE_DIR": str(cache), "UV_NO_CONFIG": "1"}
    env.pop("UV_INDEX_URL", None)
    return subprocess.run([UV, "pip", "install", *args], capture_output=True, text=True, env=env, timeout=300)


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python3*/site-packages"))


class Served:
    """A stand-in vllm running from a venv; its log is read as it goes."""

    def __init__(self, venv: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log = venv / f"serve-{self.port}.log"
        self.proc = subprocess.Popen([str(venv / "bin/vllm"), "serve", *args, "--host", "127.0.0.1",
                                      "--port", str(self.port)],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "GPTOSS_STANDIN_STARTUP_S": "0.3", **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_log(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.log.read_text()
            if text in out:
                return out
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"{text!r} not in the stand-in's log:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# pure: wheels, plan, index (no root)
# ---------------------------------------------------------------------------------------------

def test_stand_in_wheel_has_correct_metadata_and_record(tmp_path):
    builder = wheels.load_builder()
    whl = builder.write_wheel(tmp_path, "torch", "2.9.0.dev20250804+cu128", {"torch/__init__.py": b"x = 1\n"},
                              summary="s", requires=["pytorch-triton==3.4.0+gitstandin"], requires_python=">=3.9")
    assert whl.name == "torch-2.9.0.dev20250804+cu128-py3-none-any.whl"
    record_ok(whl.read_bytes())
    with zipfile.ZipFile(whl) as zf:
        meta = zf.read("torch-2.9.0.dev20250804+cu128.dist-info/METADATA").decode()
        wheel_file = zf.read("torch-2.9.0.dev20250804+cu128.dist-info/WHEEL").decode()
    assert "Version: 2.9.0.dev20250804+cu128" in meta
    assert "Requires-Dist: pytorch-triton==3.4.0+gitstandin" in meta
    assert "Tag: py3-none-any" in wheel_file
    again = builder.write_wheel(tmp_path / "again", "torch", "2.9.0.dev20250804+cu128", {"torch/__init__.py": b"x = 1\n"},
                                summary="s", requires=["pytorch-triton==3.4.0+gitstandin"], requires_python=">=3.9")
    assert again.read_bytes() == whl.read_bytes(), "the same spec must give the same bytes"


def test_plan_serves_every_knowledge_stack_with_the_real_pins():
    kb = knowledge.load()
    p = catalog.plan(kb)
    served = {(w.index, w.kind, w.args.get("dist", w.kind), w.args["version"]) for w in p.standins}
    for stack in (s for s in kb.stacks.values() if s.cuda):  # the fleet stands in for NVIDIA hosts only
        assert any(k == "vllm" and v == stack.vllm for _i, k, _d, v in served), stack.name
        # the torch the stack needs (with its local build) is on a PyTorch index, never on pypi
        torch_full = stack.torch + stack.torch_local
        assert any(k == "torch" and v == torch_full and i.startswith("pytorch") for i, k, _d, v in served), stack.name
        assert not any(k == "torch" and i == "pypi" and "+" in v for i, k, _d, v in served)
        if stack.nvcc_requirement:
            from packaging.requirements import Requirement
            req = Requirement(stack.nvcc_requirement)
            assert any(k == "nvcc" and d == req.name and req.specifier.contains(v) for _i, k, d, v in served)
    launch = kb.stacks["vllm-0.10.1-gptoss"]
    names = {i.name for i in launch.indexes}
    assert names <= set(p.index_urls), "every index the knowledge names is served under its name"
    assert ("pypi", "triton", "triton", launch.triton) in served, "a plain triton to duplicate pytorch-triton with"
    assert [s["name"] for s in p.stacks][-1] == catalog.BROKEN_STACK


def test_stand_in_vllm_spec_follows_the_lifecycle():
    kb = knowledge.load()
    for version in ("0.10.1+gptoss", kb.latest_stack.vllm):
        spec = catalog.vllm_spec_args(kb, version, "torch==1", "1")
        for name, lc in kb.flags.items():
            if " " in name:
                continue
            accepted = name in spec["flags"]
            assert accepted == (kb.lifecycle_status(lc, version) in ("valid", "deprecated")), (version, name)
        for name, lc in kb.env_vars.items():
            if name.startswith("VLLM_"):
                listed = name in spec["env_vars"]
                assert listed == (kb.lifecycle_status(lc, version) in ("valid", "deprecated")), (version, name)
        for name, lc in kb.attention_backends.items():
            known = name in spec["attention_backends"]
            assert known == (kb.lifecycle_status(lc, version) in ("valid", "deprecated")), (version, name)


def test_broken_stack_file_loads_into_the_knowledge(tmp_path):
    kb = knowledge.load()
    f = tmp_path / "testbed-stacks.toml"
    f.write_text(catalog.broken_stack_toml(kb.latest_stack))
    stack = knowledge.load(extra_stack_files=[f]).stack(catalog.BROKEN_STACK)
    assert stack.vllm == catalog.BROKEN_VLLM
    assert stack.index(catalog.BROKEN_INDEX) is not None


def test_index_serves_pep503_and_counts_bytes(tmp_path):
    builder = wheels.load_builder()
    whl = builder.build_triton(tmp_path / "root" / "pytorch-nightly-cu128", "pytorch-triton", "3.4.0+gitstandin")
    wheels.write_core_metadata(whl)
    (tmp_path / "root" / "pypi").mkdir()
    server = tb_index.make_server(tmp_path / "root", "127.0.0.1", 0, tmp_path / "index.log")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, page = get(f"{base}/pytorch-nightly-cu128/simple/")
        assert code == 200 and b'href="/pytorch-nightly-cu128/simple/pytorch-triton/"' in page
        code, page = get(f"{base}/pytorch-nightly-cu128/simple/Pytorch_Triton/")  # PEP 503 normalized
        assert code == 200
        href = re.search(rb'href="([^"]+)"', page).group(1).decode()
        assert "%2Bgitstandin" in href and "data-core-metadata=" in page.decode()
        url, _, digest = href.partition("#sha256=")
        code, body = get(base + url)
        assert code == 200 and hashlib.sha256(body).hexdigest() == digest
        record_ok(body)
        assert get(f"{base}/pypi/simple/pytorch-triton/")[0] == 404, "each named index has only its own files"
        stats = json.loads(get(f"{base}/_stats")[1])
        assert stats["indexes"]["pytorch-nightly-cu128"]["bytes"] == len(body)
        assert stats["files"][f"pytorch-nightly-cu128/{whl.name}"] == {"bytes": len(body), "requests": 1}
        assert whl.name in (tmp_path / "index.log").read_text()
        get(f"{base}/_stats/reset", data=b"")
        assert json.loads(get(f"{base}/_stats")[1])["total_bytes"] == 0
    finally:
        server.shutdown()


def test_cli_errors_are_one_line(monkeypatch, capsys):
    for argv, needle in ((["up", "--first-address", "abc"], "--first-address 'abc' is not an IPv4 address"),
                         (["up", "--first-address", "10.0.0.1"], "must stay inside 127.0.0.0/8"),
                         (["up", "--hosts", "0"], "--hosts 0: need at least 1 host"),
                         (["up", "--index-port", "70000"], "--index-port 70000: not a TCP port")):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    monkeypatch.setattr(fleet.os, "geteuid", lambda: 1000)
    assert cli.main(["up"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must run as root" in err and "sudo" in err
    monkeypatch.setattr(fleet.paths, "STATE_FILE", Path("/nonexistent/state.json"))
    assert cli.main(["status", "--json"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "gptoss-testbed: the testbed is not up (no state file); run `gptoss-testbed up`"


# ---------------------------------------------------------------------------------------------
# the fleet (root)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tb():
    if os.geteuid() != 0:
        pytest.skip("the local fleet needs root")
    t0 = time.monotonic()
    up = run_testbed("up", "--hosts", "3", "--first-address", FIRST, "--index-port", str(INDEX_PORT))
    took = time.monotonic() - t0
    assert up.returncode == 0, up.stdout + up.stderr
    status = json.loads(run_testbed("status", "--json").stdout)
    env = json.loads(run_testbed("env", "--json").stdout)
    state = json.loads((STATE / "state.json").read_text())
    yield {"status": status, "env": env, "state": state, "up_seconds": took}
    run_testbed("down")
    shutil.rmtree(STATE, ignore_errors=True)


@pytest.fixture(scope="session")
def venvs(tb, tmp_path_factory):
    """Stand-in stacks installed with REAL uv from the testbed's index: launch day, today, broken."""
    kb = knowledge.load(extra_stack_files=tb["env"]["extra_stack_files"])
    mirrors = tb["env"]["index_mirrors"]
    root = tmp_path_factory.mktemp("venvs")
    # Not kb.latest_stack: with the broken stack loaded, the newest stack is the broken one.
    out = {"kb": kb, "cache": root / "uv-cache", "today": kb.stack(tb["env"]["today_stack"])}
    launch = kb.stacks["vllm-0.10.1-gptoss"]
    out["launch"] = uv_venv(root / "launch")
    r = uv_install(out["launch"], out["cache"], "--default-index", mirrors["pypi"],
                   *[a for i in launch.indexes if i.name != "pypi" for a in ("--extra-index-url", mirrors[i.name])],
                   "--index-strategy", launch.index_strategy, "--prerelease", launch.prerelease, *launch.requirements)
    assert r.returncode == 0, r.stderr
    for name in ("today", "broken"):
        stack = out["today"] if name == "today" else kb.stack(tb["status"]["broken_stack"])
        venv = out[f"{name}_venv"] = uv_venv(root / name)
        extra = [mirrors[f"pytorch-{stack.torch_backend}"]] + [mirrors[i.name] for i in stack.indexes if i.name != "pypi"]
        reqs = list(stack.requirements) + ([stack.nvcc_requirement] if stack.nvcc_requirement else [])
        r = uv_install(venv, out["cache"], "--default-index", mirrors["pypi"],
                       *[a for u in extra for a in ("--extra-index-url", u)],
                       "--index-strategy", "unsafe-best-match", "--prerelease", "allow", *reqs)
        assert r.returncode == 0, r.stderr
    return out


@pytest.mark.fleet
def test_status_has_exactly_the_documented_shape(tb):
    st = tb["status"]
    assert list(st) == ["hosts", "lb", "ssh_key", "api_key", "stacks", "broken_stack"]
    assert st["lb"] is None  # no `--lb`: no balancer host
    assert [h["name"] for h in st["hosts"]] == ["gptoss-1", "gptoss-2", "gptoss-3"]
    assert [h["address"] for h in st["hosts"]] == ADDRESSES
    assert oct(os.stat(st["ssh_key"]).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tb["env"]["api_key_file"]).st_mode & 0o777) == "0o600"
    assert st["api_key"] and st["api_key"] == Path(tb["env"]["api_key_file"]).read_text().strip()
    kb = knowledge.load()
    # the fleet stands in for NVIDIA hosts: every CUDA stack, oldest first (ROCm stacks have no stand-in torch)
    assert st["stacks"] == [{"name": s.name, "vllm": s.vllm} for s in kb.stacks.values() if s.cuda], "all CUDA stacks, oldest first"
    assert st["broken_stack"] == catalog.BROKEN_STACK
    assert st["api_key"] not in (STATE / "state.json").read_text(), "the state file names the key file, not the key"


@pytest.mark.fleet
def test_every_host_is_booted_and_answers_ssh(tb):
    for h in tb["status"]["hosts"]:
        r = ssh(tb, h["address"], "hostname; systemctl is-system-running; ss -ltnH sport = :22")
        lines = r.stdout.split("\n")
        assert lines[0] == h["name"]
        assert lines[1] in ("running", "degraded"), r.stdout + r.stderr
        listeners = "\n".join(lines[2:])  # the hosts share one network namespace: all sshds show
        assert f"{h['address']}:22 " in listeners, "sshd listens on the host's own address"
        assert "0.0.0.0:22 " not in listeners and "*:22 " not in listeners, "and on no wildcard address"


@pytest.mark.fleet
def test_second_up_is_a_no_op(tb):
    pids = sorted((STATE / "run").glob("*.pid"))
    before = {p.name: p.read_text() for p in pids}
    t0 = time.monotonic()
    again = run_testbed("up", "--hosts", "3", "--first-address", FIRST, "--index-port", str(INDEX_PORT))
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stdout and time.monotonic() - t0 < 15
    assert {p.name: p.read_text() for p in sorted((STATE / "run").glob("*.pid"))} == before
    other = run_testbed("up", "--hosts", "2", "--first-address", FIRST, "--index-port", str(INDEX_PORT))
    assert other.returncode == 1 and len(other.stderr.strip().splitlines()) == 1 and "down" in other.stderr


@pytest.mark.fleet
def test_index_serves_named_indexes_and_real_wheels(tb):
    mirrors = tb["env"]["index_mirrors"]
    kb = knowledge.load()
    for stack in (s for s in kb.stacks.values() if s.cuda):  # the fleet stands in for NVIDIA hosts only
        for index in stack.indexes:
            assert index.name in mirrors, f"{stack.name}: index {index.name} has no mirror"
    code, page = get(mirrors["pypi"] + "/rich/")
    assert code == 200 and b"rich-15.0.0-py3-none-any.whl" in page, "the doctor's real dependencies, from PyPI"
    code, page = get(mirrors["pytorch-nightly-cu128"] + "/torch/")
    launch = kb.stacks["vllm-0.10.1-gptoss"]
    assert code == 200 and f"torch-{launch.torch}%2Bcu128".encode() in page
    code, pypi_torch = get(mirrors["pypi"] + "/torch/")
    assert b"%2B" not in pypi_torch, "PyPI's torch carries no local version"
    before = json.loads(get(tb["env"]["stats_url"])[1])["indexes"].get("pytorch-nightly-cu128", {"bytes": 0})["bytes"]
    href = re.search(rb'href="([^"]+\.whl)#sha256=([0-9a-f]+)"', page)
    code, body = get(tb["env"]["index_url"].rstrip("/") + href.group(1).decode())
    assert code == 200 and hashlib.sha256(body).hexdigest() == href.group(2).decode()
    record_ok(body)
    after = json.loads(get(tb["env"]["stats_url"])[1])["indexes"]["pytorch-nightly-cu128"]["bytes"]
    assert after - before == len(body)


@pytest.mark.fleet
def test_real_uv_needs_the_index_strategy_for_the_launch_stack(tb, venvs, tmp_path):
    """The usage guide's install, through real uv: with unsafe-best-match torch is the +cu128 nightly;
    with uv's default strategy the nightly index's old mirror copies win and resolution fails."""
    kb, mirrors = venvs["kb"], tb["env"]["index_mirrors"]
    launch = kb.stacks["vllm-0.10.1-gptoss"]
    sp = site_packages(venvs["launch"])
    version_py = (sp / "torch/version.py").read_text()
    assert f"__version__ = '{launch.torch}{launch.torch_local}'" in version_py and f"cuda = '{launch.cuda}'" in version_py
    assert (sp / f"torch-{launch.torch}{launch.torch_local}.dist-info").is_dir()
    assert (sp / f"pytorch_triton-{launch.triton}{catalog.NIGHTLY_TRITON_LOCAL}.dist-info").is_dir()

    bare = uv_venv(tmp_path / "first-index")
    r = uv_install(bare, venvs["cache"], "--default-index", mirrors["pypi"],
                   *[a for i in launch.indexes if i.name != "pypi" for a in ("--extra-index-url", mirrors[i.name])],
                   "--prerelease", "allow", *launch.requirements)
    assert r.returncode != 0 and "unsafe-best-match" in r.stderr, r.stderr

    # The first stable stack without its cu128 torch backend: PyPI's torch, not the +cu128 build.
    stable = kb.stacks["vllm-0.10.1"]
    plain = uv_venv(tmp_path / "no-backend")
    r = uv_install(plain, venvs["cache"], "--default-index", mirrors["pypi"], *stable.requirements)
    assert r.returncode == 0, r.stderr
    built = (site_packages(plain) / "torch/version.py").read_text()
    assert f"__version__ = '{stable.torch}{stable.torch_local}'" not in built and stable.torch in built

    # A duplicate Triton can be made: plain triton next to pytorch-triton, both owning triton/.
    dup = uv_install(venvs["launch"], venvs["cache"], "--default-index", mirrors["pypi"], f"triton=={launch.triton}")
    assert dup.returncode == 0, dup.stderr
    assert (sp / f"triton-{launch.triton}.dist-info").is_dir()


@pytest.mark.fleet
def test_stand_in_vllm_rejects_what_its_version_rejects(venvs):
    kb = venvs["kb"]
    today = venvs["today"].vllm
    removed = [n for n, lc in kb.flags.items() if " " not in n and kb.lifecycle_status(lc, today) == "removed"]
    not_yet = [n for n, lc in kb.flags.items() if " " not in n and kb.lifecycle_status(lc, "0.10.1+gptoss") == "not-yet"]
    assert removed and not_yet, "the knowledge names stale and future flags"
    for venv, flag in ((venvs["today_venv"], removed[0]), (venvs["launch"], not_yet[0])):
        r = subprocess.run([str(venv / "bin/vllm"), "serve", "openai/gpt-oss-20b", flag, "8"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 2 and f"vllm: error: unrecognized arguments: {flag} 8" in r.stderr, (flag, r.stderr)

    gone = [n for n, lc in kb.attention_backends.items() if kb.lifecycle_status(lc, today) == "removed"]
    r = subprocess.run([str(venvs["today_venv"] / "bin/vllm"), "serve", "openai/gpt-oss-20b", "--attention-backend", gone[0]],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and f"ValueError: Unknown attention backend: '{gone[0]}'" in r.stderr

    envs_py = (site_packages(venvs["today_venv"]) / "vllm/envs.py").read_text()
    stale_env = [n for n, lc in kb.env_vars.items() if n.startswith("VLLM_") and kb.lifecycle_status(lc, today) == "removed"]
    valid_env = [n for n, lc in kb.env_vars.items() if n.startswith("VLLM_") and kb.lifecycle_status(lc, today) == "valid"]
    assert f'"{valid_env[0]}"' in envs_py and f'"{stale_env[0]}"' not in envs_py
    torch_py = (site_packages(venvs["today_venv"]) / "torch/version.py").read_text()
    assert f"'{venvs['today'].torch}{venvs['today'].torch_local}'" in torch_py

    served = Served(venvs["today_venv"], "openai/gpt-oss-20b", "--api-key", "k3y", env={stale_env[0]: "1"})
    try:
        log = served.wait_log("Application startup complete.")
        assert f"Unknown vLLM environment variable detected: {stale_env[0]}" in log
        assert "Starting vLLM" in log
        assert get(served.url + "/health")[0] == 200
        assert b"vllm:num_requests_running" in get(served.url + "/metrics")[1]
        assert json.loads(get(served.url + "/version")[1]) == {"version": today}
        assert get(served.url + "/v1/models")[0] == 401
        code, body = get(served.url + "/v1/models", key="k3y")
        assert code == 200 and [m["id"] for m in json.loads(body)["data"]] == ["openai/gpt-oss-20b"]
        code, body = get(served.url + "/v1/completions", key="k3y",
                         data=json.dumps({"model": "openai/gpt-oss-20b", "prompt": "hi", "max_tokens": 3}).encode())
        assert code == 200 and json.loads(body)["choices"][0]["text"].strip()
    finally:
        assert served.stop() == 0


@pytest.mark.fleet
def test_broken_stack_starts_but_never_becomes_healthy(venvs):
    served = Served(venvs["broken_venv"], "openai/gpt-oss-20b")
    try:
        served.wait_log("EngineCore failed to start.")
        for _ in range(5):
            assert get(served.url + "/health")[0] == 503
            time.sleep(0.3)
        assert json.loads(get(served.url + "/version")[1]) == {"version": catalog.BROKEN_VLLM}
        assert "Application startup complete." not in served.log.read_text()
    finally:
        served.stop()


@pytest.mark.fleet
def test_pip_cuda_toolkit_prints_the_real_nvcc_version_format(venvs):
    today = venvs["today"]
    nvcc = site_packages(venvs["today_venv"]) / today.cuda_home_subdir / "bin/nvcc"
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("nvcc: NVIDIA (R) Cuda compiler driver")
    assert re.search(rf"Cuda compilation tools, release {re.escape(today.cuda)}, V{re.escape(today.cuda)}\.\d+", out)


@pytest.mark.fleet
def test_old_entry_point_serves_too(venvs):
    port = free_port()
    proc = subprocess.Popen([str(venvs["launch"] / "bin/python"), "-m", "vllm.entrypoints.openai.api_server",
                             "--model", "openai/gpt-oss-20b", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "GPTOSS_STANDIN_STARTUP_S": "0.2"})
    try:
        deadline = time.monotonic() + 15
        while get(f"http://127.0.0.1:{port}/health")[0] != 200:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=10)[0]
    assert "Starting vLLM API server 0 on http://127.0.0.1" in out


@pytest.mark.fleet
def test_status_names_what_is_down_and_up_boots_it_again(tb):
    """`status` reports the fleet as it runs, not as the state file remembers it."""
    lost = tb["status"]["hosts"][1]
    stop = (f"from gptoss_testbed import fleet, hosts, paths; "  # paths read $GPTOSS_TESTBED_STATE on import
            f"print(hosts.stop_host(hosts.Host({lost['name']!r}, {lost['address']!r})), "
            f"hosts.stop_process(paths.pid_file('index'), fleet.INDEX_PROCESS_MARK, timeout=5))")
    stopped = subprocess.run([sys.executable, "-c", stop], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "GPTOSS_TESTBED_STATE": str(STATE)})
    assert stopped.stdout.split() == ["True", "True"], stopped.stdout + stopped.stderr
    for report in ("status", "env"):
        r = run_testbed(report, "--json")
        assert r.returncode == 1 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
        assert f"down: {lost['name']}, package index" in r.stderr and "gptoss-testbed up" in r.stderr
    up = run_testbed("up", "--hosts", "3", "--first-address", FIRST, "--index-port", str(INDEX_PORT))
    assert up.returncode == 0, up.stderr
    assert f"{lost['name']} was not running: booting it again" in up.stdout and "package index restarted" in up.stdout
    assert json.loads(run_testbed("status", "--json").stdout) == tb["status"]
    r = ssh(tb, lost["address"], "hostname")
    assert r.stdout.strip() == lost["name"], r.stderr
    assert get(tb["env"]["index_url"])[0] == 200


@pytest.mark.fleet
def test_zz_down_stops_exactly_what_up_started(tb):
    """Last in the file (pytest keeps file order): the fixture's own `down` is then a no-op."""
    run = STATE / "run"
    pids = [int(p.read_text().split()[0]) for p in run.glob("*.pid")]
    assert len(pids) == 4, "three hosts and the index"
    down = run_testbed("down")
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or b"nspawn" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    for h in tb["status"]["hosts"]:
        with socket.socket() as s:
            assert s.connect_ex((h["address"], 22)) != 0, f"{h['address']}:22 still answers"
    assert get(tb["env"]["index_url"])[0] == 0, "the index is gone"
    assert not (STATE / "state.json").exists() and not any((STATE / "hosts").iterdir())
    st = run_testbed("status", "--json")
    assert st.returncode == 1 and "not up" in st.stderr and "Traceback" not in st.stderr

    with socket.socket() as s:  # address in use: one clear line, nothing started
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((FIRST, 22))
        s.listen()
        busy = run_testbed("up", "--first-address", FIRST, "--index-port", str(INDEX_PORT))
    assert busy.returncode == 1 and len(busy.stderr.strip().splitlines()) == 1
    assert f"address in use: something already listens on {FIRST}:22" in busy.stderr
    assert not (STATE / "state.json").exists()


@pytest.mark.fleet
def test_zz_stale_state_gives_bare_hosts(tb):
    """A state file whose processes are gone (machine restarted, CI after a session) is discarded:
    the next `up` boots bare hosts instead of reviving the old roots."""
    STATE.mkdir(parents=True, exist_ok=True)
    stale = dict(tb["state"], hosts=tb["state"]["hosts"][:1])
    (STATE / "state.json").write_text(json.dumps(stale))
    old_root = STATE / "hosts" / "gptoss-1"
    (old_root / "root").mkdir(parents=True, exist_ok=True)
    (old_root / "root" / "left-by-an-old-deploy").write_text("x")
    # systemd-nspawn's image lock, left when the host was killed: `up` once died on it with a traceback
    (STATE / "hosts" / ".#gptoss-1.lck").write_text("")
    # Before `up`: the reports and the inventory say it is down instead of handing out dead addresses
    st = run_testbed("status", "--json")
    assert st.returncode == 1 and "nothing of it runs" in st.stderr and "gptoss-testbed up" in st.stderr, st.stderr
    deploy = subprocess.run([str(Path(sys.executable).with_name("pyinfra")), "-y", "inventories/testbed.py", "deploys/gptoss.py"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "GPTOSS_TESTBED_STATE": str(STATE)})
    assert deploy.returncode != 0 and "the local fleet in" in deploy.stdout + deploy.stderr, deploy.stdout + deploy.stderr
    assert "not running (nothing of it runs" in deploy.stdout + deploy.stderr
    try:
        up = run_testbed("up", "--hosts", "1", "--first-address", FIRST, "--index-port", str(INDEX_PORT))
        assert up.returncode == 0, up.stderr
        assert "discarding it" in up.stdout
        assert not (old_root / "root" / "left-by-an-old-deploy").exists()
        assert (old_root / "etc/hostname").read_text().strip() == "gptoss-1"
    finally:
        assert run_testbed("down").returncode == 0
