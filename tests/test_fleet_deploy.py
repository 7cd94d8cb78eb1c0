"""The deploy end to end on the local fleet (booted Debian hosts under systemd-nspawn, a loopback
package index serving stand-in vLLM/torch wheels): bad data refused before any host is touched,
first deploy, a second deploy with zero changes, every host healthy and authenticated, the
service user not root, the doctor answering on each host; and the usage guide's failures
reproduced through real uv resolution against the local index and found by the doctor.

Needs root and `gptoss-testbed` (it runs `gptoss-testbed up`, which is idempotent).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTBED_INVENTORY = REPO / "inventories" / "testbed.py"

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root"),
]


# -- helpers -----------------------------------------------------------------------------------


def run_testbed(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    exe = shutil.which("gptoss-testbed") or str(Path(sys.executable).with_name("gptoss-testbed"))
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def pyinfra(inventory: Path | str, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", "--json", str(inventory), "deploys/gptoss.py", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYINFRA_PROGRESS": "off"},
    )


def results(run: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(run.stdout)["results"]
    except (ValueError, KeyError, TypeError):
        pytest.fail(f"pyinfra gave no JSON results (rc {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")


def load_inventory(path: Path) -> dict:
    """The inventory module's groups, as pyinfra reads them: public lists/tuples."""
    spec = importlib.util.spec_from_file_location(f"inv_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {k: v for k, v in vars(mod).items() if not k.startswith("_") and isinstance(v, (list, tuple))}


def host_datas(groups: dict) -> dict[str, dict]:
    """{host name: merged data (group, then host)}."""
    out: dict[str, dict] = {}
    for value in groups.values():
        hosts, gdata = (value if len(value) == 2 and isinstance(value[1], dict) and isinstance(value[0], (list, tuple))
                        else (value, {}))
        for h in hosts:
            name, hdata = (h if isinstance(h, tuple) else (h, {}))
            out.setdefault(name, {}).update({**gdata, **hdata})
    return out


def write_inventory(path: Path, hosts: dict[str, dict]) -> Path:
    path.write_text("hosts = " + repr([(n, d) for n, d in hosts.items()]) + "\n")
    return path


def ssh(address: str, key: str, command: str) -> tuple[int, str]:
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(address, username="root", key_filename=key, timeout=20, look_for_keys=False, allow_agent=False)
    try:
        _, out, err = client.exec_command(command, timeout=300)
        text = out.read().decode() + err.read().decode()
        return out.channel.recv_exit_status(), text
    finally:
        client.close()


def http(url: str, key: str | None = None, body: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def state_fingerprint(fleet: dict) -> dict:
    """What a deploy would change on each host, read over SSH."""
    cmd = ("ls -la --time-style=+%s.%N /opt /etc/gptoss /etc/systemd/system /usr/local/bin 2>&1; "
           "getent passwd gptoss; systemctl show -p ActiveEnterTimestamp gptoss-vllm.service 2>&1")
    return {h["name"]: ssh(h["address"], fleet["ssh_key"], cmd)[1] for h in fleet["hosts"]}


# -- the fleet ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> dict:
    """The local fleet ($GPTOSS_TESTBED_STATE picks another one): `up` is idempotent, and boots
    again what a state file left by a machine restart names but what no longer runs."""
    up = run_testbed("up")
    if up.returncode != 0:
        pytest.fail(f"gptoss-testbed up failed: {up.stderr.strip()[-2000:]}")
    st = run_testbed("status", "--json")
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["hosts"], "the testbed has no hosts"
    data["inventory"] = host_datas(load_inventory(TESTBED_INVENTORY))
    return data


@pytest.fixture(scope="module")
def deployed(fleet, tmp_path_factory) -> dict:
    """Bad data first (on bare or deployed hosts alike), then the first and the second deploy."""
    out: dict = {}
    bad_hosts = {n: dict(d) for n, d in fleet["inventory"].items()}
    victim = sorted(bad_hosts)[-1]
    bad_hosts[victim]["gptoss_tensor_parallel_size"] = 3
    inv = write_inventory(tmp_path_factory.mktemp("inv") / "bad.py", bad_hosts)
    before = state_fingerprint(fleet)
    out["bad"] = pyinfra(inv)
    out["bad_victim"] = victim
    out["bad_unchanged"] = before == state_fingerprint(fleet)
    out["first"] = pyinfra(TESTBED_INVENTORY)
    out["second"] = pyinfra(TESTBED_INVENTORY)
    return out


def test_bad_inventory_data_refused_before_any_host_is_touched(deployed):
    run = deployed["bad"]
    text = run.stdout + run.stderr
    assert run.returncode == 1, text[-2000:]
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if "gptoss_tensor_parallel_size=3" in line]
    assert len(lines) == 1 and f"host {deployed['bad_victim']}:" in lines[0] and "fix: " in lines[0], text[-2000:]
    assert "Beginning operation run" not in text
    assert deployed["bad_unchanged"], "a host changed although the run was refused"


def test_first_deploy_succeeds_on_every_host(deployed, fleet):
    run = deployed["first"]
    res = results(run)
    assert run.returncode == 0 and res["failed_hosts"] == [] and res["totals"]["error"] == 0, run.stderr[-4000:]
    assert fleet["api_key"] not in run.stdout + run.stderr, "the API key reached pyinfra's output"


def test_second_deploy_changes_nothing(deployed):
    run = deployed["second"]
    res = results(run)
    changed = [(op["name"], op["success"]) for op in res["operations"] if op["success"]]
    assert run.returncode == 0 and res["totals"]["error"] == 0, run.stderr[-3000:]
    assert res["totals"]["success"] == 0, f"changed on re-run: {changed}"
    assert res["totals"]["no_change"] > 0


def test_every_host_healthy_and_key_required(deployed, fleet):
    key = fleet["api_key"]
    for h in fleet["hosts"]:
        base = f"http://{h['address']}:8000"
        assert http(f"{base}/health")[0] == 200, h
        code, _ = http(f"{base}/v1/models")
        assert code == 401, f"{h['name']}: /v1/models without the key answered {code}"
        code, body = http(f"{base}/v1/models", key=key)
        assert code == 200 and any(m["id"].startswith("openai/gpt-oss") for m in json.loads(body)["data"]), body
        model = json.loads(body)["data"][0]["id"]
        code, body = http(f"{base}/v1/completions", key=key, body={"model": model, "prompt": "Hi", "max_tokens": 2})
        assert code == 200 and json.loads(body)["choices"], body


def test_service_runs_as_unprivileged_user_with_secret_files_locked(deployed, fleet):
    for h in fleet["hosts"]:
        rc, out = ssh(h["address"], fleet["ssh_key"],
                      "pid=$(systemctl show -p MainPID --value gptoss-vllm.service); "
                      "echo user=$(ps -o user= -p $pid); echo uid=$(ps -o uid= -p $pid | tr -d ' '); "
                      "tr '\\0' ' ' < /proc/$pid/cmdline; echo; "
                      "stat -c 'mode=%a %U:%G %n' /etc/gptoss /etc/gptoss/api-key /etc/gptoss/gptoss.env; "
                      "readlink /opt/gptoss/current")
        assert rc == 0, out
        assert "user=gptoss" in out and "uid=0" not in out, out
        assert fleet["api_key"] not in out.split("mode=")[0], "the API key is in the service's argv"
        assert "mode=640 root:gptoss /etc/gptoss/api-key" in out and "mode=640 root:gptoss /etc/gptoss/gptoss.env" in out
        assert "mode=750 root:gptoss /etc/gptoss" in out
        assert "/opt/gptoss/stacks/" in out.splitlines()[-1]


def test_doctor_answers_on_every_host(deployed, fleet):
    for h in fleet["hosts"]:
        rc, out = ssh(h["address"], fleet["ssh_key"], "command -v gptoss-doctor && gptoss-doctor --json")
        assert rc == 0, out[-2000:]
        report = json.loads(out[out.index("{"):])
        assert report["schema"] == "gptoss-doctor/report@1" and report["exit_code"] == 0
        assert not [f for f in report["findings"] if f["severity"] == "error"]


def test_manifest_describes_the_deploy(deployed, fleet):
    h = fleet["hosts"][0]
    rc, out = ssh(h["address"], fleet["ssh_key"], "cat /etc/gptoss/manifest.json")
    m = json.loads(out)
    assert m["unit"] == "gptoss-vllm.service" and m["venv"].startswith("/opt/gptoss/stacks/")
    assert fleet["api_key"] not in out
    stack = fleet["inventory"][h["name"]]["gptoss_stack"]
    assert m["stack"] == stack


# -- the usage guide's failures, through real uv resolution and the doctor ----------------------


def test_guide_failure_torch_without_cuda_suffix_fails_the_doctor_gate(deployed, fleet):
    """The guide's "check that your pytorch has the +cu128 suffix": a site whose mirror of the
    PyTorch index is really just PyPI installs PyPI's torch (the cu126 build of 2.7.1) for a
    stack that needs +cu128. Real uv resolves it against the local index; the doctor gate
    reports torch-cuda-suffix and fails that host."""
    from gptoss_doctor import knowledge
    from packaging.specifiers import SpecifierSet

    kb = knowledge.load()
    host = fleet["hosts"][-1]["name"]
    data = dict(fleet["inventory"][host])
    mirrors = dict(data["gptoss_index_mirrors"])
    stack = next((s for s in kb.stacks.values() if s.torch_backend and s.torch_local and "3.11.2" in SpecifierSet(s.python)
                  and kb.recipe(data.get("gptoss_gpu_family", "H100"), s.vllm)), None)
    assert stack is not None, "no stack with a torch backend fits the fleet's python"
    mirrors[f"pytorch-{stack.torch_backend}"] = mirrors["pypi"]
    data.update(gptoss_stack=stack.name, gptoss_index_mirrors=mirrors, gptoss_health_timeout_s=120)
    inv = write_inventory(Path(os.environ.get("TMPDIR", "/tmp")) / f"gptoss-suffix-{os.getpid()}.py", {host: data})
    try:
        run = pyinfra(inv, timeout=900)
    finally:
        inv.unlink()
    text = run.stdout + run.stderr
    assert run.returncode != 0, "the deploy passed with torch lacking its CUDA suffix"
    assert "torch-cuda-suffix" in text, text[-3000:]
    # Put the host back on its own stack for whatever runs next.
    restore = pyinfra(TESTBED_INVENTORY, "--limit", host)
    assert restore.returncode == 0, restore.stderr[-3000:]


def test_guide_failure_launch_stack_needs_unsafe_best_match(fleet, tmp_path):
    """The launch-day install (`--extra-index-url` x2, `--pre`) resolves only with
    `--index-strategy unsafe-best-match`: without it uv takes each package from the first index
    that has it (the PyTorch index's old copies) and the resolution fails. Real uv, local index."""
    from gptoss_doctor import knowledge

    kb = knowledge.load()
    launch = next((s for s in kb.stacks.values() if s.index_strategy == "unsafe-best-match" and s.torch_local), None)
    assert launch is not None, "the knowledge lost the launch stack (unsafe-best-match, a +cu torch)"
    mirrors = next(d.get("gptoss_index_mirrors") for d in fleet["inventory"].values())
    py = launch.python.split(",")[0].lstrip(">=~") or "3.12"
    uv = str(Path(sys.executable).with_name("uv"))
    args = [uv, "pip", "compile", "--no-header", "--python-version", py, "--python-platform", "x86_64-manylinux_2_28",
            "--prerelease", launch.prerelease or "allow", "--no-cache"]
    for ix in launch.indexes:
        url = mirrors.get(ix.name, ix.url)
        args += ["--default-index", url] if ix.name == "pypi" else ["--index", url]
    req = tmp_path / "req.in"
    req.write_text("\n".join(launch.requirements) + "\n")
    with_strategy = subprocess.run(args + ["--index-strategy", "unsafe-best-match", str(req)],
                                   capture_output=True, text=True, timeout=300)
    assert with_strategy.returncode == 0, with_strategy.stderr[-2000:]
    torch_line = next(line for line in with_strategy.stdout.splitlines() if line.startswith("torch=="))
    assert torch_line.endswith(launch.torch_local), torch_line
    without = subprocess.run(args + [str(req)], capture_output=True, text=True, timeout=300)
    torch_without = [line for line in without.stdout.splitlines() if line.startswith("torch==")]
    assert without.returncode != 0 or not torch_without[0].endswith(launch.torch_local), without.stdout


def test_unreachable_mcp_tool_server_stops_the_host_before_the_service_changes(deployed, fleet):
    host = fleet["hosts"][0]
    before = state_fingerprint({**fleet, "hosts": [host]})
    run = pyinfra(TESTBED_INVENTORY, "--limit", host["name"], "--data", 'gptoss_tool_servers=["127.0.0.1:9"]')
    text = run.stdout + run.stderr
    assert run.returncode != 0
    assert "MCP tool server(s) unreachable" in text and "127.0.0.1:9" in text, text[-2000:]
    assert state_fingerprint({**fleet, "hosts": [host]}) == before
    assert http(f"http://{host['address']}:8000/health")[0] == 200


def test_broken_stack_fails_the_health_gate_with_the_reason(deployed, fleet):
    """The testbed's broken stack installs and starts but never gets healthy: the health gate
    fails that host, naming what it saw; deploying the good stack again brings it back."""
    host = fleet["hosts"][0]["name"]
    run = pyinfra(TESTBED_INVENTORY, "--limit", host, "--data", f"gptoss_stack={fleet['broken_stack']}",
                  "--data", "gptoss_health_timeout_s=15")
    text = run.stdout + run.stderr
    assert run.returncode != 0
    assert "gptoss health: /health not 200 after 15s" in text, text[-2000:]
    restore = pyinfra(TESTBED_INVENTORY, "--limit", host)
    assert restore.returncode == 0, restore.stderr[-3000:]
    assert http(f"http://{fleet['hosts'][0]['address']}:8000/health")[0] == 200


# A STAND-IN for NVIDIA's nvidia-smi (the fleet has no GPUs): answers `--query-gpu=<fields>`
# for two H100s with the fields asked for, and `-pm 1`. Written onto one host by the test below.
FAKE_NVIDIA_SMI = r"""#!/bin/sh
# STAND-IN for nvidia-smi, written by tests/test_fleet_deploy.py: there is no GPU on this host.
q=$(printf '%s\n' "$@" | sed -n 's/^--query-gpu=//p')
if [ -n "$q" ]; then
  for i in 0 1; do
    line=""
    for f in $(echo "$q" | tr ',' ' '); do
      case $f in
        index) v=$i;; name) v="NVIDIA H100 80GB HBM3";; compute_cap) v=9.0;; memory.total) v=81559;;
        driver_version) v=580.95.05;; persistence_mode) v=Disabled;; uuid) v=GPU-STANDIN-$i;; *) v="[N/A]";;
      esac
      line="${line:+$line, }$v"
    done
    echo "$line"
  done
  exit 0
fi
case "$*" in *-pm*) echo "Enabled persistence mode (stand-in)";; *) echo "nvidia-smi stand-in";; esac
"""


def test_gpu_host_path_with_detected_gpus(deployed, fleet):
    """GPUs detected over SSH from nvidia-smi (a stand-in here): the family and the GPU count come
    from the host, TP above the count is refused before anything changes, and the GPU unit runs
    (persistence mode, GPU packages out of unattended upgrades)."""
    h = fleet["hosts"][1]
    key = fleet["ssh_key"]
    rc, out = ssh(h["address"], key, "cat > /usr/local/bin/nvidia-smi <<'EOF'\n" + FAKE_NVIDIA_SMI + "EOF\n"
                  "chmod 0755 /usr/local/bin/nvidia-smi && nvidia-smi --query-gpu=index,name --format=csv,noheader")
    assert rc == 0 and "1, NVIDIA H100 80GB HBM3" in out, out
    try:
        too_big = pyinfra(TESTBED_INVENTORY, "--limit", h["name"], "--data", "gptoss_tensor_parallel_size=4")
        text = too_big.stdout + too_big.stderr
        assert too_big.returncode == 1 and "larger than the 2 GPU(s) present" in text, text[-2000:]
        run = pyinfra(TESTBED_INVENTORY, "--limit", h["name"], "--data", "gptoss_tensor_parallel_size=2",
                      "--data", "gptoss_doctor_gate=false")
        res = results(run)
        assert run.returncode == 0 and not res["failed_hosts"], run.stderr[-3000:]
        changed = {op["name"] for op in res["operations"] if op["success"]}
        assert any("persistence mode" in n for n in changed), changed
        rc, out = ssh(h["address"], key, "cat /etc/apt/apt.conf.d/51gptoss-gpu-packages; cat /etc/gptoss/manifest.json")
        assert '"nvidia-";' in out and '"tensor_parallel_size": 2' in out and '"gpu_family": "H100"' in out
    finally:
        ssh(h["address"], key, "rm -f /usr/local/bin/nvidia-smi /etc/apt/apt.conf.d/51gptoss-gpu-packages")
        restore = pyinfra(TESTBED_INVENTORY, "--limit", h["name"])
        assert restore.returncode == 0, restore.stderr[-3000:]


def test_failed_stack_install_never_becomes_current(deployed, fleet, tmp_path):
    """A stack whose install fails (here: one more requirement that no index has) leaves `current` on the
    stack that serves, and the service healthy: the switch happens only after the marker."""
    from gptoss_doctor import knowledge

    h = fleet["hosts"][-1]
    data = fleet["inventory"][h["name"]]
    kb = knowledge.load(extra_stack_files=data.get("gptoss_extra_stack_files") or ())
    s = kb.stacks[data["gptoss_stack"]]
    fields = {k: getattr(s, k) for k in ("era", "vllm", "torch", "torch_local", "triton_dist", "triton", "cuda", "python",
                                         "min_driver", "index_strategy", "prerelease", "torch_backend",
                                         "nvcc_requirement", "cuda_home_subdir", "source")}
    fields.update(name=f"{s.name}-unresolvable", requirements=[*s.requirements, "gptoss-no-such-dist==1.0"])
    rows = "\n".join(f"{k} = {json.dumps(v)}" for k, v in fields.items() if v is not None)
    idx = ", ".join(f'{{ name = "{i.name}", url = "{i.url}" }}' for i in s.indexes)
    extra = tmp_path / "unresolvable.toml"
    extra.write_text(f"[[stack]]\n{rows}\nindexes = [{idx}]\n")
    before = ssh(h["address"], fleet["ssh_key"], "readlink /opt/gptoss/current")[1].strip()
    files = [*(data.get("gptoss_extra_stack_files") or []), str(extra)]
    run = pyinfra(TESTBED_INVENTORY, "--limit", h["name"], "--data", f"gptoss_stack={s.name}-unresolvable",
                  "--data", f"gptoss_extra_stack_files={json.dumps(files)}")
    assert run.returncode != 0, "an unresolvable stack installed"
    # Every host failed, so pyinfra ends with "No hosts remaining!" and no JSON: read its log.
    text = run.stdout + run.stderr
    failed_at = text.split(f"stack venv {s.name}-unresolvable", 1)[-1]
    assert "gptoss-no-such-dist" in failed_at and "Error: executed" in failed_at, text[-2000:]
    assert "switch current" not in failed_at
    rc, out = ssh(h["address"], fleet["ssh_key"],
                  f"readlink /opt/gptoss/current; test -e /opt/gptoss/stacks/{s.name}-unresolvable/.gptoss-complete && echo MARKER")
    assert out.splitlines()[0] == before and "MARKER" not in out, out
    assert http(f"http://{h['address']}:8000/health")[0] == 200


def test_the_live_stack_is_never_rebuilt_in_place(deployed, fleet):
    """A live stack whose marker no longer matches what is asked for (hand-edited, or installed
    by another spec) is refused, not wiped under the running service: the venv stays, the
    service stays healthy, and the message says what to do instead."""
    h = fleet["hosts"][0]
    marker = "/opt/gptoss/current/.gptoss-complete"
    rc, original = ssh(h["address"], fleet["ssh_key"], f"cat {marker}")
    assert rc == 0 and original.strip(), original
    try:
        assert ssh(h["address"], fleet["ssh_key"], f"echo some-other-spec > {marker}")[0] == 0
        run = pyinfra(TESTBED_INVENTORY, "--limit", h["name"])
        text = run.stdout + run.stderr
        assert run.returncode != 0, text[-2000:]
        assert "is the live stack but was installed from a different spec; deploy it under a new stack name instead" in text
        rc, out = ssh(h["address"], fleet["ssh_key"], "test -x /opt/gptoss/current/bin/python && echo VENV")
        assert "VENV" in out, out
        assert http(f"http://{h['address']}:8000/health")[0] == 200
    finally:
        ssh(h["address"], fleet["ssh_key"], f"printf '%s\\n' {shlex.quote(original.strip())} > {marker}")
