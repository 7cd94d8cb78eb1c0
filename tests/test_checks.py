"""The doctor's checks, driven by data.

Each file tests/fixtures/checks/<check-id>/<case>.json names a base snapshot from
tests/fixtures/snapshots/, changes some facts, and lists the findings that check (and only that
check) must report: `[]` is a false-alarm case, which must also have *run* (status "ok", not
skipped). See tests/fixtures/checks/README.md for the case format.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gptoss_doctor import checks
from gptoss_doctor.checks import UnknownCheckError, run_checks, run_one, select
from gptoss_doctor.findings import REGISTRY, SEVERITIES, CheckSpec, Finding, Fix
from gptoss_doctor.snapshot import FACT_KEYS, Snapshot, load_snapshot

FIXTURES = Path(__file__).parent / "fixtures"
BASES = FIXTURES / "snapshots"
CASES = sorted((FIXTURES / "checks").glob("*/*.json"))
KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
CASE_KEYS = {"snapshot", "patch", "merge", "append", "expect", "status", "_comment"}


def load_base(name: str) -> dict:
    path = BASES / f"{name}.json"
    assert path.is_file(), f"case names base snapshot {name!r}, but {path} does not exist"
    return load_snapshot(path.read_text(), str(path)).data


def apply_case(base: dict, case: dict, where: str) -> Snapshot:
    """The base snapshot with the case's changes: patch replaces facts, merge updates a dict
    value's keys (null deletes one), append extends a list value."""
    data = copy.deepcopy(base)
    facts = data["facts"]
    for op in ("patch", "merge", "append"):
        for key in case.get(op, {}):
            assert key in FACT_KEYS, f"{where}: {op} names {key!r}, which is not in snapshot.FACT_KEYS"
    for key, fact in case.get("patch", {}).items():
        if fact is None:
            facts.pop(key, None)
        else:
            assert isinstance(fact, dict) and len({"value", "absent", "failed"} & fact.keys()) == 1, (
                f"{where}: patch[{key!r}] must be one fact state: {{'value': ...}}, {{'absent': why}} or {{'failed': error}}"
            )
            facts[key] = fact
    for key, changes in case.get("merge", {}).items():
        target = facts[key]["value"]
        assert isinstance(target, dict), f"{where}: merge[{key!r}]: the base's value is not an object"
        for k, val in changes.items():
            if val is None:
                target.pop(k, None)
            else:
                target[k] = val
    for key, items in case.get("append", {}).items():
        target = facts[key]["value"]
        assert isinstance(target, list), f"{where}: append[{key!r}]: the base's value is not a list"
        target.extend(items)
    return Snapshot(data)


def case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def assert_well_formed(finding: Finding, spec: CheckSpec, where: str) -> None:
    assert finding.title.strip(), f"{where}: empty title"
    assert isinstance(finding.evidence, dict) and finding.evidence.get("sources"), (
        f"{where}: evidence must say what was seen and where (a 'sources' entry)"
    )
    assert finding.fix.text.strip(), f"{where}: a fix needs its text"
    assert finding.links, f"{where}: a finding needs at least one source link"
    for cmd in finding.fix.commands:
        assert cmd.strip() and "None" not in cmd, f"{where}: malformed fix command {cmd!r}"
    json.dumps(finding.to_dict())  # the report serialises it


@pytest.mark.parametrize("path", CASES, ids=case_id)
def test_case(path: Path, kb):
    case = json.loads(path.read_text())
    where = case_id(path)
    assert set(case) <= CASE_KEYS, f"{where}: unknown keys {sorted(set(case) - CASE_KEYS)}"
    spec = REGISTRY.get(path.parent.name)
    assert spec is not None, f"{where}: directory {path.parent.name!r} names no registered check"
    snap = apply_case(load_base(case["snapshot"]), case, where)

    findings, status = run_one(snap, kb, spec)

    got = sorted((f.id, f.severity) for f in findings)
    want = sorted((e["id"], e["severity"]) for e in case["expect"])
    assert got == want, f"{where}: status {status!r}; findings: {[f.title for f in findings]}"
    for f in findings:
        assert_well_formed(f, spec, where)
    expected_status = case.get("status") or (want and SEVERITIES[min(SEVERITIES.index(s) for _, s in want)]) or "ok"
    assert status.startswith(expected_status), f"{where}: status {status!r}, expected {expected_status!r}"


