"""The stand-in vLLM answers like real vLLM 0.26.0 did (issue 15, measured on an H200): with an API
key set, `/v1/*` and `/inference/*` need it, while `/invocations` (a full completion) and the other
routes outside vLLM's path-prefix check answer without it. Served on loopback from the files the
stand-in wheel carries (tests/standins/build.py), so the fleet tests prove a front closes them.

The doctor's reading of the stand-in's SOURCE (gptoss_doctor.collect.exposure) must agree with what
the running stand-in does: the routes it parses as open are exactly those answering without the key.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

KEY = "sk-test-standin-routes"
MODEL = "openai/gpt-oss-20b"
OPEN_ON_0_26 = {  # what real 0.26.0 answered without the key (issue 15)
    ("POST", "/invocations"), ("GET", "/metrics"), ("GET", "/load"), ("GET", "/ping"), ("GET", "/openapi.json"),
    ("GET", "/docs"), ("GET", "/redoc"), ("POST", "/tokenize"), ("POST", "/detokenize"),
    ("POST", "/generative_scoring"), ("POST", "/scale_elastic_ep"), ("POST", "/is_scaling_elastic_ep"),
    ("GET", "/health"), ("GET", "/version"),
}
GUARDED = {("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")}


def _build():
    spec = importlib.util.spec_from_file_location("standins_build", Path(__file__).parent / "standins" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _spec(build, version: str):
    flags = {f: "value" for f in ("--model", "--host", "--port", "--api-key", "--max-model-len")}
    flags["--served-model-name"] = "list"
    return build.VllmSpec(version=version, requires=[], requires_python=">=3.10", flags=flags,
                          log_style="new", registry_style="enum")


def install_standin(tmp: Path, version: str) -> Path:
    """The stand-in vllm (and torch) files as a wheel would install them, under tmp/site."""
    build = _build()
    site = tmp / "site"
    for rel, data in build.vllm_files(_spec(build, version)).items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    for src in (build.SRC / "torch").rglob("*.py"):
        dest = site / src.relative_to(build.SRC / "torch")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
    (site / "torch" / "version.py").write_text("__version__ = '2.11.0+cu130'\ncuda = '13.0'\n")
    return site


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, method: str, path: str, key: str | None = None) -> tuple[int, bytes]:
    body = None
    if method == "POST":
        body = json.dumps({"model": MODEL, "prompt": "hello there", "max_tokens": 4, "tokens": [1, 2],
                           "new_data_parallel_size": 2}).encode()
    req = urllib.request.Request(base + path, data=body, method=method,
                                 headers={"content-type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def serving(site: Path, argv: list[str]):
    """The stand-in at `site` started with `argv` on a free loopback port, VLLM_API_KEY set (as the
    deploy sets it); yields the base URL once /health answers 200."""
    port = _free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "VLLM_API_KEY": KEY,
           "GPTOSS_STANDIN_STARTUP_S": "0.1"}
    proc = subprocess.Popen([sys.executable, "-m", *argv, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if _call(base, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        else:
            pytest.fail("the stand-in never became healthy")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The 0.26.0 stand-in serving on loopback with an API key."""
    site = install_standin(tmp_path_factory.mktemp("standin"), "0.26.0")
    with serving(site, ["vllm.entrypoints.cli.main", "serve", MODEL]) as base:
        yield site, base


def test_invocations_serves_a_completion_without_the_key(served):
    _site, base = served
    status, body = _call(base, "POST", "/invocations")
    assert status == 200
    answer = json.loads(body)
    assert answer["object"] == "text_completion" and answer["choices"][0]["text"].strip()


def test_v1_needs_the_key_and_serves_with_it(served):
    _site, base = served
    for method, path in sorted(GUARDED):
        assert _call(base, method, path)[0] == 401, path
        assert _call(base, method, path, key="wrong")[0] == 401, path
        assert _call(base, method, path, key=KEY)[0] == 200, path


def test_the_routes_real_0_26_left_open_answer_without_the_key(served):
    _site, base = served
    answered = {(m, p): _call(base, m, p)[0] for m, p in sorted(OPEN_ON_0_26)}
    assert all(code != 401 and code < 500 for code in answered.values()), answered
    # every one exists (no 404/405): the stand-in serves the route, it is not merely unguarded
    assert all(code not in (404, 405) for code in answered.values()), answered
    assert _call(base, "GET", "/no-such-route")[0] == 404


def test_inference_prefix_is_guarded_from_0_22(served):
    _site, base = served
    assert _call(base, "POST", "/inference/v1/generate")[0] == 401
    assert _call(base, "POST", "/inference/v1/generate", key=KEY)[0] == 200


def test_the_doctor_reads_the_same_open_routes_from_the_source(served):
    """The doctor's source reading of this install names exactly the routes that answered without
    the key: its guard prefixes and its route list agree with the running server."""
    from gptoss_doctor.collect.exposure import read_http_surface

    site, base = served
    surface = read_http_surface([site])
    assert surface["guard"]["prefixes"] == ["/v1", "/v2", "/inference"]
    registered = {(m, r["path"]) for r in surface["routes"] for m in r["methods"]}
    parsed_open = {(m, p) for m, p in registered if not p.startswith(tuple(surface["guard"]["prefixes"]))}
    served_open = {(m, p) for m, p in registered if _call(base, m, p)[0] != 401}
    assert parsed_open == served_open
    assert OPEN_ON_0_26 <= parsed_open


@pytest.mark.parametrize("version,prefixes", [("0.10.1", ["/v1"]), ("0.20.2", ["/v1"]), ("0.28.0", ["/v1", "/v2", "/inference", "/cohere"]),
                                              ("0.33.0", ["/v1", "/v2", "/inference", "/cohere"])])
def test_the_key_check_follows_the_era(tmp_path, version, prefixes):
    """Older and newer stand-ins keep the check where that era of vLLM kept it, with its prefixes."""
    from gptoss_doctor.collect.exposure import read_http_surface

    site = install_standin(tmp_path, version)
    guard = read_http_surface([site])["guard"]
    assert guard["prefixes"] == prefixes
    assert guard["file"].startswith("vllm/entrypoints/")


def test_the_old_api_server_entry_keeps_its_key_check(tmp_path):
    """0.10-0.15 kept the check in entrypoints/openai/api_server.py, the module `python -m` runs:
    the stand-in's file is both, and guards /v1 only (so /inference/v1/generate is open)."""
    site = install_standin(tmp_path, "0.10.1")
    with serving(site, ["vllm.entrypoints.openai.api_server", "--model", MODEL]) as base:
        assert _call(base, "GET", "/v1/models")[0] == 401
        assert _call(base, "GET", "/v1/models", key=KEY)[0] == 200
        assert _call(base, "POST", "/invocations")[0] == 200
        assert _call(base, "POST", "/inference/v1/generate")[0] == 200
