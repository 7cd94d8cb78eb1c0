"""Log triage: the signature table against real log excerpts, near misses and healthy starts.

tests/fixtures/logs/NAME.log is an excerpt of a real report; NAME.json names the source and the
exact set of finding ids scan() must return (see the README there).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from gptoss_doctor import logscan
from gptoss_doctor.logscan import SignatureError, load_signatures, parse_line, parse_signatures, scan, split_lines

FIXTURES = Path(__file__).parent / "fixtures" / "logs"
LOGS = sorted(FIXTURES.glob("*.log"))


def _expect(log: Path) -> dict:
    return json.loads(log.with_suffix(".json").read_text())


def _read(log: Path) -> list[str]:
    # newline="": a lone \r (progress bars) stays inside its line, as `grep -n` counts lines
    with log.open(encoding="utf-8", newline="") as f:
        return split_lines(f.read())


def _scan_file(log: Path):
    return scan(_read(log))


# --------------------------------------------------------------------------------------------
# Fixtures: every excerpt gives exactly the ids its sidecar lists
# --------------------------------------------------------------------------------------------


def test_every_fixture_has_a_sidecar_with_a_source():
    assert LOGS, "no log fixtures"
    for log in LOGS:
        meta = _expect(log)
        assert meta.get("source"), f"{log.name}: sidecar has no source"
        assert isinstance(meta.get("expect"), list), f"{log.name}: sidecar has no expect list"


@pytest.mark.parametrize("log", LOGS, ids=[p.stem for p in LOGS])
def test_fixture_ids(log):
    findings = _scan_file(log)
    assert sorted(f.id for f in findings) == sorted(_expect(log)["expect"])
    for f in findings:
        if f.id == "not-a-vllm-log":  # about the whole input, no line of it
            continue
        shown = {entry["line"] for entry in f.lines if entry["match"]}
        assert f.evidence["first_line"] in shown, f"{f.id}: first matched line not shown"
        assert f.evidence["line_numbers"] == sorted(f.evidence["line_numbers"])


def test_most_fixtures_are_real_excerpts():
    constructed = [log.name for log in LOGS if _expect(log).get("constructed")]
    assert len(LOGS) - len(constructed) >= 40, "fixtures should be real report excerpts"
    for name in constructed:  # built from the message a cited source prints: they must say so
        assert _expect(FIXTURES / name)["note"], name


def test_every_signature_is_exercised_by_a_fixture():
    expected = {i for log in LOGS for i in _expect(log)["expect"]}
    # a downstream row folds into the finding that explains it: seen there
    expected |= {d["id"] for log in LOGS for f in _scan_file(log) for d in f.evidence.get("downstream", [])}
    missing = [s.id for s in load_signatures() if s.id not in expected]
    assert not missing, f"signatures without a fixture: {missing}"


@pytest.mark.parametrize("log", [p for p in LOGS if p.stem.startswith("healthy-")],
                         ids=[p.stem for p in LOGS if p.stem.startswith("healthy-")])
def test_healthy_start_gives_no_false_alarm(log):
    findings = _scan_file(log)
    assert [f.id for f in findings if f.severity != "info"] == []
    assert "startup-complete" in {f.id for f in findings}


def test_near_misses_exist_for_the_risky_signatures():
    near = [p for p in LOGS if p.stem.startswith("near-miss-")]
    assert len(near) >= 3
    for log in near:
        assert all(f.severity == "info" for f in _scan_file(log)), log.name


# --------------------------------------------------------------------------------------------
# Prefixes: each runtime's wrapper is stripped once, the message is what is left
# --------------------------------------------------------------------------------------------

MSG = "AssertionError: Sinks must be of type float32"


@pytest.mark.parametrize(
    "raw, message, level, process",
    [
        # vLLM 0.10.x multiproc worker
        (f"(VllmWorker TP0 pid=174579) ERROR 08-05 07:31:10 [multiproc_executor.py:559] {MSG}", MSG, "ERROR", "VllmWorker TP0"),
        (f"(VllmWorker rank=1 pid=22) ERROR 08-05 07:31:10 [multiproc_executor.py:559] {MSG}", MSG, "ERROR", "VllmWorker rank=1"),
        # V1 engine core, API server, TP workers of later eras; millisecond timestamps
        (f"(EngineCore_DP0 pid=223840) ERROR 10-25 13:08:43 [core.py:708] {MSG}", MSG, "ERROR", "EngineCore_DP0"),
        (f"(Worker_TP1 pid=932460) ERROR 12-17 12:56:08.123 [gpu_worker.py:298] {MSG}", MSG, "ERROR", "Worker_TP1"),
        (f"(APIServer pid=1) {MSG}", MSG, None, "APIServer"),
        # the engine's lines relayed by the API server (llm-d images)
        (f"(APIServer pid=1) (EngineCore_DP0 pid=68) ERROR 02-06 16:34:06 [core.py:936] {MSG}", MSG, "ERROR", "EngineCore_DP0"),
        (f"(RayWorkerWrapper pid=3250, ip=192.168.16.111) ERROR 03-14 06:39:07 [worker_base.py:581] {MSG}", MSG, "ERROR", "RayWorkerWrapper"),
        # the old header without the opening bracket
        (f"ERROR 02-13 15:12:54 registry.py:299] {MSG}", MSG, "ERROR", None),
        # docker compose, with and without docker's timestamps
        (f"vllm-1  | (EngineCore_DP0 pid=269) ERROR 10-06 04:51:05 [core.py:1] {MSG}", MSG, "ERROR", "EngineCore_DP0"),
        (f"vllm-1  | 2025-08-05T10:11:12.123456789Z {MSG}", MSG, None, None),
        # journalctl -u gptoss-vllm, short and short-iso
        (f"Nov 27 10:00:00 gpu-01 vllm[123]: (APIServer pid=123) WARNING 11-27 10:00:00 [envs.py:2128] {MSG}", MSG, "WARNING", "APIServer"),
        (f"2025-11-27T10:00:00+0000 gpu-01 python3[123]: {MSG}", MSG, None, None),
        (f"авг 18 14:15:04 llm python3[28059]: (EngineCore pid=28059) ERROR 08-18 14:15:04 [core.py:1] {MSG}", MSG, "ERROR", "EngineCore"),
        (f"6月 10 16:45:05 host bash[107468]: {MSG}", MSG, None, None),
        # a terminal UI's frame, a site's own format with the pid, "^M" pasted from a CR
        (f"│ ERROR 09-27 06:46:46 engine.py:157] {MSG}        │", MSG, "ERROR", None),
        (f"2024-12-19 21:40:35 ERROR 56542 [async_llm_engine.py:64] {MSG}^M", MSG, "ERROR", None),
        # kubectl logs --timestamps / --prefix, supervisor wrappers
        (f"2026-01-22T19:54:36.819Z ERROR 01-22 11:54:36.819 [config.py:32] {MSG}", MSG, "ERROR", None),
        (f"[pod/vllm-0/vllm] {MSG}", MSG, None, None),
        (f"[2026-01-22 19:54:36] [/bin/sh]: ERROR 01-22 11:54:36.819 [config.py:32] {MSG}", MSG, "ERROR", None),
        # containerd/CRI pod logs, docker's json-file driver, journalctl -o short-monotonic, Ray's bare pid
        (f"2025-08-05T10:11:12.123456789Z stderr F (EngineCore_DP0 pid=1) ERROR 08-05 10:11:12 [core.py:1] {MSG}", MSG, "ERROR", "EngineCore_DP0"),
        ('{"log":"(APIServer pid=1) ' + MSG + '\\n","stream":"stderr","time":"2025-08-05T10:11:12.1Z"}', MSG, None, "APIServer"),
        (f"[ 8123.456789] gpu-01 vllm[123]: {MSG}", MSG, None, None),
        (f"(pid=4242) {MSG}", MSG, None, None),
        # torch.distributed rank prefix, uvicorn's level prefix
        (f"[rank0]: {MSG}", MSG, None, None),
        ("INFO:     Application startup complete.", "Application startup complete.", "INFO", None),
        # colour codes, with the ESC byte and as pasted without it
        (f"\x1b[1;36m(VllmWorker TP0 pid=1)\x1b[0;0m \x1b[31mERROR\x1b[0m 08-05 07:31:10 [a.py:1] {MSG}", MSG, "ERROR", "VllmWorker TP0"),
        (f"[1;36m(EngineCore_0 pid=4124)[0;0m ERROR 08-06 01:53:31 [core.py:718] {MSG}", MSG, "ERROR", "EngineCore_0"),
    ],
)
def test_prefix_stripping(raw, message, level, process):
    line = parse_line(7, raw + "\n")
    assert (line.message, line.level, line.process) == (message, level, process)
    assert line.number == 7 and "\x1b" not in line.text
    assert scan([raw])[0].id == ("sinks-float32" if message == MSG else "startup-complete")


def test_traceback_indentation_survives_the_prefix():
    line = parse_line(1, '(VllmWorker TP0 pid=1) ERROR 08-05 07:31:10 [multiproc_executor.py:559]   File "x.py", line 3')
    assert line.message == '  File "x.py", line 3'


def test_line_numbers_match_grep_when_progress_bars_redraw():
    log = FIXTURES / "vllm0260-interrupted-during-graph-capture.log"
    raw = log.read_bytes()
    assert b"\r" in raw  # tqdm's redraws: str.splitlines() would count each as a line
    grep_n = raw.split(b"\n").index(b"(EngineCore pid=754) KeyboardInterrupt") + 1
    (finding,) = scan(_read(log))
    assert finding.evidence["first_line"] == grep_n
    assert split_lines("a\rb\nc\n") == ["a\rb", "c"] and split_lines("") == []


def test_a_redrawn_line_shows_its_last_state():
    line = parse_line(1, "(EngineCore pid=7) Capturing   0%|  | 0/83\rCapturing  50%|# | 41/83\rCapturing 100%|##| 83/83\r\n")
    assert line.text == "(EngineCore pid=7) Capturing 100%|##| 83/83"
    assert (line.process, line.message) == ("EngineCore", "Capturing 100%|##| 83/83")


def test_each_prefix_is_stripped_once():
    # A message that itself begins like a prefix keeps it: only the outer one goes.
    line = parse_line(1, "vllm-1  | web-1  | hello")
    assert line.message == "web-1  | hello"


# --------------------------------------------------------------------------------------------
# Judging: order, dedup, root cause over downstream noise
# --------------------------------------------------------------------------------------------

ENV = "(APIServer pid=1) WARNING 07-14 08:38:33 [envs.py:2041] Unknown vLLM environment variable detected: "


def test_first_signature_in_the_table_claims_the_line():
    # a Kubernetes service link is also an "unknown env var": the specific (info) row above claims it
    findings = {f.id: f for f in scan([ENV + "VLLM_PROD_ROUTER_SERVICE_PORT_9000_TCP", ENV + "VLLM_USE_V1"])}
    assert {i: f.severity for i, f in findings.items()} == {"k8s-service-env-vars": "info", "stale-vllm-env": "warning"}
    assert findings["stale-vllm-env"].evidence["captured"]["name"] == ["VLLM_USE_V1"]
    # and the same table with the rows swapped loses that distinction
    table = list(load_signatures())
    swapped = [s for s in table if s.id != "k8s-service-env-vars"] + [s for s in table if s.id == "k8s-service-env-vars"]
    assert [f.id for f in scan([ENV + "VLLM_PROD_ROUTER_SERVICE_PORT_9000_TCP"], swapped)] == ["stale-vllm-env"]


def test_one_finding_per_id_with_every_line_number():
    lines = ["INFO 01-01 00:00:00 [a.py:1] starting"] + [ENV + f"VLLM_FOO_{n}" for n in range(8)]
    (finding,) = scan(lines)
    assert finding.id == "stale-vllm-env"
    assert finding.evidence["line_numbers"] == list(range(2, 10))
    assert finding.evidence["count"] == 8
    assert finding.evidence["captured"]["name"] == [f"VLLM_FOO_{n}" for n in range(8)]
    assert "VLLM_FOO_0, VLLM_FOO_1" in finding.title
    # every line number is evidence; only the first few matches are shown, with context
    shown = [entry["line"] for entry in finding.lines]
    assert shown == list(range(1, 2 + logscan.MAX_SHOWN_MATCHES + logscan.CONTEXT_AFTER))
    assert finding.lines[0] == {"line": 1, "text": "INFO 01-01 00:00:00 [a.py:1] starting", "match": False}


def test_errors_come_before_warnings_and_infos():
    lines = [
        "INFO:     Application startup complete.",
        ENV + "VLLM_USE_V1",
        "(EngineCore_DP0 pid=2) ERROR 10-25 13:08:43 [core.py:708] ValueError: No available memory for the cache blocks.",
    ]
    assert [(f.severity, f.id) for f in scan(lines)] == [
        ("error", "kv-cache-no-memory"),
        ("warning", "stale-vllm-env"),
        ("info", "startup-complete"),
    ]


def test_root_cause_folds_the_downstream_engine_failure():
    findings = _scan_file(FIXTURES / "kv-cache-no-memory-h100-120b.log")
    (root,) = findings
    assert root.id == "kv-cache-no-memory"
    assert root.evidence["downstream"] == [{"id": "engine-core-failed", "first_line": 25, "count": 2}]
    # the evidence quotes the exception, not the `raise ValueError(...` source line above it
    assert root.evidence["first_line"] == 7
    assert root.evidence["message"].startswith("ValueError: No available memory for the cache blocks.")


def test_downstream_alone_points_at_the_preceding_exception():
    lines = [
        "(EngineCore_DP0 pid=5) ERROR 11-02 10:00:00 [core.py:708] EngineCore failed to start.",
        "(EngineCore_DP0 pid=5) ERROR 11-02 10:00:00 [core.py:708] Traceback (most recent call last):",
        '(EngineCore_DP0 pid=5) ERROR 11-02 10:00:00 [core.py:708]   File "gpu_worker.py", line 3, in init_device',
        "(EngineCore_DP0 pid=5) ERROR 11-02 10:00:00 [core.py:708] KeyError: 'model.layers.19.mlp.experts.w2_weight_scale_inv'",
        "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ]
    (finding,) = scan(lines)
    assert finding.id == "vllm-failed"  # no row knows a missing weight: the detector names it
    assert finding.evidence["root_cause"]["line"] == 4
    assert finding.evidence["root_cause"]["message"].startswith("KeyError: 'model.layers.19")
    assert finding.evidence["downstream"] == [{"id": "engine-core-failed", "first_line": 1, "count": 2}]
    assert 4 in {entry["line"] for entry in finding.lines}


def test_inspect_failure_points_past_the_subprocess_wrapper():
    lines = [
        "(APIServer pid=9) ERROR 08-07 01:36:12 [registry.py:415] Error in inspecting model architecture 'GptOssForCausalLM'",
        "(APIServer pid=9) ERROR 08-07 01:36:12 [registry.py:415] subprocess.CalledProcessError: Command '['python3', '-m', 'vllm.model_executor.models.registry']' returned non-zero exit status 1.",
        "(APIServer pid=9) ERROR 08-07 01:36:12 [registry.py:415] RuntimeError: Error raised in subprocess:",
        "(APIServer pid=9) ERROR 08-07 01:36:12 [registry.py:415] ImportError: libfoo.so.1: cannot open shared object file: No such file or directory",
        "(APIServer pid=9) ValueError: Model architectures ['GptOssForCausalLM'] failed to be inspected. Please check the logs for more details.",
    ]
    (finding,) = scan(lines)
    assert finding.id == "vllm-failed"
    assert finding.evidence["root_cause"]["line"] == 4
    assert finding.evidence["downstream"] == [{"id": "model-inspect-failed", "first_line": 1, "count": 2}]
    # the downstream row still captures its values where it stands alone
    (alone,) = scan(lines, [s for s in load_signatures() if s.kind == "line"])
    assert alone.id == "model-inspect-failed"
    assert alone.evidence["captured"]["arch"] == ["GptOssForCausalLM", "'GptOssForCausalLM'"]


def test_known_root_cause_in_the_subprocess_beats_the_inspect_failure():
    lines = [
        "(APIServer pid=9) ERROR 08-07 01:36:12 [registry.py:415] Error in inspecting model architecture 'GptOssForCausalLM'",
        "(APIServer pid=9) ERROR 08-07 01:36:12 [registry.py:415] ImportError: /venv/lib/python3.12/site-packages/vllm/_C.abi3.so: undefined symbol: _ZN3c104cuda9SetDeviceEi",
        "(APIServer pid=9) ValueError: Model architectures ['GptOssForCausalLM'] failed to be inspected. Please check the logs for more details.",
    ]
    (finding,) = scan(lines)
    assert finding.id == "vllm-torch-pair"
    assert finding.evidence["captured"]["symbol"] == ["_ZN3c104cuda9SetDeviceEi"]
    assert finding.evidence["downstream"] == [{"id": "model-inspect-failed", "first_line": 1, "count": 2}]


def test_explained_by_folds_the_effect_into_its_cause():
    (finding,) = _scan_file(FIXTURES / "nccl-shm-minimax-h200.log")
    assert finding.id == "shm-too-small"
    assert finding.evidence["downstream"] == [{"id": "nccl-error", "first_line": 1, "count": 2}]
    # without the shared-memory line the NCCL error stands on its own
    (alone,) = scan(_read(FIXTURES / "nccl-shm-minimax-h200.log")[:1])
    assert alone.id == "nccl-error" and "downstream" not in alone.evidence


def test_folding_follows_a_chain_of_causes():
    # engine-core-failed is explained by server-stopped; a made-up row explained by the engine failure
    # must land on server-stopped too, not vanish with its folded parent
    extra = parse_signatures(GOOD_ROW.replace("boom", "Worker died").replace('"error"', '"warning"')
                             + 'explained_by = ["engine-core-failed"]\n'
                             + GOOD_ROW.replace("x-one", "engine-core-failed").replace("boom", "Engine core initialization failed")
                             + 'explained_by = ["server-stopped"]\n'
                             + GOOD_ROW.replace("x-one", "server-stopped").replace("boom", "^KeyboardInterrupt$").replace('"error"', '"info"'),
                             "chain.toml")
    (finding,) = scan(["KeyboardInterrupt", "Worker died", "RuntimeError: Engine core initialization failed."], extra)
    assert finding.id == "server-stopped"
    assert [d["id"] for d in finding.evidence["downstream"]] == ["x-one", "engine-core-failed"]


def test_unless_turns_a_match_into_a_near_miss():
    table = parse_signatures(GOOD_ROW + "unless = ['boom box']\n", "unless.toml")
    (finding,) = scan(["a boom here", "the boom box plays"], table)
    assert finding.evidence["line_numbers"] == [1]


def test_fix_text_is_filled_from_captured_groups():
    (finding,) = scan(["ValueError: Total number of attention heads (64) must be divisible by tensor parallel size (3)."])
    assert finding.title == "Tensor-parallel size 3 does not divide the 64 attention heads"
    (finding,) = scan(["ValueError: To serve at least one request with the models's max seq len (131072), (4.54 GiB KV cache is needed, which is larger than the available KV cache memory (1.71 GiB). Based on the available memory, the estimated maximum model length is 49584."])
    assert finding.evidence["captured"]["estimated"] == ["49584"] and finding.evidence["captured"]["available"] == ["1.71 GiB"]


def test_secrets_in_log_lines_are_redacted():
    lines = [
        "(APIServer pid=1) INFO 08-07 01:36:07 [utils.py:326] non-default args: {'model_tag': 'openai/gpt-oss-120b', 'api_key': ['s3cr3t-key-value'], 'port': 8000}",
        "(APIServer pid=1) " + ENV.split(") ", 1)[1] + "VLLM_API_KEY",
        "Authorization: Bearer abcdefghijklmnopqrstuvwxyz hf_abcdefghijklmnopqrstuvwxyz",
    ]
    blob = json.dumps([f.to_dict() for f in scan(lines)])
    assert "stale-vllm-env" in blob
    for secret in ("s3cr3t-key-value", "abcdefghijklmnopqrstuvwxyz"):
        assert secret not in blob


def test_scan_takes_any_iterable_and_empty_input():
    assert [f.id for f in scan([])] == ["not-a-vllm-log"]
    assert [f.id for f in scan("x\rINFO:     Application startup complete.\n")] == ["startup-complete"]
    assert [f.id for f in scan(iter(["", "   ", "\n"]))] == ["not-a-vllm-log"]
    assert [f.id for f in scan(line for line in ["INFO:     Application startup complete.\n"])] == ["startup-complete"]


def test_findings_serialise_to_the_report_shape():
    (finding,) = scan(["ModuleNotFoundError: No module named 'triton_kernels'"])
    d = finding.to_dict()
    assert set(d) == {"id", "severity", "title", "evidence", "fix", "links", "lines"}
    assert d["fix"]["commands"] and d["links"]
    assert d["evidence"]["source"].startswith("https://github.com/vllm-project/vllm/issues/22290")
    json.dumps(d)


# --------------------------------------------------------------------------------------------
# The table: validated when loaded, bad rows named
# --------------------------------------------------------------------------------------------

GOOD_ROW = """
[[signature]]
id = "x-one"
severity = "error"
title = "t"
patterns = ['''boom''']
fix = "f"
source = "https://example.org/1"
"""


def test_the_shipped_table_loads_and_is_big_enough():
    table = load_signatures()
    assert len(table) >= 30
    assert len({s.id for s in table}) == len(table)
    ids = [s.id for s in table]
    for required in ("duplicate-triton", "torch-cuda-suffix", "sinks-float32", "bad-cuda-home", "startup-complete"):
        assert required in ids
    assert all(s.source and s.fix for s in table)
    # specific rows sit above the generic ones that would also match their lines
    assert ids.index("k8s-service-env-vars") < ids.index("stale-vllm-env")
    assert ids.index("triton-kernels-import-failed") < ids.index("triton-kernels-missing")
    assert ids.index("tool-server-flag-unrecognized") < ids.index("stale-serve-flag")
    assert ids.index("shm-too-small") < ids.index("disk-full")
    assert ids.index("rocm-no-kernel-image") < ids.index("cuda-no-kernel-image")
    assert ids.index("dist-port-in-use") < ids.index("port-in-use")


@pytest.mark.parametrize(
    "row, problem",
    [
        (GOOD_ROW.replace("'''boom'''", "'''boom(('''"), "bad regex"),
        (GOOD_ROW.replace('source = "https://example.org/1"\n', ""), "missing 'source'"),
        (GOOD_ROW.replace('fix = "f"\n', ""), "missing 'fix'"),
        (GOOD_ROW.replace('fix = "f"', 'fix = ""'), "missing 'fix'"),
        (GOOD_ROW.replace('"error"', '"fatal"'), "severity 'fatal'"),
        (GOOD_ROW + GOOD_ROW, "duplicate id 'x-one'"),
        (GOOD_ROW.replace('id = "x-one"', 'id = "X One"'), "not kebab-case"),
        (GOOD_ROW.replace("patterns = ['''boom''']", "patterns = '''boom'''"), "patterns must be list"),
        (GOOD_ROW + 'colour = "red"\n', "unknown field 'colour'"),
        ("title = 'no rows'", "no [[signature]] rows"),
        ("[[signature]\n", "not valid TOML"),
        (GOOD_ROW + 'explained_by = ["nope"]\n', "explained_by names 'nope'"),
        (GOOD_ROW.replace("'''boom'''", "'''[\\w./-]*_C\\.so'''"), "starts with an unbounded repeat"),
    ],
)
def test_bad_table_rows_are_named(tmp_path, row, problem):
    path = tmp_path / "signatures.toml"
    path.write_text(row)
    with pytest.raises(SignatureError) as e:
        load_signatures(path)
    message = str(e.value)
    assert str(path) in message and problem in message
    assert "\n" not in message


def test_bad_row_names_its_position_and_id():
    with pytest.raises(SignatureError, match=r"sigs\.toml: signature #2 \(x-two\): patterns: bad regex"):
        parse_signatures(GOOD_ROW + GOOD_ROW.replace("x-one", "x-two").replace("'''boom'''", "'''[z'''"), "sigs.toml")


def test_missing_table_file_is_one_clear_error(tmp_path):
    with pytest.raises(SignatureError, match="cannot read"):
        load_signatures(tmp_path / "nope.toml")


def test_root_cause_is_searched_from_the_last_downstream_line():
    lines = [
        "(APIServer pid=1) ValueError: an unrelated earlier failure that was handled",
        "(EngineCore pid=5) ERROR 11-28 00:40:40 [core.py:1330] EngineCore failed to start.",
        "(EngineCore pid=5) ERROR 11-28 00:40:40 [core.py:1330] Traceback (most recent call last):",
        "(EngineCore pid=5) ERROR 11-28 00:40:40 [core.py:1330] KeyError: 'model.layers.0.mlp.experts.w13_weight'",
        "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ]
    (finding,) = scan(lines)
    assert finding.id == "vllm-failed"
    assert finding.evidence["root_cause"]["line"] == 4


def test_placeholders_are_captured_by_every_pattern_of_their_row():
    # a title or fix must never print "<group>": each {group} it names comes from every pattern
    import string

    for sig in load_signatures():
        if sig.kind != "line":  # filled by the scanner itself: test_the_failure_finding_fills_every_placeholder
            continue
        for text in (sig.title, sig.fix, *sig.commands, *sig.supervisor_commands):
            text = re.sub(r"\[\[.*?\]\]", "", text, flags=re.S)  # optional parts: shown when captured
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name}
            for pattern in sig.patterns:
                assert names <= set(pattern.groupindex), f"{sig.id}: {sorted(names)} not all in {pattern.pattern!r}"


def test_no_fixture_finding_prints_an_unfilled_placeholder():
    import re

    for log in LOGS:
        for f in _scan_file(log):
            for text in (f.title, f.fix.text, *f.fix.commands):
                assert not re.search(r"<[a-z_]+>", text), f"{log.name}: {f.id}: {text!r}"


# --------------------------------------------------------------------------------------------
# Streams: bounded memory and bounded work per line, whatever the input
# --------------------------------------------------------------------------------------------


class EndlessBytes(io.RawIOBase):
    """A stand-in for a device like /dev/zero: every read is full, there is no end."""

    def __init__(self, byte: bytes) -> None:
        self.byte, self.reads = byte, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.reads += 1
        buffer[:] = self.byte * len(buffer)
        return len(buffer)


def test_an_endless_stream_of_nul_bytes_stops_at_the_sample():
    zero = EndlessBytes(b"\0")
    source = logscan.LogInput(zero)
    assert list(source) == [] and "NUL" in source.binary
    assert zero.reads * logscan.READ_BLOCK <= 2 * max(logscan.SAMPLE_BYTES, logscan.READ_BLOCK)


def test_a_line_longer_than_the_cap_keeps_its_head_and_tail():
    huge = b"(EngineCore_DP0 pid=3) ERROR 11-28 00:40:40 [core.py:1] " + b"QUJD" * 750_000 + b" ValueError: No available memory for the cache blocks.\n"
    line = next(iter(logscan.LogInput(io.BytesIO(huge + b"next\n"))))
    assert len(line) <= logscan.LINE_HEAD_CHARS + logscan.LINE_TAIL_CHARS + len(logscan.ELIDED)
    assert line.startswith("(EngineCore_DP0 pid=3) ERROR") and line.endswith("cache blocks.")
    (finding,) = scan(io.BytesIO(huge))
    assert finding.id == "kv-cache-no-memory" and finding.evidence["process"] == "EngineCore_DP0"
    # the same line given as text is capped the same way
    assert [f.id for f in scan([huge.decode()])] == ["kv-cache-no-memory"]


def test_a_megabyte_progress_bar_shows_its_last_redraw():
    redraws = b"".join(b"\rCapturing CUDA graphs: %3d%%|" % (n % 100) + b"#" * 40 for n in range(30_000))
    raw = b"(EngineCore pid=7) " + redraws + b"\rKeyboardInterrupt\n"
    assert len(raw) > 1_000_000
    (line,) = logscan.LogInput(io.BytesIO(raw))
    parsed = parse_line(1, line)
    assert (parsed.process, parsed.message) == ("EngineCore", "KeyboardInterrupt")


def test_a_stream_and_its_text_give_the_same_findings():
    for log in LOGS:
        raw = log.read_bytes()
        from_stream = [f.to_dict() for f in scan(io.BytesIO(raw))]
        from_text = [f.to_dict() for f in scan(_read(log))]
        assert from_stream == from_text, log.name


def test_many_matches_keep_a_count_and_bounded_evidence():
    lines = [ENV + "VLLM_FOO"] * 10_000 + ["INFO 01-01 00:00:00 [a.py:1] done"]
    (finding,) = scan(iter(lines))
    ev = finding.evidence
    assert (ev["count"], ev["first_line"], ev["last_line"]) == (10_000, 1, 10_000)
    assert ev["line_numbers"] == list(range(1, logscan.MAX_LINE_NUMBERS + 1))
    assert sum(entry["match"] for entry in finding.lines) == logscan.MAX_SHOWN_MATCHES


# --------------------------------------------------------------------------------------------
# Never silent: vLLM failed, whatever the table knows
# --------------------------------------------------------------------------------------------

E = "(EngineCore_DP0 pid=77) ERROR 10-25 13:08:43 [core.py:708] "
J = "Oct 25 13:08:43 gpu-01 vllm[70]: "
UNKNOWN_FAILURE = [
    J + "(APIServer pid=70) INFO 10-25 13:08:01 [api_server.py:1805] vLLM API server version 0.11.0",
    J + "(EngineCore_DP0 pid=77) INFO 10-25 13:08:20 [gpu_model_runner.py:2602] Starting to load model openai/gpt-oss-20b...",
    J + E + "EngineCore failed to start.",
    J + E + "Traceback (most recent call last):",
    J + E + '  File "/opt/venv/lib/python3.12/site-packages/vllm/v1/engine/core.py", line 699, in run_engine_core',
    J + E + "    engine_core = EngineCoreProc(*args, **kwargs)",
    J + E + '  File "/opt/venv/lib/python3.12/site-packages/vllm/model_executor/layers/fused_moe/layer.py", line 1203, in __init__',
    J + E + "    raise FrobnicationError(f\"cannot frobnicate {n} experts\")",
    J + E + "somepkg.FrobnicationError: cannot frobnicate 32 experts",
    J + E + "",
    J + E + "The above exception was the direct cause of the following exception:",
    J + E + "",
    J + E + "Traceback (most recent call last):",
    J + E + '  File "/opt/venv/lib/python3.12/site-packages/vllm/v1/executor/multiproc_executor.py", line 559, in worker_main',
    J + E + "RuntimeError: Worker failed with error 'cannot frobnicate 32 experts', please check the stack trace above for the root cause",
    J + "(APIServer pid=70) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
]


def test_an_unknown_failure_is_named_with_its_root_cause_version_and_phase():
    (finding,) = scan(UNKNOWN_FAILURE)
    ev = finding.evidence
    assert (finding.id, finding.severity) == ("vllm-failed", "error")
    # the last of the chain that is not a wrapper ("Worker failed with error" re-raises it)
    assert ev["root_cause"]["line"] == 9
    assert ev["root_cause"]["message"] == "somepkg.FrobnicationError: cannot frobnicate 32 experts"
    assert ev["root_cause"]["raised_at"] == "vllm/model_executor/layers/fused_moe/layer.py:1203"
    assert ev["root_cause"]["process"] == "EngineCore_DP0"
    assert (ev["vllm_version"], ev["phase"]) == ("0.11.0", "model load")
    assert {d["id"] for d in ev["downstream"]} == {"engine-core-failed"}
    assert "FrobnicationError" in finding.title and "0.11.0" in finding.title and "model load" in finding.title
    assert "layer.py:1203" in finding.fix.text and not re.search(r"<[a-z_]+>", finding.title + finding.fix.text)
    assert 9 in {entry["line"] for entry in finding.lines if entry["match"]}


def test_the_failure_finding_fills_every_placeholder():
    # no version, no phase, no vllm frame: still no "<group>" in what the user reads
    (finding,) = scan(["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "ZeroDivisionError: division by zero"])
    assert finding.id == "vllm-failed" and finding.evidence["vllm_version"] == "unknown"
    for text in (finding.title, finding.fix.text, *finding.fix.commands):
        assert not re.search(r"<[a-z_]+>", text), text


@pytest.mark.parametrize("end, failed", [
    ("Oct 25 13:09:00 gpu-01 systemd[1]: gptoss-vllm.service: Main process exited, code=exited, status=1/FAILURE", True),
    ("Oct 25 13:09:00 gpu-01 systemd[1]: gptoss-vllm.service: Failed with result 'exit-code'.", True),
    ("2026-10-25T13:09:00+0000 gptoss-supervise: main process exited, status=1", True),
    ("2026-10-25T13:09:00+0000 gptoss-supervise: main process exited, status=-9", True),
    ("2026-10-25T13:09:00+0000 gptoss-supervise: cannot start /opt/gptoss/current/bin/vllm: No such file or directory", True),
    ("Oct 25 13:09:00 gpu-01 systemd[1]: gptoss-vllm.service: Main process exited, code=killed, status=15/TERM", False),
    ("2026-10-25T13:09:00+0000 gptoss-supervise: main process exited, status=-15", False),
    ("2026-10-25T13:09:00+0000 gptoss-supervise: main process exited, status=0", False),
])
def test_an_exit_status_says_whether_vllm_failed(end, failed):
    start = ["(APIServer pid=70) INFO 10-25 13:08:01 [api_server.py:1805] vLLM API server version 0.11.0",
             "(APIServer pid=70) INFO 10-25 13:08:02 [api_server.py:1806] Starting vLLM API server 0 on http://0.0.0.0:8000"]
    ids = [f.id for f in scan(start + [end])]
    assert ids == (["vllm-failed"] if failed else [])


def test_a_traceback_that_ends_the_log_is_a_failure_unless_the_server_is_up_after_it():
    tb = ["(APIServer pid=1) INFO 10-25 13:08:01 [api_server.py:1805] vLLM API server version 0.11.0",
          "(APIServer pid=1) ERROR 10-25 13:08:02 [serving.py:9] Traceback (most recent call last):",
          '(APIServer pid=1) ERROR 10-25 13:08:02 [serving.py:9]   File "/v/vllm/entrypoints/openai/serving_chat.py", line 5, in x',
          "(APIServer pid=1) ERROR 10-25 13:08:02 [serving.py:9] LookupError: no such template"]
    (finding,) = scan(tb)
    assert finding.id == "vllm-failed" and finding.evidence["root_cause"]["raised_at"] == "vllm/entrypoints/openai/serving_chat.py:5"
    assert [f.id for f in scan(tb + ["(APIServer pid=1) INFO:     Application startup complete."])] == ["startup-complete"]
    # a handled traceback while serving, followed by more serving, is not the end
    serving = ["(APIServer pid=1) INFO:     Application startup complete."] + tb[1:] + [
        '(APIServer pid=1) INFO:     127.0.0.1:5000 - "POST /v1/chat/completions HTTP/1.1" 200 OK']
    assert [f.id for f in scan(serving)] == ["startup-complete"]


def test_known_rows_carry_the_version_and_phase():
    (finding,) = _scan_file(FIXTURES / "vllm0260-kv-cache-too-small.log")
    assert finding.id == "kv-cache-insufficient"
    assert finding.evidence["vllm_version"] == "0.26.0"
    assert finding.evidence["phase"] == "profiling and KV cache"


def test_the_detail_lines_of_a_validation_error_are_quoted():
    lines = ["(APIServer pid=1) INFO 10-25 13:08:01 [api_server.py:1805] vLLM API server version 0.11.0",
             "(APIServer pid=1) Traceback (most recent call last):",
             '(APIServer pid=1)   File "/v/lib/python3.12/site-packages/vllm/engine/arg_utils.py", line 1101, in create_engine_config',
             "(APIServer pid=1) pydantic_core._pydantic_core.ValidationError: 1 validation error for FrobConfig",
             "(APIServer pid=1)   Value error, frob_level must be <= 3, got 9 [type=value_error, input_value=ArgsKwargs((), {'frob_level': 9}), input_type=ArgsKwargs]"]
    (finding,) = scan(lines, [s for s in load_signatures() if s.id in ("vllm-failed", "not-a-vllm-log")])
    assert finding.evidence["root_cause"]["detail"][0].startswith("Value error, frob_level must be <= 3, got 9")


@pytest.mark.parametrize("data, why", [
    (b"", "empty"),
    (b"\n\n   \n", "empty"),
    (b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64, "binary"),
    (b"LPKSHHRH" + b"\0" * 70_000, "binary"),  # a systemd journal file
    ("x".join(chr(0xE000 + n) for n in range(300)).encode("utf-16"), "binary"),
    (b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n", "looks like vLLM"),
])
def test_input_that_is_not_a_vllm_log_says_so(data, why):
    (finding,) = scan(io.BytesIO(data))
    assert finding.id == "not-a-vllm-log" and why in finding.title
    # nothing judged: a warning; a text of something else: said, as info
    assert finding.severity == ("info" if why == "looks like vLLM" else "warning")


def _cli(tmp_path, capsys, *argv):
    from gptoss_doctor.cli import main
    from gptoss_doctor.collect import Env

    rc = main(["logs", *argv, "--json"], env=Env(root=tmp_path / "root", environ={"PATH": "/usr/bin:/bin"}))
    out, err = capsys.readouterr()
    return rc, json.loads(out) if out else None, err


def test_cli_logs_exits_1_on_an_unknown_failure(tmp_path, capsys):
    log = tmp_path / "vllm.log"
    log.write_text("\n".join(UNKNOWN_FAILURE) + "\n")
    rc, report, _ = _cli(tmp_path, capsys, str(log))
    assert rc == report["exit_code"] == 1
    assert [f["id"] for f in report["findings"]] == ["vllm-failed"]
    assert report["findings"][0]["evidence"]["file"] == str(log)


@pytest.mark.parametrize("name", ["/dev/zero", "/dev/null"])
def test_cli_logs_on_a_device_says_it_is_not_a_log(tmp_path, capsys, name):
    rc, report, err = _cli(tmp_path, capsys, name)
    assert err == "" and rc == report["exit_code"] == 0
    (finding,) = report["findings"]
    assert finding["id"] == "not-a-vllm-log" and ("binary" if name == "/dev/zero" else "empty") in finding["title"]


# --------------------------------------------------------------------------------------------
# Families: a row names its whole class of failure, across eras and wordings
# --------------------------------------------------------------------------------------------

FAMILY_VARIANTS = {
    "cuda-oom": [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1008.00 MiB. GPU 0 has a total capacity of 79.19 GiB of which 201.00 MiB is free.",
        "RuntimeError: CUDA error: out of memory",
        "torch.OutOfMemoryError: HIP out of memory. Tried to allocate 816.00 MiB.",
        "RuntimeError: expandable_segments: memory mapping failed with OOM on device 0 while trying to map 2.00 GiB",
        "NCCL WARN Cuda failure 'out of memory' cudaMalloc failed: out of memory",
    ],
    "host-oom-killed": [
        "[ 9123.456789] Out of memory: Killed process 4242 (python3) total-vm:190123456kB, anon-rss:120345678kB",
        "gptoss-vllm.service: Failed with result 'oom-kill'.",
        "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.",
        "ERROR 01-11 13:09:40 multiproc_worker_utils.py:123] Worker VllmWorkerProcess pid 26961 died, exit code: -9",
    ],
    "model-path-missing": [
        "ValueError: Invalid repository ID or local directory specified: 'gpt-oss-20b'.",
        "OSError: /models/gpt-oss does not appear to have a file named config.json. Checkout 'https://huggingface.co//models/gpt-oss/tree/None' for available files.",
        "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/srv/models/x/'.",
        "FileNotFoundError: [Errno 2] No such file or directory: '/srv/models/gpt-oss-120b/config.json'",
    ],
    "hf-gated-or-unauthorized": [
        "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-66f4b037)",
        "requests.exceptions.HTTPError: 403 Client Error: Forbidden for url: https://huggingface.co/api/models/meta-llama/Llama-3.1-8B",
        "huggingface_hub.errors.HfHubHTTPError: Invalid user token.",
    ],
    "nvcc-missing": [
        "FileNotFoundError: [Errno 2] No such file or directory: 'nvcc'",
        "/bin/sh: 1: nvcc: not found",
        "RuntimeError: Could not find nvcc and default cuda_home='/usr/local/cuda' doesn't exist",
    ],
    "ptxas-arch-unsupported": [
        "ptxas fatal   : Value 'sm_121a' is not defined for option 'gpu-name'",
        "nvcc fatal   : Unsupported gpu architecture 'compute_110a'",
    ],
    "cuda-runtime-error": [
        "RuntimeError: CUDA error: uncorrectable ECC error encountered",
        "torch.AcceleratorError: CUDA error: unspecified launch failure",
        "RuntimeError: CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, opa, opb)`",
    ],
    "hip-runtime-error": [
        "RuntimeError: HIP error: the operation cannot be performed in the present state",
        "Memory access fault by GPU node-2 (Agent handle: 0x55d0) on address 0x7f. Reason: Page not present or supervisor privilege.",
    ],
    "gpu-capability-too-low": [
        "ValueError: Bfloat16 is only supported on GPUs with compute capability of at least 8.0. Your Tesla V100-SXM2-32GB GPU has compute capability 7.0.",
        "RuntimeError: FlashAttention only supports Ampere GPUs or newer.",
    ],
    "python-module-missing": [
        "ModuleNotFoundError: No module named 'vllm.attention.backends.registry'",
        "torch._inductor.exc.TritonMissing: Cannot find a working triton installation. Either the package is not installed or it is too old.",
    ],
    "import-symbol-mismatch": [
        "ImportError: cannot import name 'DeepseekV2Config' from 'transformers' (/x/transformers/__init__.py)",
        "ImportError: /x/flash_attn_2_cuda.cpython-312-x86_64-linux-gnu.so: undefined symbol: _ZN3c105ErrorC2ENS_14SourceLocationESs",
        "ImportError: /lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found",
    ],
    "vllm-config-invalid": [
        "vllm serve: error: argument --compilation-config/-O: 1 validation error for CompilationConfig",
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for SchedulerConfig",
        "ValueError: max_num_batched_tokens (2048) is smaller than max_model_len (8192).",
        "AssertionError: max_num_scheduled_tokens is set to -1792, which does not allow any tokens to be scheduled",
    ],
    "moe-backend-unsupported": [
        "NotImplementedError: No MXFP4 MoE backend supports the deployment configuration.",
        "ValueError: NvFp4 MoE backend 'FLASHINFER_CUTLASS' does not support the deployment configuration since kernel does not support MoEActivation.SWIGLUSTEP activation.",
        "flashinfer.utils.BackendSupportedError: mm_fp4 does not support backend 'cute-dsl' with capability 120",
    ],
}


@pytest.mark.parametrize("family, line", [(f, line) for f, lines in FAMILY_VARIANTS.items() for line in lines])
def test_a_family_row_names_each_wording_of_its_class(family, line):
    errors = [f.id for f in scan(["(EngineCore_DP0 pid=1) ERROR 11-28 00:40:40 [core.py:1] " + line]) if f.severity == "error"]
    assert errors == [family]


def test_captured_values_fill_the_fix():
    (finding,) = _scan_file(FIXTURES / "constructed-gpu-memory-held-by-others.log")
    assert "20.12 of 79.19 GiB free" in finding.title and "asks for 71.27 GiB" in finding.title
    assert "(20.12 of 79.19 GiB were free)" in finding.fix.text and "[[" not in finding.fix.text
    (finding,) = _scan_file(FIXTURES / "constructed-model-files-permission-denied.log")
    assert "namei -l '/var/lib/gptoss/hf/hub/models--openai--gpt-oss-20b/blobs'" in finding.fix.commands
    # a wording without the path: the command that needs it is left out, not printed with a hole
    (finding,) = scan(["OSError: Permission denied (os error 13)"])
    assert finding.id == "model-files-permission-denied" and "" not in finding.fix.commands
    assert not any("namei" in c for c in finding.fix.commands)


NEW_FAMILIES = (
    "gpu-memory-held-by-others host-oom-killed model-path-missing model-files-permission-denied hf-gated-or-unauthorized "
    "hf-unreachable model-files-corrupt jit-build-failed ninja-missing nvcc-missing ptxas-arch-unsupported cuda-runtime-error "
    "hip-runtime-error nvml-driver-mismatch gpu-capability-too-low moe-backend-unsupported python-module-missing "
    "import-symbol-mismatch package-version-conflict cuda-fork-reinit multiproc-worker-died vllm-config-invalid "
    "harmony-encoding-failed tool-server-failed mxfp4-unsupported vllm-failed"
).split()


def test_every_family_has_a_row_with_a_public_source():
    table = {s.id: s for s in load_signatures()}
    for family in NEW_FAMILIES:
        assert family in table, family
        assert "https://" in table[family].source, family
    for sig in table.values():  # never a path of the machine the table was written on
        assert not re.search(r"/work/|shared/(?:notes|reference)", sig.source), sig.id


# --------------------------------------------------------------------------------------------
# Logs and box together: on a deployed host, the box finding that explains a log failure is the cause
# --------------------------------------------------------------------------------------------

NVCC_LOG = [
    "(APIServer pid=4100) INFO 11-28 00:40:01 [api_server.py:1805] vLLM API server version 0.26.0",
    "(EngineCore_DP0 pid=4242) INFO 11-28 00:40:20 [gpu_model_runner.py:2602] Starting to load model openai/gpt-oss-20b...",
    "(EngineCore_DP0 pid=4242) ERROR 11-28 00:40:40 [core.py:1016] FileNotFoundError: [Errno 2] No such file or directory: 'nvcc'",
    "(EngineCore_DP0 pid=4242) ERROR 11-28 00:40:40 [core.py:1016] RuntimeError: Error building extension 'sampling'",
    "(APIServer pid=4100) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
]


def _deployed_box(tmp_path, cuda_home: str):
    """A fake root as the deploy leaves it (tests/fakeroot.py): the manifest, the stack's venv with
    a stand-in torch built for CUDA 12.8, and the service environment's CUDA_HOME."""
    from fakeroot import Box

    box = Box(tmp_path / "root")
    box.write("/opt/gptoss/current/pyvenv.cfg", "home = /usr/bin\nversion = 3.12.3\n")
    box.write("/opt/gptoss/current/bin/python", "# stand-in for the venv's interpreter (a file, not a broken link)\n")
    box.write("/opt/gptoss/current/lib/python3.12/site-packages/torch/version.py",
              "# stand-in written by tests/test_logscan.py\n__version__ = '2.8.0+cu128'\ncuda = '12.8'\nhip = None\n")
    box.write("/etc/gptoss/manifest.json", json.dumps({"venv": "/opt/gptoss/current", "env": {"CUDA_HOME": cuda_home}}))
    return box


