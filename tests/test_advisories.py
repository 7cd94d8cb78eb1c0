"""The advisories knowledge (doctor/gptoss_doctor/knowledge/advisories.toml), its loader, and
advisories_for(): what a deploy asks before installing a stack and the doctor asks on a box."""

from __future__ import annotations

import pytest
from packaging.version import Version

from gptoss_doctor import advisories as adv

# What the deploy puts on the command line (deploys/gptoss_deploy/config.py serve_argv; the key is
# in the EnvironmentFile, so api_key_set=True is passed separately).
DEPLOY_ARGV = ["/opt/gptoss/current/bin/vllm", "serve", "openai/gpt-oss-120b", "--host", "127.0.0.1", "--port", "8000",
               "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9", "--tool-call-parser", "openai",
               "--enable-auto-tool-choice"]
GOOD_ROW = """
[[advisory]]
id = "GHSA-wr9h-g72x-mwhm"
aliases = ["CVE-2025-59425"]
title = "t"
affected = "<0.11.0"
fixed = "0.11.0"
severity = "high"
condition = { kind = "api-key" }
gpt_oss = "yes"
why = "w"
source = "https://github.com/advisories/GHSA-wr9h-g72x-mwhm"
"""


def ids(found) -> set[str]:
    return {a.advisory.id for a in found}


def test_the_shipped_file_loads_and_every_row_has_a_public_source():
    rows = adv.load()
    assert len(rows) >= 15
    assert all(r.source.startswith("https://") for r in rows)
    assert all(r.id in r.source or any(a in r.source for a in r.aliases) for r in rows)  # the page is the row's own


def test_the_decoded_file_is_cached_and_still_validated(tmp_path, monkeypatch):
    """A second load of the same bytes reads the decoded TOML from the cache (no TOML parse) and
    validates it again; changed bytes, or a damaged cache file, are decoded afresh."""
    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "advisories.toml"
    f.write_text(GOOD_ROW)
    decoded = []
    real = adv._decode
    monkeypatch.setattr(adv, "_decode", lambda text, file: decoded.append(file) or real(text, file))
    first = adv.load.__wrapped__(str(f))
    assert [a.id for a in first] == ["GHSA-wr9h-g72x-mwhm"] and decoded == [str(f)]
    assert adv.load.__wrapped__(str(f)) == first and len(decoded) == 1
    (stored,) = (tmp_path / "cache").glob("advisories-*.json")
    stored.write_bytes(b"{not json")
    assert adv.load.__wrapped__(str(f)) == first and len(decoded) == 2
    f.write_text(GOOD_ROW.replace('severity = "high"', 'severity = "urgent"'))  # validated, not just decoded
    with pytest.raises(adv.AdvisoryError, match="severity"):
        adv.load.__wrapped__(str(f))
    assert len(decoded) == 3


@pytest.mark.parametrize("change,field", [
    (("affected = \"<0.11.0\"", "affected = \"<<0.11\""), "affected"),
    (("fixed = \"0.11.0\"", "fixed = \"0.10.0\""), "fixed"),
    (("severity = \"high\"", "severity = \"urgent\""), "severity"),
    (("kind = \"api-key\"", "kind = \"flag\""), "condition.flag"),
    (("kind = \"api-key\"", "kind = \"moon-phase\""), "condition.kind"),
    (("gpt_oss = \"yes\"", "gpt_oss = \"maybe\""), "gpt_oss"),
    (("source = \"https://", "source = \"http://"), "source"),
    (("id = \"GHSA-wr9h-g72x-mwhm\"", "id = \"GHSA-nope\""), "id"),
    (("why = \"w\"", "why = \"w\"\nnote = \"x\""), "unknown field"),
])
def test_a_bad_row_is_one_error_naming_file_row_and_field(change, field):
    text = GOOD_ROW.replace(*change)
    assert text != GOOD_ROW
    with pytest.raises(adv.AdvisoryError) as err:
        adv.parse(text, "site.toml")
    msg = str(err.value)
    assert msg.startswith("site.toml: advisory 1 (") and field in msg and "\n" not in msg


def test_a_good_row_parses():
    (row,) = adv.parse(GOOD_ROW, "x.toml")
    assert row.affects("0.10.1") and not row.affects("0.11.0") and row.affects("0.10.1+gptoss")


def test_deploy_on_0_10_1_is_warned_about_the_key_bypass():
    found = adv.advisories_for("0.10.1", DEPLOY_ARGV, api_key_set=True)
    assert {"GHSA-94f4-hr76-p5j6", "GHSA-wr9h-g72x-mwhm", "GHSA-3mwp-wvh9-7528"} <= ids(found)
    assert found[0].advisory.severity == "critical"  # worst first
    assert "GHSA-4r2x-xpjr-7cvv" not in ids(found)  # video RCE: gpt-oss is text-only
    assert "GHSA-79j6-g2m3-jgfw" not in ids(found)  # qwen3_coder parser: the deploy uses openai


def test_the_key_is_read_from_the_command_line_or_the_environment():
    assert "GHSA-94f4-hr76-p5j6" not in ids(adv.advisories_for("0.20.2", DEPLOY_ARGV))
    assert "GHSA-94f4-hr76-p5j6" in ids(adv.advisories_for("0.20.2", DEPLOY_ARGV, environ={"VLLM_API_KEY": "k"}))
    assert "GHSA-94f4-hr76-p5j6" in ids(adv.advisories_for("0.20.2", [*DEPLOY_ARGV, "--api-key", "k"]))


