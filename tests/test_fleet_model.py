"""The model pre-download end to end on the local fleet: the REAL huggingface_hub (installed into
the stack venv from the testbed's loopback PyPI, pulled in by the stand-in vLLM) downloads from a
loopback Hugging Face mirror (tests/hfmirror.py, a stand-in for the Hub) into gptoss_hf_home.

- A mirror that refuses a file half-way fails the host with one line and leaves no done-marker;
  the next run completes it, downloading only what was still missing.
- Only what vLLM loads lands, owned by the service user: original/ and metal/ are never even asked for.
- A re-run changes nothing and downloads nothing.
- A disk too small for what is missing (a 1 MiB tmpfs as gptoss_hf_home) fails that host with one
  line (path, free GiB, needed GiB, fix) before any file is downloaded.

Needs root and the local fleet (GPTOSS_TESTBED_STATE picks one); uses its first host.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

import hfmirror
from test_fleet_deploy import TESTBED_INVENTORY, fleet, pyinfra, results, ssh  # noqa: F401 (fleet: a fixture)

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.skipif(os.geteuid() != 0, reason="the local fleet needs root"),
]

MODEL = "openai/gpt-oss-20b"
HF_HOME = "/var/lib/gptoss/hf"
TINY_HF_HOME = "/srv/gptoss-tiny-hf"
CACHE = f"{HF_HOME}/hub/models--openai--gpt-oss-20b"
MARKER = f"{HF_HOME}/.gptoss-downloaded-openai--gpt-oss-20b"
WEIGHTS = 2 * 1024 * 1024  # larger than the tiny tmpfs, small enough for every test run


TOKEN = "hf_fleetTestToken0123456789"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """The mirror is gated: without the token from gptoss_hf_token_file every request is refused."""
    repo = hfmirror.gpt_oss_20b_standin(WEIGHTS)
    server, log, url = hfmirror.serve([repo])  # 127.0.0.1: the fleet's hosts share the loopback
    log.token = TOKEN
    token_file = tmp_path_factory.mktemp("hf") / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    yield repo, log, url, str(token_file)
    server.shutdown()


def deploy(fleet, mirror, *data: str):
    host = fleet["hosts"][0]["name"]
    _repo, _log, url, token_file = mirror
    args = ["--limit", host, "--data", "gptoss_predownload=true", "--data", f"gptoss_hf_endpoint={url}",
            "--data", f"gptoss_hf_token_file={token_file}"]
    for d in data:
        args += ["--data", d]
    return pyinfra(TESTBED_INVENTORY, *args)


def on_host(fleet, command: str) -> str:
    h = fleet["hosts"][0]
    rc, out = ssh(h["address"], fleet["ssh_key"], command)
    assert rc == 0, out[-2000:]
    return out


def wanted_files(repo: hfmirror.Repo) -> set[str]:
    """What vLLM loads: top-level config, tokenizer, template and safetensors files."""
    keep = (".json", ".safetensors", ".jinja")
    return {p for p in repo.files if "/" not in p and p.endswith(keep)}


@pytest.fixture(scope="module")
def runs(fleet, mirror) -> dict:
    repo, log, url, _token = mirror
    on_host(fleet, f"rm -rf {HF_HOME}/hub {HF_HOME}/.gptoss-downloaded-*")
    out: dict = {}
    shard = "model-00001-of-00001.safetensors"
    log.refused.add(shard)
    out["broken"] = deploy(fleet, mirror)
    out["broken_resolved"] = log.resolved()
    out["broken_gets"] = log.downloads()
    out["broken_marker"] = on_host(fleet, f"test -e {MARKER} && echo MARKER || echo none").strip()
    # the files the broken run finished (a snapshot link appears only once its blob is complete)
    out["broken_kept"] = set(on_host(fleet, f"ls {CACHE}/snapshots/{repo.sha} 2>/dev/null || true").split())
    log.refused.clear()
    log.clear()
    out["first"] = deploy(fleet, mirror)
    out["first_resolved"] = log.resolved()
    log.clear()
    out["second"] = deploy(fleet, mirror)
    out["second_gets"] = log.downloads()
    return out


def test_a_download_broken_half_way_is_one_line_and_never_marked_done(runs):
    run = runs["broken"]
    text = run.stdout + run.stderr
    assert run.returncode != 0, text[-2000:]
    lines = [line for line in text.splitlines() if "gptoss: host " in line and "downloading openai/gpt-oss-20b" in line]
    assert lines and all("fix: " in line for line in lines), text[-3000:]
    assert "Traceback" not in text
    assert "model-00001-of-00001.safetensors" in runs["broken_gets"]
    assert runs["broken_marker"] == "none"


def test_predownload_lands_only_what_vllm_loads_owned_by_the_service_user(runs, mirror, fleet):
    repo, _log, url, _token = mirror
    run = runs["first"]
    res = results(run)
    assert run.returncode == 0 and not res["failed_hosts"], run.stderr[-3000:]
    asked = {f for _m, f in runs["broken_resolved"] + runs["first_resolved"]}
    assert not [f for f in asked if f.startswith(("original/", "metal/"))], asked
    # The broken run kept its finished files: only what it did not finish is fetched now.
    gets = sorted(f for m, f in runs["first_resolved"] if m == "GET")
    assert "model-00001-of-00001.safetensors" in gets and runs["broken_kept"], runs["broken_kept"]
    assert gets == sorted(wanted_files(repo) - runs["broken_kept"]), (gets, runs["broken_kept"])

    snap = f"{CACHE}/snapshots/{repo.sha}"
    # every file under the snapshot (links followed to their blobs) with its owner, at any depth
    listing = on_host(fleet, f"cd {snap} && find -L . -type f -printf '%u %P\\n'")
    owners = {path: user for user, path in (line.split(" ", 1) for line in listing.splitlines())}
    assert set(owners) == wanted_files(repo), listing
    assert set(owners.values()) == {"gptoss"}, listing
    assert on_host(fleet, f"stat -c %U {CACHE}/blobs {MARKER}").split() == ["gptoss", "gptoss"]
    # the gated mirror's token: a 0600 file of the service user's, and in no output
    assert on_host(fleet, f"stat -c '%a %U' {HF_HOME}/token").split() == ["600", "gptoss"]
    for r in (runs["broken"], runs["first"], runs["second"]):
        assert TOKEN not in r.stdout + r.stderr
    env = on_host(fleet, "cat /etc/gptoss/gptoss.env").splitlines()
    assert f"HF_ENDPOINT={url}" in env and "HF_HUB_OFFLINE=1" in env and f"HF_HOME={HF_HOME}" in env, env
    got = on_host(fleet, f"sha256sum {snap}/model-00000-of-00001.safetensors").split()[0]
    assert got == hashlib.sha256(repo.files["model-00000-of-00001.safetensors"]).hexdigest()


def test_rerun_changes_nothing_and_downloads_nothing(runs):
    run = runs["second"]
    res = results(run)
    changed = [op["name"] for op in res["operations"] if op["success"]]
    assert run.returncode == 0 and res["totals"]["error"] == 0, run.stderr[-3000:]
    assert res["totals"]["success"] == 0, f"changed on re-run: {changed}"
    assert runs["second_gets"] == []


def test_doctor_finds_the_model_in_the_offline_cache(runs, fleet):
    out = on_host(fleet, "gptoss-doctor --json")
    report = json.loads(out[out.index("{"):])
    assert report["checks"].get("hf-offline-model-missing") == "ok", report["checks"]
    assert MODEL in report["facts"]["hf.offline_files"]["value"]["hub_models"]


def test_too_small_disk_fails_the_host_with_one_line_before_any_download(runs, mirror, fleet):
    _repo, log, _url, _token = mirror
    on_host(fleet, f"mkdir -p {TINY_HF_HOME} && mount -t tmpfs -o size=1m,mode=0755 tmpfs {TINY_HF_HOME}")
    try:
        log.clear()
        run = deploy(fleet, mirror, f"gptoss_hf_home={TINY_HF_HOME}")
        text = run.stdout + run.stderr
        gets = log.downloads()
        leftover = on_host(fleet, f"find {TINY_HF_HOME} -path '*/blobs/*' -o -name '.gptoss-downloaded*'")
    finally:
        on_host(fleet, f"umount {TINY_HF_HOME} && rmdir {TINY_HF_HOME}")
        restore = pyinfra(TESTBED_INVENTORY, "--limit", fleet["hosts"][0]["name"])
    assert run.returncode != 0, text[-2000:]
    host = fleet["hosts"][0]["name"]
    lines = [line for line in text.splitlines() if f"gptoss: host {host}: {TINY_HF_HOME} has " in line]
    assert lines, text[-3000:]
    line = lines[0]
    assert " GiB free, openai/gpt-oss-20b needs " in line and "fix: " in line and "gptoss_hf_home" in line, line
    assert "Traceback" not in text
    assert gets == [], f"downloaded before the space check failed: {gets}"
    assert leftover.strip() == "", f"left in {TINY_HF_HOME}: {leftover}"
    assert restore.returncode == 0, restore.stderr[-3000:]
