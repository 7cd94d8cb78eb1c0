"""The production-mode run on the lent H200 (tests/gpu/run_e2e.sh PHASES=cold,serve then compare;
tests/fixtures/gpu/production/, RECORDING.md there): real vLLM 0.26.0 under our deploy with CUDA
graphs on, beside bare vLLM and the recipe's flags on the same box.

- logscan: every real start of that run (ours cold and warm, bare, recipe) is healthy to the doctor;
- checks: the live box's snapshot has no error finding;
- the doctor's reading of the installed vLLM's routes (the `vllm.http_surface` fact collected on
  that box) agrees with what the routes answered there without the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import subprocess
import sys

from gptoss_doctor import logscan
from gptoss_doctor.checks.exposure import open_routes

FIX = Path(__file__).resolve().parent / "fixtures" / "gpu" / "production"
STARTS = ["vllm-healthy-start.log", "vllm-bench-bare.log", "vllm-bench-recipe.log"]
# The warm restart's log was cut at 127 s, still capturing CUDA graphs (145 of 147 sizes): a start
# under way, which must raise no alarm either.
UNDER_WAY = "vllm-warm-production.log"


def scan(name: str):
    with open(FIX / name, newline="") as f:
        return logscan.scan(logscan.split_lines(f.read()))


@pytest.mark.parametrize("name", STARTS)
def test_each_real_production_start_is_healthy_to_the_log_triage(name):
    findings = scan(name)
    assert not [f.id for f in findings if f.severity in ("error", "warning")]
    assert "startup-complete" in {f.id for f in findings}


def test_a_production_start_still_capturing_cuda_graphs_raises_no_alarm():
    findings = scan(UNDER_WAY)
    assert not [f.id for f in findings if f.severity in ("error", "warning")]
    assert "startup-complete" not in {f.id for f in findings}


def test_the_live_production_box_has_no_error_finding():
    run = subprocess.run([sys.executable, "-m", "gptoss_doctor", "check", "--from", str(FIX / "box-healthy.json"), "--json"],
                         capture_output=True, text=True)
    report = json.loads(run.stdout)
    assert run.returncode == 0, run.stderr
    assert not [f["id"] for f in report["findings"] if f["severity"] == "error"]


def test_the_doctors_reading_of_the_routes_matches_what_answered_without_the_key():
    facts = json.loads((FIX / "box-healthy.json").read_text())["facts"]
    surface = facts["vllm.http_surface"]["value"]
    sure, maybe = open_routes(surface, api_key_set=True, flags={}, environ={})
    said_open = {r["path"] for r in sure + maybe}
    guarded = tuple(surface["guard"]["prefixes"])
    measured = [json.loads(line) for line in (FIX / "routes-without-key.jsonl").read_text().splitlines()]
    assert len(measured) >= 10
    for probe in measured:
        path, status = probe["path"], probe["status_without_key"]
        if path.startswith(guarded):
            assert status == 401, probe  # vLLM's own key check stopped it
        else:
            # the handler ran (200, or 4xx/5xx from the handler itself): the doctor must list it as open
            assert status not in (401, 404, 405), probe
            assert path in said_open, f"{path} answered {status} without the key, the doctor did not name it"
