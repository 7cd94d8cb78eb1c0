"""Air-gapped installs (deploys/gptoss_deploy/airgap.py) and the doctor reading a venv layered on
a base Python.

- Config: every bad wheelhouse / base-Python value is one line naming key, value and fix, before
  any host is touched; a base Python whose torch/version.py is not the stack's pin is refused.
- Real uv, no network: the very commands the deploy runs make a stack venv on a base venv that
  holds a torch, install exactly a wheelhouse with --no-deps, and prove the venv imports the
  base's torch; the doctor's collector then sees that torch and every distribution.

The `torch` and `demo-server` wheels built here are STAND-INS (a version.py and one module), made
so the real uv and the real Python import machinery have something to install and find.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

from gptoss_deploy import airgap as A  # noqa: E402
from gptoss_deploy import config as C  # noqa: E402

DEBIAN = {"os_id": "debian", "os_like": None, "os_pretty": "Debian GNU/Linux 12 (bookworm)", "arch": "x86_64",
          "python_path": "/usr/bin/python3", "python_version": "3.11.2", "gpus": [], "nvswitch_count": 0}
STACK = "vllm-0.26.0"
BASE = "/opt/torch/.venv/bin/python3"
PROBE_OK = {"version": "3.12.3", "is_venv": True, "site": ["/opt/torch/.venv/lib/python3.12/site-packages"],
            "torch": "2.11.0+cu130", "torch_cuda": "13.0", "executable": BASE}
WHEELS = ["vllm-0.26.0-cp38-abi3-manylinux_2_31_x86_64.whl", "flashinfer_python-0.6.14-py3-none-any.whl"]


def airgap_data(key_file, **over):
    data = {"gptoss_stack": STACK, "gptoss_gpu_family": "H200", "gptoss_api_key_file": key_file,
            "gptoss_wheelhouse": "/srv/wheelhouse", "gptoss_wheelhouse_no_deps": True, "gptoss_base_python": BASE}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def airgap_facts(wheels=WHEELS, probe=PROBE_OK, **over):
    facts = {**DEBIAN, "airgap": {"wheelhouse": wheels, "base": probe}, "init": "none"}
    facts.update(over)
    return facts


# -- config (pure) -----------------------------------------------------------------------------


def test_base_python_with_the_stacks_torch_builds_the_venv_from_it(kb, key_file):
    cfg = C.validate("gpu1", airgap_data(key_file), airgap_facts(), kb)
    assert cfg.python == BASE
    assert cfg.airgap.wheelhouse == "/srv/wheelhouse" and cfg.airgap.no_deps
    assert cfg.airgap.torch_build == "2.11.0+cu130"
    assert cfg.airgap.base_site == ("/opt/torch/.venv/lib/python3.12/site-packages",)
    # the base's tools (ninja, pip CUDA tools) come right after the stack venv's own
    path = cfg.env["PATH"].split(":")
    assert path.index("/opt/torch/.venv/bin") == path.index(f"{C.CURRENT}/bin") + 1
    assert cfg.service_manager == "supervisor"  # no systemd on this host


@pytest.mark.parametrize("over, facts_over, words", [
    ({"gptoss_wheelhouse": None, "gptoss_base_python": None}, {}, ["gptoss_wheelhouse_no_deps=True", "needs gptoss_wheelhouse"]),
    ({"gptoss_wheelhouse": None, "gptoss_wheelhouse_no_deps": None}, {}, ["gptoss_base_python=", "needs gptoss_wheelhouse"]),
    ({"gptoss_wheelhouse": "wheels"}, {}, ["gptoss_wheelhouse='wheels'", "not an absolute path"]),
    ({}, {"airgap": {"wheelhouse": None, "base": PROBE_OK}}, ["gptoss_wheelhouse='/srv/wheelhouse'", "no such directory on the host"]),
    ({}, {"airgap": {"wheelhouse": [], "base": PROBE_OK}}, ["holds no .whl files"]),
    ({}, {"airgap": {"wheelhouse": WHEELS[1:], "base": PROBE_OK}}, ["has no wheel for vllm==0.26.0", "add those wheels"]),
    ({"gptoss_wheelhouse_no_deps": False}, {}, ["gptoss_base_python=", "needs gptoss_wheelhouse_no_deps=True"]),
    ({}, {"airgap": {"wheelhouse": WHEELS, "base": None}}, ["gptoss_base_python=", "not an executable on the host"]),
    ({}, {"airgap": {"wheelhouse": WHEELS, "base": {**PROBE_OK, "torch": "2.11.0"}}},
     ["holds torch 2.11.0 (torch/version.py)", "pins torch 2.11.0+cu130", "exactly 2.11.0+cu130"]),
    ({}, {"airgap": {"wheelhouse": WHEELS, "base": {**PROBE_OK, "torch": None}}}, ["holds no torch", "pins torch 2.11.0+cu130"]),
    ({}, {"airgap": {"wheelhouse": WHEELS, "base": {**PROBE_OK, "version": "3.9.18"}}}, ["is Python 3.9.18", ">=3.10"]),
    ({"gptoss_service_manager": "systemd"}, {}, ["gptoss_service_manager='systemd'", "systemd is not running"]),
    ({"gptoss_service_manager": "runit"}, {}, ["gptoss_service_manager='runit'", "unknown service manager"]),
])
def test_bad_airgap_values_are_one_line_with_the_fix(kb, key_file, over, facts_over, words):
    with pytest.raises(C.ConfigError) as e:
        C.validate("gpu1", airgap_data(key_file, **over), airgap_facts(**facts_over), kb)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("host gpu1: ") and "fix: " in msg
    for w in words:
        assert w in msg, msg


def test_without_network_apt_is_never_asked_for(kb, key_file):
    facts = airgap_facts(missing_packages=["python3", "ca-certificates"])
    assert C.validate("gpu1", airgap_data(key_file), facts, kb).missing_packages == ()
    no_python = airgap_facts(missing_packages=["python3"], python_version=None, python_path=None)
    data = airgap_data(key_file, gptoss_base_python=None, gptoss_wheelhouse_no_deps=None, gptoss_cuda_home="none")
    with pytest.raises(C.ConfigError, match="lacks python3; fix: install python3 from your local apt mirror"):
        C.validate("gpu1", data, no_python, kb)


def test_indexed_hosts_keep_todays_config_and_venv_hash(kb, key_file):
    """No air-gap key: no airgap in the config and the install spec (hence the hash) unchanged."""
    from gptoss_deploy import python_env

    data = {"gptoss_stack": STACK, "gptoss_gpu_family": "H100", "gptoss_api_key_file": key_file}
    cfg = C.validate("h1", data, DEBIAN, kb)
    assert cfg.airgap is None and cfg.service_manager == "systemd"
    spec = python_env.install_spec(cfg)
    import hashlib as h

    assert python_env.spec_hash(cfg) == h.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def test_the_venv_hash_follows_the_wheels_not_the_wheelhouse_path(kb, key_file):
    from gptoss_deploy import python_env

    a = C.validate("gpu1", airgap_data(key_file), airgap_facts(), kb)
    moved = C.validate("gpu1", airgap_data(key_file, gptoss_wheelhouse="/mnt/wh"), airgap_facts(), kb)
    more = C.validate("gpu1", airgap_data(key_file), airgap_facts(wheels=WHEELS + ["pyzmq-27.3.0-cp312-abi3-any.whl"]), kb)
    assert python_env.spec_hash(a) == python_env.spec_hash(moved) != python_env.spec_hash(more)


def test_a_local_model_folder_is_served_under_the_hf_id_offline(kb, key_file):
    cfg = C.validate("gpu1", airgap_data(key_file, gptoss_model_path="/srv/models/gpt-oss-20b"), airgap_facts(), kb)
    argv = cfg.serve_argv()
    assert argv[2] == "/srv/models/gpt-oss-20b"
    assert argv[argv.index("--served-model-name") + 1] == "openai/gpt-oss-20b"
    assert cfg.env["HF_HUB_OFFLINE"] == "1"


def test_airgap_facts_parse_the_hosts_output():
    fact = A.AirgapFacts()
    got = fact.process(["whl=vllm-0.26.0-cp38-abi3-manylinux_2_31_x86_64.whl", "whdir=1", "base=" + json.dumps(PROBE_OK)])
    assert got == {"wheelhouse": ["vllm-0.26.0-cp38-abi3-manylinux_2_31_x86_64.whl"], "base": PROBE_OK}
    assert fact.process([]) == {"wheelhouse": None, "base": None}
    assert fact.process(["base=Traceback: boom"])["base"] == {"error": "Traceback: boom"}


# -- real uv, no network ------------------------------------------------------------------------


def _wheel(dest: Path, name: str, version: str, files: dict[str, str], requires: tuple[str, ...] = ()) -> Path:
    """A minimal valid wheel (STAND-IN content) with METADATA, WHEEL and RECORD."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {**files, f"{dist}.dist-info/METADATA": meta,
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: gptoss-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    out = dest / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return out