def test_logs_on_a_deployed_host_name_the_box_finding_as_the_cause(tmp_path, capsys):
    from gptoss_doctor.cli import main

    box = _deployed_box(tmp_path, "/usr/local/cuda-12.8")  # the folder is not there
    log = tmp_path / "vllm.log"
    log.write_text("\n".join(NVCC_LOG) + "\n")
    rc = main(["logs", str(log), "--json"], env=box.env())
    report = json.loads(capsys.readouterr().out)
    ids = [f["id"] for f in report["findings"] if f["severity"] == "error"]
    assert rc == 1 and "bad-cuda-home" in ids and "nvcc-missing" not in ids
    cause = next(f for f in report["findings"] if f["id"] == "bad-cuda-home")
    (explained,) = cause["evidence"]["explains"]
    assert (explained["id"], explained["file"], explained["first_line"]) == ("nvcc-missing", str(log), 3)
    assert "/usr/local/cuda-12.8" in cause["title"]
    assert report["facts"] == {}  # the box's facts and its other findings stay with `gptoss-doctor`
    # nothing else wrong on the box but that it has no GPU (a warning, counted in box-judged)
    judged = [f for f in report["findings"] if f["id"] == "box-judged"]
    assert all(not f["evidence"]["box_errors"] for f in judged), judged