def test_every_check_has_a_true_and_a_false_alarm_case():
    positive, negative = set(), set()
    for path in CASES:
        case = json.loads(path.read_text())
        if case["expect"]:
            positive.add(path.parent.name)
        elif not case.get("status"):  # a false-alarm case must have run, not been skipped
            negative.add(path.parent.name)
    missing = [
        f"{cid}: " + ", ".join(k for k, have in (("a true case", cid in positive), ("a false-alarm case", cid in negative)) if not have)
        for cid in REGISTRY
        if cid not in positive or cid not in negative
    ]
    assert not missing, "checks without cases: " + "; ".join(missing)


def test_ids_are_unique_kebab_case_and_documented():
    assert len(REGISTRY) >= 29
    for cid, spec in REGISTRY.items():
        assert cid == spec.id and KEBAB.match(cid), cid
        assert spec.category and spec.title, cid
        assert set(spec.needs) <= FACT_KEYS.keys(), f"{cid} needs unknown facts {set(spec.needs) - FACT_KEYS.keys()}"
        # `gptoss-doctor explain ID` prints the docstring: it must say what, why, fix and source
        assert "Why:" in spec.explain and "Fix:" in spec.explain and "Source:" in spec.explain, cid
    for required in ("duplicate-triton", "torch-cuda-suffix", "sinks-float32", "bad-cuda-home"):
        assert required in REGISTRY


@pytest.mark.parametrize("base", sorted(p.stem for p in BASES.glob("*.json")))
def test_base_snapshots_never_crash_a_check_and_hand_made_ones_are_healthy(base, kb):
    """No check crashes on any base. A hand-made base (it says so in "_comment") is a healthy
    box: nothing is found there, so each case's finding comes from its own change. Recorded
    bases are what a real box showed; only their cases say what is expected."""
    data = load_base(base)
    findings, statuses = run_checks(Snapshot(data), kb)
    assert not [(k, s) for k, s in statuses.items() if s.startswith("crashed")]
    if "_comment" in data:
        assert [(f.id, f.title) for f in findings] == []


def _spec(fn, needs=()) -> CheckSpec:
    return CheckSpec(id="probe", severity="warning", title="t", category="test", needs=tuple(needs), fn=fn, explain="")


def test_run_one_reports_skipped_crashed_and_worst_severity(kb):
    snap = Snapshot({"facts": {"host.shm_bytes": {"failed": "df timed out"}, "host.hostname": {"value": "x"}}})

    def boom(snap, kb):
        raise KeyError("gpu")

    def not_here(snap, kb):
        raise checks.NotApplicable("no Blackwell GPU")

    def two(snap, kb):
        yield Finding("probe", "info", "i", {"sources": {}}, Fix("t"))
        yield Finding("probe", "warning", "w", {"sources": {}}, Fix("t"))

    assert run_one(snap, kb, _spec(two, needs=["host.shm_bytes"]))[1] == "skipped: host.shm_bytes could not be collected (df timed out)"
    assert run_one(snap, kb, _spec(two, needs=["nvidia.gpus"]))[1] == "skipped: nvidia.gpus absent (not collected)"
    assert run_one(snap, kb, _spec(boom))[1] == "crashed: KeyError: 'gpu'"
    assert run_one(snap, kb, _spec(not_here))[1] == "skipped: no Blackwell GPU"
    found, status = run_one(snap, kb, _spec(two, needs=["host.hostname"]))
    assert status == "warning" and len(found) == 2


def test_only_selects_by_id_or_category_and_rejects_unknown_names(kb):
    assert [s.id for s in select(["duplicate-triton"])] == ["duplicate-triton"]
    security = {s.id for s in select(["security"])}
    assert "api-without-key" in security and "duplicate-triton" not in security
    findings, statuses = run_checks(Snapshot(load_base("h200-vllm-0.33.0")), kb, only=["duplicate-triton", "bad-cuda-home"])
    assert set(statuses) == {"duplicate-triton", "bad-cuda-home"}
    with pytest.raises(UnknownCheckError, match="'no-such-check'"):
        run_checks(Snapshot({"facts": {}}), kb, only=["no-such-check"])


def test_empty_snapshot_skips_or_passes_without_crashing(kb):
    """A snapshot with nothing collected (another OS, a broken collector) never crashes a check."""
    _, statuses = run_checks(Snapshot({"facts": {}}), kb)
    assert not [(k, s) for k, s in statuses.items() if s.startswith("crashed")]


JUNK = (None, "garbage", True, ["x"], {"x": 1})


