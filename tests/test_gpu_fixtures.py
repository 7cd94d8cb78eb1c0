"""What the real vLLM 0.26.0 printed and what the real box looked like on the GPU machine, under
our own deploy (tests/gpu/run_e2e.sh, imported with tests/gpu/import_fixtures.py): the doctor
must keep judging them the same way.

- logscan: the healthy start raises no error or warning; each deliberate failure's log is found
  by its id;
- checks: the healthy snapshot (deep) has no error finding; each broken box's snapshot has the
  finding that names its break.

Skipped, with the reason, until tests/fixtures/gpu/ holds that run's files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from import_fixtures import SECRET  # noqa: E402  (what the importer refuses, the recorded files must not hold)

# GPTOSS_GPU_FIXTURES: another directory of such files (a rehearsal with stand-ins)
FIX = Path(os.environ.get("GPTOSS_GPU_FIXTURES") or Path(__file__).resolve().parent / "fixtures" / "gpu")

LOGS = {  # log -> finding ids that must be there (any one of a set)
    "vllm-stale-env.log": [{"stale-vllm-env"}],
    "vllm-stale-backend.log": [{"attention-backend-unknown"}],
    "vllm-low-memory.log": [{"kv-cache-no-memory", "kv-cache-insufficient", "cuda-oom"}],
}
BOXES = {
    "box-dup-triton.json": "duplicate-triton",
    "box-stale-env.json": "stale-vllm-env-service",
    "box-stale-backend.json": "attention-backend-unknown",
    "box-low-memory.json": "model-memory-fit",
}


def need(name: str) -> Path:
    p = FIX / name
    if not p.is_file():
        pytest.skip(f"{p} not recorded yet: run tests/gpu/run_e2e.sh on the GPU machine (tests/gpu/README.md)")
    return p


def doctor(*args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "gptoss_doctor", *args, "--json"], capture_output=True, text=True, timeout=120)
    return r.returncode, json.loads(r.stdout)


@pytest.mark.parametrize("log", ["vllm-healthy-start.log", "vllm-healthy-warm.log", "vllm-carried.log"])
def test_healthy_real_start_raises_no_alarm(log):
    code, report = doctor("logs", str(need(log)))
    loud = [(f["id"], f["severity"]) for f in report["findings"] if f["severity"] != "info"]
    assert code == 0 and not loud, loud
    assert "startup-complete" in {f["id"] for f in report["findings"]}


@pytest.mark.parametrize("log, wanted", LOGS.items())
def test_each_real_failure_log_is_named(log, wanted):
    _, report = doctor("logs", str(need(log)))
    ids = {f["id"] for f in report["findings"]}
    for any_of in wanted:
        assert ids & any_of, f"{log}: {sorted(ids)} has none of {sorted(any_of)}"


def test_healthy_real_box_has_no_error_or_warning():
    code, report = doctor("check", "--from", str(need("box-healthy.json")))
    loud = [(f["id"], f["severity"]) for f in report["findings"] if f["severity"] in ("error", "warning")]
    assert code == 0 and not loud, loud
    facts = report["facts"]
    assert facts["torch.build"]["value"]["version"] == "2.11.0+cu130"
    assert facts["vllm.install"]["value"]["version"] == "0.26.0"
    assert facts["service.manager"]["value"]["manager"] == "supervisor"  # no systemd on that machine
    deep = facts["deep"]["value"]
    assert all(deep[step]["ok"] for step in ("torch_import", "cuda_init", "matmul", "triton_kernel")), deep


@pytest.mark.parametrize("box, finding", BOXES.items())
def test_each_real_broken_box_is_named(box, finding):
    code, report = doctor("check", "--from", str(need(box)))
    ids = {f["id"] for f in report["findings"]}
    assert finding in ids, sorted(ids)


@pytest.mark.parametrize("run, finding", [("pyinfra-stale-backend.txt", "attention-backend-unknown"),
                                          ("pyinfra-low-memory.txt", "model-memory-fit")])
def test_the_deploys_failed_gate_names_the_doctors_finding(run, finding):
    """The deploy's own health gate, on the real box, said why in one line: the doctor's finding."""
    text = need(run).read_text()
    gate = [line for line in text.splitlines() if "gptoss health:" in line]
    assert gate and finding in gate[-1], gate


def test_nothing_secret_was_recorded():
    need("results.json")
    leaks = [p.name for p in FIX.iterdir() if p.is_file() and SECRET.search(p.read_text(errors="replace"))]
    assert not leaks, leaks


def test_the_carried_caches_were_unpacked_by_the_deploy_before_the_start():
    """gptoss_jit_cache on the real box: the archive went up and was unpacked, then the service
    started and passed the gate (the deploy's exit 0 is in results-carried.json)."""
    text = need("pyinfra-carried.txt").read_text()
    ops = [line for line in text.splitlines() if line.strip().startswith("gptoss JIT caches |")]
    assert len(ops) == 2 and all(line.split()[-3] == "1" for line in ops), ops  # the Success column: each changed the host
    rows = {r["step"]: r for r in json.loads(need("results-carried.json").read_text())}
    assert rows["ready-carried"]["deploy_exit"] == 0