def test_box_errors_the_log_does_not_show_are_counted_in_one_info_finding():
    from gptoss_doctor.findings import Finding, Fix

    def box(id_, severity):
        return Finding(id=id_, severity=severity, title=id_, evidence={}, fix=Fix(text="f"))

    cuda, secrets, persistence = box("bad-cuda-home", "warning"), box("world-readable-secrets", "error"), box("persistence-mode-off", "warning")
    (nvcc,) = scan(NVCC_LOG)[:1]
    shown = logscan.tie_to_box([nvcc], [cuda, secrets, persistence], keep_unrelated=False)
    assert shown == [cuda] and cuda.severity == "error" and "severity_raised" in cuda.evidence
    summary = logscan.box_summary([cuda, secrets, persistence], shown)
    assert summary.severity == "info" and summary.evidence["box_errors"] == ["world-readable-secrets"]
    assert summary.evidence["box_warnings"] == ["persistence-mode-off"] and summary.evidence["tied"] == ["bad-cuda-home"]
    assert logscan.box_summary([cuda, persistence], shown) is None


def test_without_a_box_cause_the_log_finding_stands(tmp_path, capsys):
    from gptoss_doctor.cli import main

    box = _deployed_box(tmp_path, "/usr/local/cuda-12.8")
    box.write("/usr/local/cuda-12.8/bin/nvcc", "#!/bin/sh\necho 'Cuda compilation tools, release 12.8, V12.8.93'\n", 0o755)
    box.write("/usr/local/cuda-12.8/version.json", json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.8.1"}}))
    box.write("/usr/local/cuda-12.8/include/cuda.h", "/* stand-in */\n")
    log = tmp_path / "vllm.log"
    log.write_text("\n".join(NVCC_LOG) + "\n")
    main(["logs", str(log), "--json"], env=box.env())
    report = json.loads(capsys.readouterr().out)
    ids = [f["id"] for f in report["findings"] if f["severity"] == "error"]
    assert "nvcc-missing" in ids and "bad-cuda-home" not in ids


def test_the_tie_table_names_real_box_checks():
    from gptoss_doctor import checks  # noqa: F401 - registers every check
    from gptoss_doctor.findings import REGISTRY

    ties = {s.id: s.box_causes for s in load_signatures() if s.box_causes}
    assert ties["nvcc-missing"][0] == "bad-cuda-home" and len(ties) >= 20
    for log_id, box_ids in ties.items():
        for box_id in box_ids:
            assert box_id in REGISTRY, f"{log_id}: box_causes names {box_id!r}, not a check"


def test_an_error_line_that_ends_the_log_is_a_failure_without_an_exception():
    start = ["(APIServer pid=1) INFO 10-25 13:08:01 [api_server.py:1805] vLLM API server version 0.11.0"]
    docker = ['docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].']
    (finding,) = scan(start + docker)
    assert finding.id == "vllm-failed" and finding.evidence["first_line"] == 2
    # the same line followed by the server coming up is history, not the end
    assert [f.id for f in scan(start + docker + ["(APIServer pid=1) INFO:     Application startup complete."])] == ["startup-complete"]


@pytest.mark.parametrize("block", [1, 7, 4096, 1 << 18])
def test_block_boundaries_do_not_change_the_lines(monkeypatch, block):
    monkeypatch.setattr(logscan, "READ_BLOCK", block)
    long_line = "(EngineCore pid=7) " + "ab\r" * 5000 + "KeyboardInterrupt"
    text = "first\n\n" + long_line + "\nlast without newline"
    want = [logscan._cap(line) for line in split_lines(text)]
    assert list(logscan.LogInput(io.BytesIO(text.encode()))) == want
    for log in LOGS[:10]:
        assert list(logscan.LogInput(io.BytesIO(log.read_bytes()))) == list(logscan.LogInput(_read(log))), log.name