def test_facts_of_unexpected_shape_never_crash_a_check(kb):
    """A snapshot from another collector version, or edited by hand, may hold any JSON in a
    fact: every check reads it as absent or junk (skipped / ok), none crashes."""
    data = load_base("b200x8-vllm-0.10.1-gptoss")  # every fact valued: service, manifest, fabric manager
    crashed = set()
    targets = [(key, None) for key in data["facts"]] + [
        (key, sub) for key, fact in data["facts"].items() if isinstance(fact.get("value"), dict) for sub in fact["value"]
    ]
    for key, sub in targets:
        for junk in JUNK:
            d = copy.deepcopy(data)
            if sub is None:
                d["facts"][key] = {"value": junk}
            else:
                d["facts"][key]["value"][sub] = junk
            _, statuses = run_checks(Snapshot(d), kb)
            crashed |= {(cid, key, sub, s) for cid, s in statuses.items() if s.startswith("crashed")}
    assert not crashed, sorted(crashed)[:10]


def _run_env_file_fix(finding: Finding, env: dict, env_file: Path) -> dict:
    """Run a finding's fix commands (those that edit the EnvironmentFile) with bash on a real
    copy of the file; return the file as systemd would read it afterwards."""
    from gptoss_doctor.collect.service import parse_env_file

    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    for cmd in finding.fix.commands:
        if cmd.startswith("systemctl"):
            continue
        subprocess.run(["bash", "-c", cmd.replace("/etc/gptoss/gptoss.env", str(env_file))], check=True)
    return parse_env_file(env_file.read_text())


@pytest.mark.parametrize("case", [
    "sinks-float32/gptoss-b200-without-trtllm-vars",
    "stale-vllm-env-service/upstream-recipe-moe-var-on-0-33",
    "recipe-env-for-other-gpu/aiter-on-h100",
    "v0-engine-forced/use-v1-0",
    "attention-backend-unknown/new-name-in-env-on-0-10-1",
    "attention-backend-no-sinks/flash-attn-env-on-b200-gptoss-wheel",
    "python-tool-backend-ignored/guide-uv-value",
])
def test_env_file_fixes_fix_the_finding(case, kb, tmp_path):
    """The copy-pastable commands really repair the EnvironmentFile: run them on a real file,
    re-read it, and the same check finds nothing."""
    spec = REGISTRY[case.split("/")[0]]
    data = json.loads((FIXTURES / "checks" / f"{case}.json").read_text())
    snap = apply_case(load_base(data["snapshot"]), data, case)
    (finding,) = run_one(snap, kb, spec)[0]
    fixed_env = _run_env_file_fix(finding, snap.get("service")["environment"], tmp_path / "gptoss.env")
    snap.get("service")["environment"] = fixed_env
    findings, status = run_one(snap, kb, spec)
    assert findings == [] and status == "ok", [f.title for f in findings]


