"""The model pre-download without the fleet: gptoss_hf_endpoint / gptoss_hf_token_file validated
into one line each, the command the host runs (service user, mirror, patterns, no secret), and the
host-side script run with the REAL huggingface_hub against the loopback mirror (tests/hfmirror.py,
a stand-in for the Hub). The real wheels come from the testbed's PyPI download cache (no network);
that part skips where the cache is absent. The fleet version is tests/test_fleet_model.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

import hfmirror  # noqa: E402
from gptoss_deploy import config as C  # noqa: E402
from gptoss_deploy import model as M  # noqa: E402

DEBIAN = {"os_id": "debian", "os_like": None, "os_pretty": "Debian GNU/Linux 12 (bookworm)", "arch": "x86_64",
          "python_path": "/usr/bin/python3", "python_version": "3.11.2", "gpus": [], "nvswitch_count": 0}
TOKEN = "hf_secretTOKEN0123456789"


@pytest.fixture()
def good(kb, tmp_path):
    from packaging.specifiers import SpecifierSet

    key = tmp_path / "api-key"
    key.write_text("sk-test-0123456789\n")
    key.chmod(0o600)
    stack = [s for s in kb.stacks.values() if "3.11.2" in SpecifierSet(s.python) and kb.recipe("H100", s.vllm)][-1]
    return {"gptoss_stack": stack.name, "gptoss_gpu_family": "H100", "gptoss_api_key_file": str(key)}


def one_line_error(kb, data, host="gpu-07") -> str:
    with pytest.raises(C.ConfigError) as e:
        C.validate(host, data, DEBIAN, kb)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"host {host}: ") and "fix: " in msg, msg
    return msg


# -- config ------------------------------------------------------------------------------------


def test_default_endpoint_leaves_the_service_env_as_it_was(kb, good):
    cfg = C.validate("gpu-01", {**good, "gptoss_predownload": True}, DEBIAN, kb)
    assert cfg.hf_endpoint == "https://huggingface.co" and "HF_ENDPOINT" not in cfg.env
    assert cfg.env["HF_HUB_OFFLINE"] == "1" and cfg.hf_token_file is None


def test_mirror_endpoint_goes_to_the_service_env_without_trailing_slash(kb, good):
    cfg = C.validate("gpu-01", {**good, "gptoss_hf_endpoint": "http://hf-mirror.lan:8080/"}, DEBIAN, kb)
    assert cfg.hf_endpoint == "http://hf-mirror.lan:8080" and cfg.env["HF_ENDPOINT"] == "http://hf-mirror.lan:8080"


@pytest.mark.parametrize("value, problem", [
    ("ftp://mirror.lan/", "not an http(s):// URL"),
    ("file:///srv/hf", "not an http(s):// URL"),
    ("hf-mirror.lan", "not an http(s):// URL"),
    (8080, "not an http(s):// URL"),
    ("https://", "URL has no host"),
    ("https://mirror.lan/?token=x", "has a query or fragment"),
])
def test_bad_endpoint_is_one_line(kb, good, value, problem):
    msg = one_line_error(kb, {**good, "gptoss_hf_endpoint": value})
    assert f"gptoss_hf_endpoint={value!r}" in msg and problem in msg


def test_token_file_checked_like_the_api_key(kb, good, tmp_path):
    tok = tmp_path / "hf-token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o644)
    assert "world-readable" in one_line_error(kb, {**good, "gptoss_hf_token_file": str(tok)})
    tok.chmod(0o600)
    cfg = C.validate("gpu-01", {**good, "gptoss_hf_token_file": str(tok)}, DEBIAN, kb)
    assert cfg.hf_token_file == str(tok)
    # the token travels as a file only: not in the service env, the argv, nor the download command
    assert TOKEN not in repr(cfg.env) + " ".join(cfg.serve_argv()) + M.predownload_command(cfg, 13.0)
    missing = one_line_error(kb, {**good, "gptoss_hf_token_file": str(tmp_path / "nope")})
    assert "cannot read it" in missing
    tok.write_text("two words\n")
    assert "one Hugging Face token on one line" in one_line_error(kb, {**good, "gptoss_hf_token_file": str(tok)})


def test_download_command_runs_online_as_the_service_user_with_the_mirror(kb, good):
    cfg = C.validate("gpu-01", {**good, "gptoss_predownload": True, "gptoss_hf_endpoint": "http://m.lan"}, DEBIAN, kb)
    cmd = M.predownload_command(cfg, M.weights_gib(cfg, kb))
    assert cmd.startswith(f"runuser -u {C.SERVICE_USER} -- env ")
    for part in ("HF_ENDPOINT=http://m.lan", "HF_HUB_OFFLINE=0", f"HF_HOME={cfg.hf_home}", "original/*", "metal/*"):
        assert part in cmd, part
    assert M.weights_gib(cfg, kb) == kb.model(cfg.model).weights_gib


# -- the host-side script with the real huggingface_hub -----------------------------------------


def hub_wheels() -> Path | None:
    from gptoss_testbed import catalog, paths

    have = {p.name.split("-")[0].lower().replace("_", "-") for p in paths.PYPI_DOWNLOADS_DIR.glob("*.whl")}
    need = {r.split("==")[0].replace("_", "-") for r in catalog.HF_HUB_DOWNLOADS}
    return paths.PYPI_DOWNLOADS_DIR if need <= have else None


@pytest.fixture(scope="module")
def hub_python(tmp_path_factory) -> str:
    wheels = hub_wheels()
    if wheels is None:
        pytest.skip("no huggingface_hub wheels in the testbed's PyPI cache (run `gptoss-testbed up` once)")
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    venv = tmp_path_factory.mktemp("hubvenv") / "venv"
    env = {**os.environ, "UV_NO_CONFIG": "1"}
    subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], check=True, env=env)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "--offline", "--no-index",
                    "--find-links", str(wheels), "huggingface-hub"], check=True, env=env, timeout=300)
    return str(venv / "bin" / "python")


@pytest.fixture(scope="module")
def mirror():
    repo = hfmirror.gpt_oss_20b_standin(256 * 1024)
    server, log, url = hfmirror.serve([repo])
    yield repo, log, url
    server.shutdown()


def run_script(python: str, url: str, hf_home: Path, model: str = "openai/gpt-oss-20b") -> subprocess.CompletedProcess:
    hf_home.mkdir(parents=True, exist_ok=True)  # the host unit makes it on a real host
    marker = hf_home / ".gptoss-downloaded"
    args = ["gpu-01", model, str(hf_home), str(marker), "13", f"{M.SPACE_MARGIN:g}",
            json.dumps(list(M.ALLOW_PATTERNS)), json.dumps(list(M.IGNORE_PATTERNS))]
    env = {"PATH": os.environ["PATH"], "HF_HOME": str(hf_home), "HF_ENDPOINT": url,
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HOME": str(hf_home)}
    return subprocess.run([python, "-c", M._PREDOWNLOAD_PY, *args], env=env, capture_output=True, text=True, timeout=120)


def test_real_client_downloads_only_what_vllm_loads_then_nothing(hub_python, mirror, tmp_path):
    repo, log, url = mirror
    log.clear()
    first = run_script(hub_python, url, tmp_path)
    assert first.returncode == 0, first.stderr
    wanted = {p for p in repo.files if "/" not in p and p.endswith((".json", ".safetensors", ".jinja"))}
    assert set(log.downloads()) == wanted
    assert not [f for _m, f in log.resolved() if f.startswith(("original/", "metal/"))]
    snap = tmp_path / "hub" / "models--openai--gpt-oss-20b" / "snapshots" / repo.sha
    assert {p.name for p in snap.iterdir()} == wanted
    assert json.loads((tmp_path / ".gptoss-downloaded").read_text())["snapshot"] == str(snap)
    log.clear()
    again = run_script(hub_python, url, tmp_path)
    assert again.returncode == 0 and log.downloads() == [] and "0 of 9 files still missing" in again.stdout


def test_refused_file_and_unknown_repo_are_one_line_and_leave_no_marker(hub_python, mirror, tmp_path):
    repo, log, url = mirror
    log.refused.add("model-00000-of-00001.safetensors")
    try:
        broken = run_script(hub_python, url, tmp_path / "a")
    finally:
        log.refused.clear()
    unknown = run_script(hub_python, url, tmp_path / "b", model="openai/gpt-oss-120b")
    for run, words in ((broken, "downloading openai/gpt-oss-20b from"), (unknown, "cannot list openai/gpt-oss-120b")):
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and len(lines) == 1, run.stderr
        assert lines[0].startswith("gptoss: host gpu-01: ") and words in lines[0] and "fix: " in lines[0], lines
    assert not (tmp_path / "a" / ".gptoss-downloaded").exists() and not (tmp_path / "b" / ".gptoss-downloaded").exists()