def test_a_route_condition_is_unknown_before_install_and_judged_after():
    before = {a.advisory.id: a for a in adv.advisories_for("0.26.0", DEPLOY_ARGV, api_key_set=True)}
    assert before["GHSA-4xqp-c3mv-qff7"].holds is None
    without = adv.advisories_for("0.26.0", DEPLOY_ARGV, api_key_set=True, routes=["/v1/completions"])
    assert "GHSA-4xqp-c3mv-qff7" not in ids(without)
    with_route = adv.advisories_for("0.26.0", DEPLOY_ARGV, api_key_set=True, routes=["/inference/v1/generate"])
    assert {a.advisory.id: a.holds for a in with_route}["GHSA-4xqp-c3mv-qff7"] is True


def test_flags_and_topology_conditions():
    assert "GHSA-79j6-g2m3-jgfw" in ids(adv.advisories_for("0.10.1", ["serve", "m", "--tool-call-parser", "qwen3_coder"]))
    assert "GHSA-mcmc-2m55-j8jj" in ids(adv.advisories_for("0.12.0", ["serve", "m", "--enable-prompt-embeds"]))
    assert "GHSA-mcmc-2m55-j8jj" not in ids(adv.advisories_for("0.12.0", ["serve", "m"]))
    assert "GHSA-9pcc-gvx5-r5wm" in ids(adv.advisories_for("0.9.2", ["serve", "m", "--headless", "--nnodes", "2"]))
    assert "GHSA-9pcc-gvx5-r5wm" not in ids(adv.advisories_for("0.9.2", ["serve", "m"]))
    assert "GHSA-hj4w-hm2g-p6w5" in ids(adv.advisories_for("0.8.4", {"kv-transfer-config": "{}"}))
    assert "GHSA-4r2x-xpjr-7cvv" in ids(adv.advisories_for("0.14.0", [], multimodal=True))


def test_rows_agree_with_their_gpt_oss_answer():
    """Judged with the deploy's own command line and a key, inside each row's range: a "yes" row
    applies, a "no" or "conditional" row does not (its flag/topology is not there)."""
    for row in adv.load():
        version = next((v for v in ("0.5.5", "0.8.4", "0.9.2", "0.10.1.1", "0.10.0", "0.10.1", "0.10.2", "0.11.0",
                                    "0.12.0", "0.14.0", "0.19.0", "0.20.2", "0.23.0", "0.26.0", "0.28.0", "0.30.0")
                        if row.affects(v)), None)
        assert version, row.id
        found = adv.advisories_for(version, DEPLOY_ARGV, api_key_set=True, advisories=[row])
        assert bool(found) == (row.gpt_oss == "yes"), (row.id, version)


def test_first_clear_names_the_first_version_past_every_applicable_advisory():
    versions = ["0.10.1", "0.20.2", "0.26.0", "0.28.0", "0.33.0"]
    assert adv.first_clear(versions, DEPLOY_ARGV, api_key_set=True) == "0.33.0"
    assert all(Version(r.fixed) <= Version("0.33.0") for r in adv.load() if r.fixed)


def test_the_check_on_an_installed_stand_in_judges_the_route_from_its_source(tmp_path, kb):
    """The doctor's vllm-advisory on the stand-in 0.20.2 with a key: the key bypass applies (a
    critical: an error where vLLM listens beyond loopback, a warning behind a front on loopback),
    and /inference/v1/generate, which its source registers, makes GHSA-4xqp-c3mv-qff7 hold."""
    from test_standin_routes import install_standin

    from gptoss_doctor.checks import run_one
    from gptoss_doctor.collect.exposure import read_http_surface
    from gptoss_doctor.findings import REGISTRY
    from gptoss_doctor.snapshot import Snapshot

    surface = read_http_surface([install_standin(tmp_path, "0.20.2")])
    serve = {"model": "openai/gpt-oss-20b", "host": "127.0.0.1", "port": 8000, "api_key_set": True,
             "flags": {"host": "127.0.0.1", "port": "8000"}}
    snap = Snapshot({"facts": {"vllm.install": {"value": {"version": "0.20.2", "path": "x", "version_py": "0.20.2"}},
                               "service.serve": {"value": serve}, "vllm.http_surface": {"value": surface},
                               "service": {"value": {"environment": {"VLLM_API_KEY": "***"}}}}})
    (finding,), status = run_one(snap, kb, REGISTRY["vllm-advisory"])
    assert status == "warning" and finding.evidence["exposed"] == []
    serve.update(host="0.0.0.0")
    (finding,), status = run_one(snap, kb, REGISTRY["vllm-advisory"])
    assert status == "error" and finding.evidence["exposed"] == ["0.0.0.0:8000"]
    holds = {a["id"]: a["holds"] for a in finding.evidence["advisories"]}
    assert holds["GHSA-94f4-hr76-p5j6"] is True and holds["GHSA-4xqp-c3mv-qff7"] is True
    assert finding.evidence["upgrade_to"]  # a shipped stack past every advisory that applies


def test_warning_lines_for_the_deploy_name_id_state_fix_and_source():
    found = adv.advisories_for("0.26.0", DEPLOY_ARGV, api_key_set=True)
    lines = adv.warning_lines("0.26.0", found)
    assert len(lines) == len(found) == 2
    by_id = {line.split()[2]: line for line in lines}
    assert "may apply" in by_id["GHSA-4xqp-c3mv-qff7"] and "fixed in 0.31.0" in by_id["GHSA-4xqp-c3mv-qff7"]
    assert " applies" in by_id["GHSA-6cxc-2vcg-w5qc"] and by_id["GHSA-6cxc-2vcg-w5qc"].endswith("GHSA-6cxc-2vcg-w5qc")
    assert all("\n" not in line for line in lines)