def _standins_build():
    """tests/standins/build.py (stand-in wheels with real names and versions), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("standins_build", Path(__file__).parent / "standins" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_duplicate_triton_fix_repairs_a_real_uv_venv(kb, tmp_path):
    """End to end on a real venv made with uv: two distributions own triton/, the collector sees
    them, the check fires, its fix commands (run with bash, against a local wheel directory in
    place of the package index) leave one Triton whose files are all there, and the check passes."""
    from gptoss_doctor.collect import Env, collect

    build = _standins_build()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build.build_triton(wheels, "triton", "3.3.1")
    build.build_triton(wheels, "pytorch-triton", "3.4.0+git11ec6354")
    venv = tmp_path / "venv"
    offline = {"UV_OFFLINE": "1", "UV_FIND_LINKS": str(wheels), "UV_NO_CACHE": "1", "PATH": os.environ["PATH"]}
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=offline)
    py = str(venv / "bin" / "python")
    for pin in ("triton==3.3.1", "pytorch-triton==3.4.0+git11ec6354"):  # one at a time, as people do
        subprocess.run(["uv", "pip", "install", "-q", "--python", py, pin], check=True, env=offline)

    def diagnose():
        snap = collect(Env(environ={"PATH": "/usr/bin:/bin"}), venv_path=str(venv))
        # this venv has no vLLM and no manifest: the torch nightly rule decides which Triton stays
        # (a deploy on the machine running the tests must not leak in: Env's root is the real /)
        snap.set("manifest", {"absent": "test: the venv is judged on its own"})
        snap.set("torch.build", {"value": {"version": "2.7.1+cu128", "cuda": "12.8", "hip": None, "path": "-"}})
        return run_one(snap, kb, REGISTRY["duplicate-triton"])

    (finding,), status = diagnose()
    assert status == "error" and finding.evidence["keep"] == "triton"
    for cmd in finding.fix.commands:
        subprocess.run(["bash", "-c", cmd], check=True, env=offline)
    findings, status = diagnose()
    assert (findings, status) == ([], "ok")
    sp = next(venv.glob("lib/python3*/site-packages"))
    assert (sp / "triton" / "_version.py").read_text().count("3.3.1") == 1  # the kept one's files, complete


def test_recommendations_never_name_a_sites_stack(kb):
    """driver-too-old offers the newest stack this driver runs: with a site stack loaded that is
    newer and fits the driver (the testbed's broken stack, a pinned nightly), the offer is still a
    shipped stack; the site's stack is for the hosts deployed from it."""
    from gptoss_doctor.knowledge import load as load_kb

    site = (FIXTURES / "checks" / "site-stack-file-invalid" / "valid-site-stack.json")
    text = json.loads(site.read_text())["patch"]["stacks.extra"]["value"][0]["text"]
    text = (text.replace('"vllm-0.33.0-site"', '"vllm-0.99.0-cu129"').replace('vllm = "0.33.0"', 'vllm = "0.99.0"')
            .replace('"vllm==0.33.0"', '"vllm==0.99.0"').replace('"+cu130"', '"+cu129"').replace('cuda = "13.0"', 'cuda = "12.9"')
            .replace('"cu130"', '"cu129"').replace('min_driver = "580.95.05"', 'min_driver = "575.51.03"'))
    with_site = load_kb(extra_stack_texts={"/etc/gptoss/stacks.d/site.toml": text})
    case = json.loads((FIXTURES / "checks" / "driver-too-old" / "cu130-torch-on-575-driver.json").read_text())
    snap = apply_case(load_base(case["snapshot"]), case, "driver-too-old")
    (plain,), _ = run_one(snap, kb, REGISTRY["driver-too-old"])
    (site_loaded,), _ = run_one(snap, with_site, REGISTRY["driver-too-old"])
    assert "vllm-0.99.0-cu129" in with_site.stacks and "vllm-0.99.0-cu129" not in " ".join(site_loaded.fix.commands)
    assert site_loaded.fix.commands == plain.fix.commands and site_loaded.fix.commands


@pytest.mark.parametrize("case, says, never", [
    ("timeout-during-triton-compile", "did not finish in 30 s", "reinstall"),
    ("cpu-torch-cuda-init", "CPU-only build: install the CUDA build", "driver"),
    ("libcudart-13-missing", "reinstall it from the stack's index", "timed out"),
])
def test_deep_fixes_follow_the_step_and_the_way_it_failed(case, says, never, kb):
    """--deep's fix names what failed: a time limit is not "reinstall torch", a CPU-only torch
    is "install the CUDA build", a missing CUDA runtime is a reinstall."""
    data = json.loads((FIXTURES / "checks" / "deep-probe-failed" / f"{case}.json").read_text())
    snap = apply_case(load_base(data["snapshot"]), data, case)
    (finding,), _ = run_one(snap, kb, REGISTRY["deep-probe-failed"])
    assert says in finding.fix.text and never not in finding.fix.text.lower(), finding.fix.text
    if case != "timeout-during-triton-compile":
        assert any("--reinstall-package torch" in c for c in finding.fix.commands), finding.fix.commands
    else:
        assert finding.fix.commands == ["gptoss-doctor --deep --deep-timeout 600"]


@pytest.mark.parametrize("key", ["service.port", "service.access", "model.disk", "nvidia.compute_apps"])
def test_live_state_facts_of_unexpected_shape_never_crash_a_check(key, kb):
    """The live-state facts hand-edited or from another version: junk as the value, as each
    field, and as an item of each list: every check skips or passes, none crashes."""
    data = load_base("h200-vllm-0.33.0")
    variants = []
    value = data["facts"][key]["value"]
    for junk in JUNK + (5,):
        variants.append(lambda v, j=junk: j)
        if isinstance(value, dict):
            for sub in value:
                variants.append(lambda v, s=sub, j=junk: {**v, s: j})
                if isinstance(value[sub], list):
                    variants.append(lambda v, s=sub, j=junk: {**v, s: [*v[s], j]})
        if isinstance(value, list):
            variants.append(lambda v, j=junk: [*v, j])
            for field in value[0] if value and isinstance(value[0], dict) else ():
                variants.append(lambda v, f=field, j=junk: [{**v[0], f: j, "is_service": False}, *v[1:]])
    crashed = []
    for make in variants:
        d = copy.deepcopy(data)
        d["facts"][key] = {"value": make(copy.deepcopy(value))}
        _, statuses = run_checks(Snapshot(d), kb)
        crashed += [(cid, s) for cid, s in statuses.items() if s.startswith("crashed")]
    assert not crashed, crashed[:5]