@pytest.fixture(scope="module")
def uv():
    import uv as uv_pkg

    return uv_pkg.find_uv_bin()


def _sh(cmd: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=120)


def test_stack_venv_on_a_base_venv_from_a_wheelhouse_with_no_network(tmp_path, uv):
    # no proxy works and no index is given: any attempt to reach the network fails the install
    env = {**os.environ, "UV_CACHE_DIR": str(tmp_path / "cache"), "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9"}
    base_wh, wh = tmp_path / "base-wheels", tmp_path / "wheelhouse"
    base_wh.mkdir()
    wh.mkdir()
    _wheel(base_wh, "torch", "2.11.0+cu130", {"torch/__init__.py": "from .version import __version__\n",
                                              "torch/version.py": "__version__ = '2.11.0+cu130'\ncuda = '13.0'\n"})
    # what the server needs, and one Requires-Dist the curated wheelhouse cannot satisfy
    _wheel(wh, "demo-server", "1.0", {"demo_server/__init__.py": "import torch\nTORCH = torch.__version__\n"},
           requires=("torch==2.11.0", "never-needed-at-serve-time>=1"))
    base = tmp_path / "base"
    r = _sh(f"{uv} venv -q --python {sys.executable} {base} && {uv} pip install -q --python {base}/bin/python "
            f"--offline --no-index --find-links {base_wh} torch", env)
    assert r.returncode == 0, r.stderr

    probe = json.loads(subprocess.run([f"{base}/bin/python", "-I", "-c", A._PROBE_PY], capture_output=True, text=True,
                                      check=True).stdout)
    assert probe["torch"] == "2.11.0+cu130" and probe["is_venv"]
    ag = A.Airgap(wheelhouse=str(wh), wheels=("demo_server-1.0-py3-none-any.whl",), no_deps=True,
                  base_python=f"{base}/bin/python", base_version=probe["version"], base_site=tuple(probe["site"]),
                  base_is_venv=True, torch_build=probe["torch"])
    venv = tmp_path / "stack"
    uv_env = f"UV_CACHE_DIR={tmp_path / 'cache'} UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1"
    for cmd in A.venv_commands(uv_env, uv, str(venv), ag, "2.11.0+cu130"):
        r = _sh(cmd, env)
        assert r.returncode == 0, (cmd, r.stderr)
    assert "torch 2.11.0+cu130 from " in r.stdout  # the venv's own check, torch read as text
    for cmd in A.install_commands(uv_env, uv, f"{venv}/bin/python", ag, ["demo-server==1.0"], ""):
        r = _sh(cmd, env)
        assert r.returncode == 0, (cmd, r.stderr)
    got = subprocess.run([f"{venv}/bin/python", "-c", "import demo_server, torch; print(demo_server.TORCH, torch.__file__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert got[0] == "2.11.0+cu130" and got[1].startswith(str(base))  # torch from the base, not a copy
    assert not list(venv.glob("lib/python3*/site-packages/torch"))

    # the doctor reads the same layering: torch's build from the base, every distribution once
    from gptoss_doctor.collect import venv as V
    from gptoss_doctor.collect.env import Env

    facts = V.venv_facts(Env(), str(venv))
    assert facts["torch.build"]["value"]["version"] == "2.11.0+cu130"
    names = [d["name"] for d in facts["venv.distributions"]["value"]]
    assert "demo-server" in names and names.count("torch") == 1


def test_a_base_python_with_another_torch_stops_the_install(tmp_path, uv):
    env = {**os.environ, "UV_CACHE_DIR": str(tmp_path / "cache"), "UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}
    base_wh = tmp_path / "w"
    base_wh.mkdir()
    _wheel(base_wh, "torch", "2.11.0", {"torch/__init__.py": "", "torch/version.py": "__version__ = '2.11.0+cpu'\n"})
    base = tmp_path / "base"
    assert _sh(f"{uv} venv -q --python {sys.executable} {base} && {uv} pip install -q --python {base}/bin/python "
               f"--offline --no-index --find-links {base_wh} torch", env).returncode == 0
    site = subprocess.run([f"{base}/bin/python", "-I", "-c", "import site; print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ag = A.Airgap(wheelhouse=str(base_wh), no_deps=True, base_python=f"{base}/bin/python",
                  base_version="%d.%d.%d" % sys.version_info[:3], base_site=(site,), base_is_venv=True)
    venv = tmp_path / "stack"
    results = [_sh(c, env) for c in A.venv_commands("UV_NO_CONFIG=1", uv, str(venv), ag, "2.11.0+cu130")]
    last = results[-1]
    assert last.returncode != 0
    assert "sees torch 2.11.0+cpu" in last.stderr and "the stack pins 2.11.0+cu130" in last.stderr


# -- the collector: venvs on system site-packages, under a fake root ------------------------------


def _dist(sp: Path, name: str, version: str, top: str) -> None:
    d = sp / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n")
    (d / "RECORD").write_text(f"{top}/__init__.py,,\n")


def test_collector_reads_system_site_packages_of_a_venv_and_drops_shadowed_dists(tmp_path):
    from gptoss_doctor.collect import venv as V
    from gptoss_doctor.collect.env import Env

    root = tmp_path / "box"
    venv = root / "opt/gptoss/current"
    own = venv / "lib/python3.12/site-packages"
    own.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = true\nversion_info = 3.12.3\n")
    system = root / "usr/local/lib/python3.12/dist-packages"
    (system / "torch").mkdir(parents=True)
    (system / "torch/version.py").write_text("__version__ = '2.11.0+cu130'\ncuda = '13.0'\n")
    _dist(system, "torch", "2.11.0+cu130", "torch")
    _dist(system, "pydantic", "2.9.0", "pydantic")
    _dist(own, "pydantic", "2.14.4", "pydantic")  # the venv's own wins
    _dist(own, "vllm", "0.26.0", "vllm")
    env = Env(root=root, environ={"VIRTUAL_ENV": "/opt/gptoss/current"})
    facts = V.venv_facts(env)
    assert facts["torch.build"]["value"]["version"] == "2.11.0+cu130"
    assert facts["torch.build"]["value"]["path"] == "/usr/local/lib/python3.12/dist-packages/torch/version.py"
    dists = {d["name"]: d for d in facts["venv.distributions"]["value"]}
    assert dists["pydantic"]["version"] == "2.14.4" and dists["torch"]["version"] == "2.11.0+cu130"
    assert "/usr/local/lib/python3.12/dist-packages" in facts["venv"]["value"]["site_packages"]

    # without the flag, the system's packages are not the venv's
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion_info = 3.12.3\n")
    facts = V.venv_facts(env)
    assert "absent" in facts["torch.build"]
