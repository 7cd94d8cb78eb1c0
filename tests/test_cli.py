"""gptoss-doctor's command line, run in-process on real venvs made with uv.

The venvs are real (`uv venv` + `uv pip install` of small packages from the index). What uv
cannot install here (torch with CUDA, triton, vLLM: GPU-sized) is written into them as
dist-info + the few text files the doctor reads; each such file says it is a stand-in.
Bad invocations must give exactly one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_doctor.cli import main
from gptoss_doctor.collect import Env
from gptoss_doctor.redact import MASK, is_secret_name, redact_argv, redact_text, redact_tree
from gptoss_doctor.report import REPORT_SCHEMA
from gptoss_doctor.snapshot import SCHEMA

STANDIN = "# stand-in written by tests/test_cli.py: the text the doctor reads, not the real package\n"


def run(capsys, *argv, env=None, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(list(argv), env=env)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_usage_error(rc, out, err, *needles):
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("gptoss-doctor: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def uv_venv(path: Path, *packages: str) -> Path:
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(path)], check=True)
    if packages:
        subprocess.run(["uv", "pip", "install", "-q", "--python", str(path / "bin" / "python"), *packages], check=True)
    return path


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python3*/site-packages"))


def add_standin_dist(venv: Path, name: str, version: str, files: dict[str, str]) -> None:
    sp = site_packages(venv)
    d = sp / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir()
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (d / "INSTALLER").write_text("pip\n")
    (d / "RECORD").write_text("".join(f"{p},,\n" for p in files) + f"{d.name}/METADATA,,\n")
    for rel, text in files.items():
        (sp / rel).parent.mkdir(parents=True, exist_ok=True)
        (sp / rel).write_text(STANDIN + text)


@pytest.fixture(scope="session")
def plain_venv(tmp_path_factory) -> Path:
    """A real uv venv with two small real packages."""
    return uv_venv(tmp_path_factory.mktemp("venvs") / "plain", "six", "idna")


@pytest.fixture(scope="session")
def broken_venv(tmp_path_factory) -> Path:
    """A real uv venv holding the guide's failure: torch CPU build and two distributions owning triton."""
    v = uv_venv(tmp_path_factory.mktemp("venvs") / "broken", "six")
    add_standin_dist(v, "torch", "2.8.0", {"torch/__init__.py": "", "torch/version.py": "__version__ = '2.8.0+cpu'\ncuda = None\nhip = None\n"})
    add_standin_dist(v, "triton", "3.4.0", {"triton/__init__.py": ""})
    add_standin_dist(v, "pytorch-triton", "3.4.0+gitb3c7d3a", {"triton/__init__.py": "", "triton/_C/libtriton.so": ""})
    return v


@pytest.fixture
def bare_root(tmp_path) -> Env:
    """An empty root: no GPU, no service; the doctor looks only at the venv it is given."""
    root = tmp_path / "root"
    root.mkdir()
    return Env(root=root, environ={"PATH": "/usr/bin"})


# -- collect ---------------------------------------------------------------------------------------


