"""The real-failure log corpus (tests/fixtures/log_corpus): every entry is well-formed data.

Only data validity lives here. How well the doctor triages the corpus (named, silent, false
alarms) is measured by bench/triage_corpus.py, whose output is quoted, not asserted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gptoss_doctor import logscan

CORPUS = Path(__file__).parent / "fixtures" / "log_corpus"
FIXTURES = Path(__file__).parent / "fixtures" / "logs"
SPLITS = ("dev", "held")
LOGS = sorted(p for split in SPLITS for p in (CORPUS / split).glob("*.log"))

# The NEW family ids of the cause list shared by the log helpers (the lead's LOG_FAMILIES note):
# rules for them may not exist yet, so they are known here besides the signature table's ids.
# "vllm-failed" is left out on purpose: it is the engine's fallback, never a cause.
FAMILY_IDS = frozenset({
    "gpu-memory-held-by-others", "host-oom-killed",
    "model-path-missing", "model-files-permission-denied", "hf-gated-or-unauthorized",
    "hf-unreachable", "model-files-corrupt",
    "jit-build-failed", "ninja-missing", "nvcc-missing", "ptxas-arch-unsupported",
    "cuda-runtime-error", "hip-runtime-error", "nvml-driver-mismatch",
    "gpu-capability-too-low", "moe-backend-unsupported",
    "python-module-missing", "import-symbol-mismatch", "package-version-conflict",
    "cuda-fork-reinit", "multiproc-worker-died",
    "vllm-config-invalid",
    "harmony-encoding-failed", "tool-server-failed", "mxfp4-unsupported",
})
VENDORS = {"nvidia", "rocm", "other"}
KEYS = {"source", "cause", "cause_text", "vllm", "vendor", "split", "failed_start", "note"}

# Credentials by their published shapes: Hugging Face, OpenAI, GitHub, AWS access keys.
SECRET = re.compile(r"\b(hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{36,}"
                    r"|github_pat_[A-Za-z0-9_]{20,}|AKIA[0-9A-Z]{16})\b")
# This workplace's own paths (a report's /workspace/... is the reporter's, and fine).
LOCAL_PATH = re.compile(r"/work/(wt|main|shared|\.library|\.mirror)\b|/tmp/corpus-")
URL = re.compile(r"https://\S+?(?=[\s'\")]|$)")


def _meta(log: Path) -> dict:
    return json.loads(log.with_suffix(".json").read_text(encoding="utf-8"))


def _urls(text: str) -> set[str]:
    return {u.rstrip(".,;") for u in URL.findall(text)}


def known_ids() -> set[str]:
    return {s.id for s in logscan.load_signatures()} | FAMILY_IDS


def test_corpus_is_not_empty_and_every_file_has_its_pair():
    assert LOGS, "no corpus logs"
    for split in SPLITS:
        stems = {p.stem for p in (CORPUS / split).iterdir() if p.suffix in (".log", ".json")}
        for stem in stems:
            assert (CORPUS / split / f"{stem}.log").exists(), f"{split}/{stem}.json has no .log"
            assert (CORPUS / split / f"{stem}.json").exists(), f"{split}/{stem}.log has no sidecar"


def test_a_name_is_in_one_split_only():
    dev = {p.name for p in (CORPUS / "dev").glob("*.log")}
    held = {p.name for p in (CORPUS / "held").glob("*.log")}
    assert not dev & held


@pytest.mark.parametrize("log", LOGS, ids=[f"{p.parent.name}/{p.stem}" for p in LOGS])
def test_sidecar(log):
    meta = _meta(log)
    assert KEYS <= meta.keys(), f"missing {sorted(KEYS - meta.keys())}"
    assert re.match(r"[ab]-[a-z0-9.]+(-[a-z0-9.]+)*$", log.stem), "name: a-/b- prefix, lower-case words joined by -"
    assert meta["source"].startswith("https://"), "source must be a public https URL"
    assert meta["split"] == log.parent.name
    assert meta["vendor"] in VENDORS
    assert isinstance(meta["failed_start"], bool)
    assert meta["cause_text"].strip(), "the cause as the thread states it"
    assert isinstance(meta["note"], str) and str(meta["vllm"]).strip()
    cause = meta["cause"]
    if cause == "healthy":
        assert meta["failed_start"] is False
    else:
        assert cause in known_ids(), f"unknown cause id {cause!r} (see the signature table and FAMILY_IDS)"


@pytest.mark.parametrize("log", LOGS, ids=[f"{p.parent.name}/{p.stem}" for p in LOGS])
def test_log_text(log):
    raw = log.read_bytes()
    text = raw.decode("utf-8")  # must be UTF-8
    assert text.strip(), "empty log"
    assert len(raw) < 256 * 1024, "an excerpt, not a whole dump"
    both = text + log.with_suffix(".json").read_text(encoding="utf-8")
    assert not SECRET.search(both), f"key-shaped secret: {SECRET.search(both).group(0)[:8]}..."
    assert not LOCAL_PATH.search(both), f"local path of this machine: {LOCAL_PATH.search(both).group(0)}"


def test_corpus_logs_are_new():
    """A corpus log comes from a thread that tests/fixtures/logs did not already use."""
    used = set()
    for side in FIXTURES.glob("*.json"):
        used |= _urls(json.loads(side.read_text(encoding="utf-8")).get("source", ""))
    for log in LOGS:
        again = _urls(_meta(log)["source"]) & used
        assert not again, f"{log.name}: source already used by tests/fixtures/logs: {again}"


def test_held_share():
    """About 40% is held aside; the exact share drifts as logs are added, within these bounds."""
    held = sum(1 for p in LOGS if p.parent.name == "held")
    assert 0.25 <= held / len(LOGS) <= 0.55, f"{held} of {len(LOGS)} held"