def test_collect_prints_a_snapshot_of_a_real_uv_venv(capsys, plain_venv, bare_root):
    rc, out, err = run(capsys, "collect", "--venv", str(plain_venv), env=bare_root)
    assert rc == 0, err
    snap = json.loads(out)
    assert snap["schema"] == SCHEMA
    dists = {d["name"]: d for d in snap["facts"]["venv.distributions"]["value"]}
    assert {"six", "idna"} <= set(dists)
    assert dists["six"]["installer"] == "uv"
    assert dists["six"]["top_level"] == ["six"]
    assert snap["facts"]["venv"]["value"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "absent" in snap["facts"]["torch.build"]


def test_global_options_before_the_subcommand_still_count(capsys, plain_venv, bare_root):
    rc, out, _ = run(capsys, "--venv", str(plain_venv), "collect", env=bare_root)
    assert rc == 0
    assert json.loads(out)["facts"]["venv"]["value"]["path"] == str(plain_venv)


# -- diagnosis -------------------------------------------------------------------------------------


def test_json_report_contract_and_exit_code_follow_the_findings(capsys, broken_venv, bare_root):
    rc, out, err = run(capsys, "--venv", str(broken_venv), "--json", env=bare_root)
    report = json.loads(out)
    assert set(report) >= {"schema", "exit_code", "findings", "facts", "checks"}
    assert report["schema"] == REPORT_SCHEMA
    assert report["exit_code"] == rc
    ids = {f["id"] for f in report["findings"]}
    assert "duplicate-triton" in ids
    dup = next(f for f in report["findings"] if f["id"] == "duplicate-triton")
    assert dup["severity"] == "error" and dup["fix"]["commands"]
    assert rc == 1
    assert report["checks"]["duplicate-triton"] == "error"
    assert report["facts"]["torch.build"]["value"]["version"] == "2.8.0+cpu"


def test_clean_venv_exits_zero_when_no_error(capsys, plain_venv, bare_root):
    rc, out, _ = run(capsys, "--venv", str(plain_venv), "--json", env=bare_root)
    report = json.loads(out)
    assert [f["id"] for f in report["findings"] if f["severity"] == "error"] == []
    assert rc == report["exit_code"] == 0


def test_only_runs_the_named_checks(capsys, broken_venv, bare_root):
    rc, out, _ = run(capsys, "--venv", str(broken_venv), "--json", "--only", "duplicate-triton", env=bare_root)
    report = json.loads(out)
    assert list(report["checks"]) == ["duplicate-triton"]
    assert {f["id"] for f in report["findings"]} == {"duplicate-triton"}


def test_human_output_is_plain_and_groups_by_severity(capsys, broken_venv, bare_root):
    rc, out, err = run(capsys, "--venv", str(broken_venv), env=bare_root)
    assert rc == 1
    assert "\x1b[" not in out  # not a terminal: no colour codes
    lines = out.splitlines()
    assert lines[0].startswith("gptoss-doctor ")
    assert "Errors (" in out and "duplicate-triton" in out
    assert out.index("Errors (") < out.index("duplicate-triton")
    assert "fix: " in out
    assert "torch 2.8.0+cpu" in out


def test_check_from_a_snapshot_file_judges_it_again(capsys, broken_venv, bare_root, tmp_path):
    rc, out, _ = run(capsys, "collect", "--venv", str(broken_venv), env=bare_root)
    box = tmp_path / "box.json"
    box.write_text(out)
    rc, out, _ = run(capsys, "check", "--from", str(box), "--json")
    report = json.loads(out)
    assert "duplicate-triton" in {f["id"] for f in report["findings"]}
    assert rc == report["exit_code"] == 1


def test_check_from_stdin(capsys, plain_venv, bare_root, monkeypatch):
    _, snap, _ = run(capsys, "collect", "--venv", str(plain_venv), env=bare_root)
    rc, out, _ = run(capsys, "check", "--from", "-", "--json", stdin=snap, monkeypatch=monkeypatch)
    assert json.loads(out)["schema"] == REPORT_SCHEMA and rc == 0


def test_service_on_all_interfaces_without_a_key(capsys, plain_venv, tmp_path):
    root = tmp_path / "root"
    unit = root / "etc/systemd/system/gptoss-vllm.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(f"[Service]\nExecStart={plain_venv}/bin/vllm serve openai/gpt-oss-20b --host 0.0.0.0\n")
    rc, out, _ = run(capsys, "--json", "--venv", str(plain_venv), env=Env(root=root, environ={"PATH": "/usr/bin"}))
    report = json.loads(out)
    assert report["facts"]["service.serve"]["value"]["host"] == "0.0.0.0"
    assert "api-without-key" in {f["id"] for f in report["findings"]}
    # the near miss: loopback only
    unit.write_text(f"[Service]\nExecStart={plain_venv}/bin/vllm serve openai/gpt-oss-20b --host 127.0.0.1\n")
    rc, out, _ = run(capsys, "--json", "--venv", str(plain_venv), env=Env(root=root, environ={"PATH": "/usr/bin"}))
    assert "api-without-key" not in {f["id"] for f in json.loads(out)["findings"]}


SITE_STACK = """[[stack]]
name = "vllm-0.33.0-site"
era = "0.33.0 rebuilt by the site for Python 3.12 and newer only"
vllm = "0.33.0"
torch = "2.14.0"
torch_local = "+cu130"
triton_dist = "triton"
triton = "3.8.0"
cuda = "13.0"
python = ">=3.12,<3.15"
min_driver = "580.95.05"
indexes = [{ name = "pypi", url = "https://pypi.org/simple" }]
requirements = ["vllm==0.33.0"]
source = "INFRA-1234 build log, 2026-11-20"
"""


def deployed_root(tmp_path, venv: Path, site_text: str) -> Env:
    """A fake root as the deploy leaves it: a manifest naming the site's stack, its file in stacks.d."""
    root = tmp_path / "root"
    (root / "etc/gptoss/stacks.d").mkdir(parents=True)
    (root / "etc/gptoss/stacks.d/site.toml").write_text(site_text)
    manifest = {"stack": "vllm-0.33.0-site", "venv": str(venv), "extra_stack_files": ["/etc/gptoss/stacks.d/site.toml"]}
    (root / "etc/gptoss/manifest.json").write_text(json.dumps(manifest))
    return Env(root=root, environ={"PATH": "/usr/bin"})


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the site stack's range is chosen to exclude this Python")
def test_a_host_on_a_site_stack_is_judged_against_it_here_and_from_its_snapshot(capsys, plain_venv, tmp_path):
    """The deploy copied the site's stack file and listed it in the manifest: the doctor loads it
    (the site stack wants Python >= 3.12, this venv has 3.11), records its text in the snapshot,
    and `check --from` judges the same with no file of the host at hand."""
    env = deployed_root(tmp_path, plain_venv, SITE_STACK)
    rc, out, err = run(capsys, "--json", "--venv", str(plain_venv), env=env)
    report = json.loads(out)
    py = next(f for f in report["findings"] if f["id"] == "python-outside-stack")
    assert "vllm-0.33.0-site" in py["title"] and ">=3.12,<3.15" in py["title"]
    assert report["checks"]["site-stack-file-invalid"] == "ok"
    _, snap, _ = run(capsys, "collect", "--venv", str(plain_venv), env=env)
    assert json.loads(snap)["facts"]["stacks.extra"]["value"] == [{"path": "/etc/gptoss/stacks.d/site.toml", "text": SITE_STACK}]
    (tmp_path / "box.json").write_text(snap)
    import shutil

    shutil.rmtree(tmp_path / "root")  # "elsewhere": the host's files are gone, the snapshot remains
    rc2, out2, _ = run(capsys, "check", "--from", str(tmp_path / "box.json"), "--json")
    again = json.loads(out2)
    assert (rc2, again["checks"]) == (rc, report["checks"])
    assert [f["title"] for f in again["findings"]] == [f["title"] for f in report["findings"]]


def test_a_site_stack_file_that_does_not_load_is_reported_and_left_out(capsys, plain_venv, tmp_path):
    env = deployed_root(tmp_path, plain_venv, SITE_STACK.replace('min_driver = "580.95.05"', 'min_driver = "575.51.03"'))
    rc, out, err = run(capsys, "--json", "--venv", str(plain_venv), env=env)
    report = json.loads(out)
    bad = next(f for f in report["findings"] if f["id"] == "site-stack-file-invalid")
    assert "/etc/gptoss/stacks.d/site.toml" in bad["title"] and "'vllm-0.33.0-site' is unknown" in bad["title"]
    assert "min_driver: 575.51.03 is below" in bad["evidence"]["problems"][0]["error"]
    assert report["checks"]["python-outside-stack"].startswith("skipped: manifest stack 'vllm-0.33.0-site' is not in the knowledge")
    assert err == ""  # judged, not refused: the rest of the doctor still runs


# -- logs ------------------------------------------------------------------------------------------

SINKS_LOG = """INFO 08-06 10:00:01 [api_server.py:1805] vLLM API server version 0.10.1+gptoss
(VllmWorker TP0 pid=2211) ERROR 08-06 10:00:09 [multiproc_executor.py:559]   File "/opt/venv/lib/python3.12/site-packages/vllm/attention/backends/flashinfer.py", line 1125, in forward
(VllmWorker TP0 pid=2211) ERROR 08-06 10:00:09 [multiproc_executor.py:559]     assert sinks.dtype == torch.float32, "Sinks must be of type float32"
(VllmWorker TP0 pid=2211) ERROR 08-06 10:00:09 [multiproc_executor.py:559] AssertionError: Sinks must be of type float32
"""


def test_logs_file_finds_the_signature_with_its_line(capsys, tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text(SINKS_LOG)
    rc, out, _ = run(capsys, "logs", str(log), "--json")
    report = json.loads(out)
    assert report["facts"] == {} and report["schema"] == REPORT_SCHEMA
    found = next(f for f in report["findings"] if f["id"] == "sinks-float32")
    assert found["evidence"]["file"] == str(log)
    assert any(row["line"] == 4 for row in found["lines"])
    assert rc == report["exit_code"] == 1


def test_logs_from_stdin_and_a_clean_log(capsys, monkeypatch):
    rc, out, _ = run(capsys, "logs", "-", "--json", stdin="INFO:     Application startup complete.\n", monkeypatch=monkeypatch)
    report = json.loads(out)
    assert [f for f in report["findings"] if f["severity"] != "info"] == []
    assert rc == report["exit_code"] == 0


def test_logs_human_output_shows_line_numbers(capsys, tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text(SINKS_LOG)
    rc, out, _ = run(capsys, "logs", str(log))
    assert "sinks-float32" in out and "     4 | " in out


# -- explain / list-checks -------------------------------------------------------------------------


def test_list_checks_and_explain(capsys):
    rc, out, _ = run(capsys, "list-checks", "--json")
    ids = [c["id"] for c in json.loads(out)["checks"]]
    for fixed in ("duplicate-triton", "torch-cuda-suffix", "sinks-float32", "bad-cuda-home"):
        assert fixed in ids
    rc, out, _ = run(capsys, "explain", "bad-cuda-home")
    assert rc == 0 and out.startswith("bad-cuda-home") and "CUDA" in out
    rc, out, _ = run(capsys, "explain", "sinks-float32", "--json")
    assert json.loads(out)["id"] == "sinks-float32"


# -- bad invocations: one line, exit 2 -------------------------------------------------------------


def test_missing_snapshot_file(capsys, tmp_path):
    assert_one_line_usage_error(*run(capsys, "check", "--from", str(tmp_path / "nope.json")), "nope.json", "no such file")


def test_snapshot_not_json(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  oops")
    assert_one_line_usage_error(*run(capsys, "check", "--from", str(bad)), "bad.json", "not JSON", "line 2")


def test_snapshot_of_another_schema(capsys, tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"schema": "something/else@9", "facts": {}}')
    assert_one_line_usage_error(*run(capsys, "check", "--from", str(other)), "something/else@9", "gptoss-doctor collect")


def test_unknown_check_id_in_only(capsys, tmp_path, plain_venv, bare_root):
    assert_one_line_usage_error(*run(capsys, "--only", "no-such-check", "--venv", str(plain_venv), env=bare_root), "no-such-check", "list-checks")


def test_unknown_id_to_explain(capsys):
    assert_one_line_usage_error(*run(capsys, "explain", "no-such-check"), "no-such-check", "list-checks")


def test_venv_that_is_not_a_venv(capsys, tmp_path):
    assert_one_line_usage_error(*run(capsys, "collect", "--venv", str(tmp_path)), str(tmp_path), "pyvenv.cfg")


def test_missing_log_file(capsys, tmp_path):
    assert_one_line_usage_error(*run(capsys, "logs", str(tmp_path / "gone.log")), "gone.log")


@pytest.mark.parametrize("argv", [["bogus"], ["check"], ["logs"], ["--deep-timeout", "soon"], ["explain"]])
def test_argparse_errors_are_one_line(capsys, argv, tmp_path):
    # an empty root: bare `logs` reads the deployed service's log, so it is an error only where nothing is deployed
    assert_one_line_usage_error(*run(capsys, *argv, env=Env(root=tmp_path, environ={"PATH": "/usr/bin:/bin"})))


def test_console_script_runs_as_a_process(broken_venv, tmp_path):
    """The real entry point, as a user runs it: exit code and stdout through a process boundary."""
    proc = subprocess.run(
        [sys.executable, "-m", "gptoss_doctor", "check", "--from", str(tmp_path / "missing.json")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# -- redaction -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["HF_TOKEN", "VLLM_API_KEY", "api-key", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "HUGGING_FACE_HUB_TOKEN"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["TIKTOKEN_ENCODINGS_BASE", "max_tokens", "tokenizer", "VLLM_USE_V1"])
def test_names_that_are_not_secrets(name):
    assert not is_secret_name(name)


def test_redaction_of_values_text_and_argv():
    tree = {"HF_TOKEN": "hf_abcdefghijklmnop", "api_key_set": True, "note": "token sk-abcdefghijklmnopq here",
            "argv": ["vllm", "serve", "m", "--api-key", "plain"], "url": "https://user:pw123@host/x"}
    got = redact_tree(tree)
    assert got["HF_TOKEN"] == MASK and got["api_key_set"] is True
    assert "abcdefghijklmnopq" not in got["note"]
    assert got["argv"][-1] == MASK
    assert "pw123" not in got["url"]
    assert redact_text("export HF_TOKEN=hf_abcdefghijkl") == "export HF_TOKEN=***"
    assert redact_argv(["--hf-token=hf_abcdefghijkl"]) == ["--hf-token=***"]


def test_secrets_never_reach_output(capsys, plain_venv, tmp_path):
    root = tmp_path / "root"
    unit = root / "etc/systemd/system/gptoss-vllm.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(f"[Service]\nEnvironment=HF_TOKEN=hf_servicesecret123\nExecStart={plain_venv}/bin/vllm serve m --api-key keyinargv123\n")
    env = Env(root=root, environ={"PATH": "/usr/bin", "HF_TOKEN": "hf_shellsecret1234", "VLLM_API_KEY": "shellkey5678"})
    for argv in (["--json", "--venv", str(plain_venv)], ["--venv", str(plain_venv)], ["collect", "--venv", str(plain_venv)]):
        _, out, _ = run(capsys, *argv, env=env)
        for secret in ("servicesecret123", "keyinargv123", "shellsecret1234", "shellkey5678"):
            assert secret not in out, (argv, secret)


# -- --deep ------------------------------------------------------------------------------------------


def test_deep_without_torch_says_so_and_stops(capsys, plain_venv, bare_root):
    rc, out, _ = run(capsys, "collect", "--deep", "--venv", str(plain_venv), env=bare_root)
    deep = json.loads(out)["facts"]["deep"]["value"]
    assert deep["torch_import"]["ok"] is False
    assert "No module named 'torch'" in deep["torch_import"]["error"]
    assert deep["cuda_init"]["ok"] is False and deep["cuda_init"]["error"] == "not run: torch did not import"
    assert deep["python"].startswith(str(plain_venv))


def test_deep_probe_that_crashes_keeps_the_steps_before(capsys, tmp_path, bare_root):
    v = uv_venv(tmp_path / "crash")
    (site_packages(v) / "torch").mkdir()
    # imports, then kills the interpreter at CUDA init the way a driver fault does
    (site_packages(v) / "torch" / "__init__.py").write_text(
        STANDIN + "import os\n__version__ = '2.8.0+cu128'\nclass version:\n    cuda = '12.8'\n"
        "class cuda:\n    @staticmethod\n    def is_available():\n        os.write(2, b'Segmentation fault in libcuda')\n        os._exit(139)\n"
    )
    rc, out, _ = run(capsys, "collect", "--deep", "--venv", str(v), env=bare_root)
    deep = json.loads(out)["facts"]["deep"]["value"]
    assert deep["torch_import"]["ok"] is True
    assert "exit 139" in deep["cuda_init"]["error"] and "Segmentation fault in libcuda" in deep["cuda_init"]["error"]


def test_deep_probe_that_hangs_is_cut_at_its_time_limit(capsys, tmp_path, bare_root):
    v = uv_venv(tmp_path / "hang")
    (site_packages(v) / "torch").mkdir()
    (site_packages(v) / "torch" / "__init__.py").write_text(STANDIN + "import time\ntime.sleep(30)\n")
    rc, out, _ = run(capsys, "collect", "--deep", "--deep-timeout", "1.5", "--venv", str(v), env=bare_root)
    deep = json.loads(out)["facts"]["deep"]["value"]
    assert deep["torch_import"]["error"] == "timed out after 1.5 s"
    assert deep["seconds"] < 10


def _cpu_torch_wheel() -> Path | None:
    """This machine's CPU torch wheel for the running Python (the venv is made with it)."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = Path("/opt/wheels").glob(f"torch-*+cpu-{tag}-*.whl") if Path("/opt/wheels").is_dir() else []
    return next(iter(wheels), None)


@pytest.mark.skipif(_cpu_torch_wheel() is None, reason="no CPU torch wheel for this Python in /opt/wheels on this machine")
def test_deep_on_real_cpu_torch(capsys, tmp_path_factory, bare_root):
    """Real torch (the CPU build): import and matmul work, CUDA is reported missing, Triton does not apply."""
    v = tmp_path_factory.mktemp("venvs") / "cpu-torch"
    uv_venv(v)
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(v / "bin/python"), str(_cpu_torch_wheel())], check=True)
    rc, out, _ = run(capsys, "collect", "--deep", "--venv", str(v), env=bare_root)
    facts = json.loads(out)["facts"]
    deep = facts["deep"]["value"]
    assert deep["torch_import"]["ok"] is True
    assert deep["torch_import"]["detail"]["version"] == facts["torch.build"]["value"]["version"]
    assert deep["cuda_init"]["ok"] is False and "is_available() is False" in deep["cuda_init"]["error"]
    assert deep["matmul"]["ok"] is True and deep["matmul"]["detail"]["device"].startswith("cpu")
    assert deep["triton_kernel"]["ok"] is None


# -- the snapshot recorded on a real H200 ------------------------------------------------------------

H200_REAL = Path(__file__).parent / "fixtures" / "snapshots" / "h200-real.json"


def test_real_h200_snapshot_judged_offline(capsys):
    """Recorded with `collect --deep` on the lent H200 (torch 2.11.0+cu130, no vLLM): judged here, without a GPU."""
    rc, out, _ = run(capsys, "check", "--from", str(H200_REAL), "--json")
    report = json.loads(out)
    gpus = report["facts"]["nvidia.gpus"]["value"]
    assert gpus[0]["name"] == "NVIDIA H200" and gpus[0]["compute_cap"] == "9.0"
    assert report["facts"]["torch.build"]["value"]["version"] == "2.11.0+cu130"
    assert all(report["facts"]["deep"]["value"][s]["ok"] for s in ("torch_import", "cuda_init", "matmul", "triton_kernel"))
    assert rc == report["exit_code"] == (1 if any(f["severity"] == "error" for f in report["findings"]) else 0)
    rc, out, _ = run(capsys, "check", "--from", str(H200_REAL))
    assert "1x NVIDIA H200 (cc 9.0, 140 GiB) · driver 580.159.04 (CUDA <= 13.0)" in out
    assert "triton_kernel ok" in out


# -- rendering and the speed contract ----------------------------------------------------------------


def test_evidence_lines_nest_one_level_and_drop_none():
    from gptoss_doctor.render import evidence_lines

    lines = evidence_lines({"cuda_home": {"path": "/opt/cuda", "nvcc": None}, "why": None, "ids": ["a", "b"], "dists": [{"name": "triton"}]})
    assert lines == ["cuda_home:", "  path: /opt/cuda", "ids: a, b", "dists:", '  - {"name": "triton"}']


def test_summary_of_a_rocm_box():
    from gptoss_doctor.render import summary_lines

    facts = {
        "nvidia.gpus": {"absent": "no nvidia-smi on PATH"},
        "rocm.gpus": {"value": [{"index": 0, "name": "AMD Instinct MI300X", "gfx": "gfx942", "memory_mib": 196592}]},
        "rocm.version": {"value": "6.4.1"},
        "venv": {"failed": "/opt/v (from service) is not a venv: no pyvenv.cfg there"},
    }
    lines = dict(summary_lines(facts))
    assert lines["gpu"] == "1x AMD Instinct MI300X (gfx942) · ROCm 6.4.1"
    assert lines["venv"].startswith("could not collect: /opt/v")
    assert "stack" not in lines


def test_json_path_imports_neither_rich_nor_torch(broken_venv, tmp_path):
    """--json must stay cheap: no rich, and never torch or vLLM (they take seconds to import)."""
    code = (
        "import sys, io, contextlib\n"
        "from gptoss_doctor.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()): rc = main(['--venv', {str(broken_venv)!r}, '--json'])\n"
        "heavy = sorted(m for m in ('rich', 'torch', 'vllm', 'triton') if m in sys.modules)\n"
        "print(rc, heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "1 []", proc.stderr
    # the text report too: plain ANSI, no rich
    proc = subprocess.run([sys.executable, "-c", code.replace(", '--json'", "")], capture_output=True, text=True,
                          env={**os.environ, "FORCE_COLOR": "1"})
    assert proc.stdout.strip() == "1 []", proc.stderr


# -- bad input: one line, exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["check", "--from", "-"], ["logs", "-"]])
def test_closed_stdin_is_one_line_not_an_internal_error(argv):
    proc = subprocess.run(["bash", "-c", '"$0" -m gptoss_doctor "$@" <&-', sys.executable, *argv],
                          capture_output=True, text=True, timeout=60)
    assert_one_line_usage_error(proc.returncode, proc.stdout, proc.stderr, "stdin is closed")


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "-inf", "soon"])
def test_deep_timeout_must_be_a_finite_positive_number(capsys, value):
    rc, out, err = run(capsys, "--deep", f"--deep-timeout={value}")
    assert_one_line_usage_error(rc, out, err, "--deep-timeout", repr(value))
    rc, out, err = run(capsys, "collect", f"--deep-timeout={value}")
    assert_one_line_usage_error(rc, out, err, "--deep-timeout")


@pytest.mark.parametrize("fact, shown", [
    (None, "fact 'nvidia.gpus' is null"),
    ("a string", "fact 'nvidia.gpus' is \"a string\""),
    ({"value": [], "absent": "both"}, "fact 'nvidia.gpus' is {"),
    ({}, "fact 'nvidia.gpus' is {}"),
])
def test_a_snapshot_fact_that_is_not_a_fact_is_named(capsys, monkeypatch, fact, shown):
    snap = {"schema": "gptoss-doctor/snapshot@1", "host": "h", "facts": {"nvidia.gpus": fact}}
    rc, out, err = run(capsys, "check", "--from", "-", stdin=json.dumps(snap), monkeypatch=monkeypatch)
    assert_one_line_usage_error(rc, out, err, shown, "gptoss-doctor collect")


def test_values_of_the_wrong_type_are_judged_not_crashed(capsys, monkeypatch):
    """Each fact a fact, but values of shapes this doctor does not write: the checks skip with
    the fact named, the header says what it could not read, nothing is an internal error."""
    facts = {"nvidia.gpus": {"value": "H200"}, "venv": {"value": ["x"]}, "service.serve": {"value": 3},
             "deep": {"value": {"torch_import": "yes"}}, "service.manager": {"value": None}}
    snap = {"schema": "gptoss-doctor/snapshot@1", "host": None, "facts": facts}
    rc, out, err = run(capsys, "check", "--from", "-", stdin=json.dumps(snap), monkeypatch=monkeypatch)
    assert rc in (0, 1) and "internal error" not in err and "crashed" not in out, err + out
    rc, out, err = run(capsys, "check", "--from", "-", "--json", stdin=json.dumps(snap), monkeypatch=monkeypatch)
    report = json.loads(out)
    assert report["checks"]["gpu-memory-held"].startswith("skipped: nvidia.gpus is a str")


def test_check_from_names_the_snapshot_and_when_it_was_taken(capsys, tmp_path):
    path = tmp_path / "gpu1.json"
    path.write_text(json.dumps({"schema": "gptoss-doctor/snapshot@1", "host": "gpu1", "doctor_version": "0.9",
                                "collected_at": "2026-11-30T10:00:00+00:00", "facts": {}}))
    rc, out, err = run(capsys, "check", "--from", str(path))
    assert f"check {path} (taken 2026-11-30T10:00:00+00:00 by gptoss-doctor 0.9)" in out.splitlines()[0]
    rc, out, err = run(capsys, "check", "--from", str(path), "--json")
    assert json.loads(out)["snapshot"] == {"from": str(path), "collected_at": "2026-11-30T10:00:00+00:00",
                                           "host": "gpu1", "doctor_version": "0.9"}


def test_list_checks_lists_the_log_signatures_too(capsys):
    from gptoss_doctor.logscan import load_signatures

    ids = [s.id for s in load_signatures()]
    rc, out, err = run(capsys, "list-checks", "--json")
    listed = json.loads(out)
    assert [s["id"] for s in listed["log_signatures"]] == ids and "duplicate-triton" in [c["id"] for c in listed["checks"]]
    rc, out, err = run(capsys, "list-checks")
    assert all(f"{i} " in out for i in ids)


def test_not_checked_is_said_in_text_and_json(capsys, monkeypatch):
    """A box with no venv and no GPU: never a bare 'no errors'; the JSON carries the same."""
    snap = {"schema": "gptoss-doctor/snapshot@1", "host": "laptop", "facts": {
        "venv": {"absent": "no venv: pass --venv PATH"}, "nvidia.gpus": {"absent": "no nvidia-smi on PATH"},
        "rocm.gpus": {"absent": "no amd-smi or rocm-smi"}, "service": {"absent": "no gptoss-vllm.service"}}}
    rc, out, err = run(capsys, "check", "--from", "-", "--json", stdin=json.dumps(snap), monkeypatch=monkeypatch)
    report = json.loads(out)
    gaps = {g["what"]: g for g in report["not_checked"]}
    assert set(gaps) == {"the vLLM venv", "the GPUs", "the deployed service"}
    assert "pass --venv PATH" in gaps["the vLLM venv"]["do"] and gaps["the vLLM venv"]["checks"]
    rc, out, err = run(capsys, "check", "--from", "-", stdin=json.dumps(snap), monkeypatch=monkeypatch)
    last = out.strip().splitlines()[-1]
    assert "NOT checked: the vLLM venv, the GPUs, the deployed service" in last and not last.startswith("no errors ·")
    assert "no vLLM venv found" in out and "pass --venv PATH" in out


@pytest.mark.parametrize("environ, colored", [({"FORCE_COLOR": "1"}, True), ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, False), ({}, False)])
def test_no_color_and_force_color(environ, colored):
    from gptoss_doctor.render import make_console, render_report
    from gptoss_doctor.report import build_report

    stream = io.StringIO()
    render_report(build_report([], {}, {"x": "ok"}, "h", 0.1), console=make_console(stream, environ=environ))
    assert ("\x1b[" in stream.getvalue()) is colored


def test_prose_wraps_to_the_width_and_commands_never_do():
    from gptoss_doctor.render import Console, render_finding

    stream = io.StringIO()
    cmd = "uv pip install --python /opt/gptoss/stacks/vllm-0.33.0/bin/python --reinstall-package torch torch==2.14.0+cu130"
    render_finding(Console(stream, color=False, width=60), {
        "id": "x", "severity": "error", "title": "a title " * 12, "evidence": {}, "links": [],
        "fix": {"text": "words " * 30, "commands": [cmd]}})
    lines = stream.getvalue().splitlines()
    assert ("          " + cmd) in lines
    assert all(len(line) <= 60 for line in lines if cmd not in line), lines
    assert sum(1 for line in lines if line.strip().startswith("words") or line.startswith("      fix: ")) >= 3


def test_nothing_of_the_machine_the_doctor_was_written_on_is_shown(capsys, kb):
    """explain (every check and log signature) and the findings of every check case show public
    URLs and the project's own files as sources, never a path of a development machine (a
    knowledge row's source may name one beside its URLs)."""
    from gptoss_doctor.findings import REGISTRY
    from gptoss_doctor.logscan import load_signatures
    from gptoss_doctor.report import build_report
    from test_checks import CASES, apply_case, load_base
    from gptoss_doctor.checks import run_one

    local = ("/work/", "/root/", "shared/reference", "shared/notes", "shared/data")
    for ident in [*REGISTRY, *(s.id for s in load_signatures())]:
        rc, out, _ = run(capsys, "explain", ident, "--json")
        entry = json.loads(out)
        assert not [x for x in local if x in json.dumps({k: entry[k] for k in ("text", "links")})], ident
    for path in CASES:
        case = json.loads(path.read_text())
        snap = apply_case(load_base(case["snapshot"]), case, path.stem)
        findings, _ = run_one(snap, kb, REGISTRY[path.parent.name])
        for f in build_report(findings, {}, {})["findings"]:
            assert all(link.startswith("https://") or not link.startswith("/") for link in f["links"]), (path, f["links"])
            assert not [x for x in local if x in json.dumps(f["links"])], (path, f["links"])


def test_the_venv_an_activated_shell_had_is_found_under_uv_run(tmp_path):
    """The README's `uv run gptoss-doctor` in a shell with a vLLM venv activated: uv gives the
    doctor its own venv as VIRTUAL_ENV; the doctor still judges the activated one."""
    import shutil

    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    served = tmp_path / "serve-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(served)], check=True)
    (served / "bin" / "vllm").write_text("#!/bin/sh\n# stand-in for vllm's entry point (tests)\n")
    (served / "bin" / "vllm").chmod(0o755)
    env = {**os.environ, "VIRTUAL_ENV": str(served), "PATH": f"{served / 'bin'}:{os.environ['PATH']}"}
    proc = subprocess.run([uv, "run", "--frozen", "--project", str(Path(__file__).resolve().parents[1]), "gptoss-doctor",
                           "collect"], capture_output=True, text=True, env=env, timeout=120)
    venv = json.loads(proc.stdout)["facts"]["venv"]["value"]
    assert venv["path"] == str(served) and venv["rule"] == "VIRTUAL_ENV of the parent process", proc.stderr[-500:]
