"""HAProxy as the balancer and as each host's front (deploys/gptoss_deploy/haproxy.py): the rendered
config is checked by the real binary (`haproxy -c`), then run on loopback in front of the stand-in
vLLM (which, like real 0.26.0, serves /invocations and more without a key): only the allow-listed
routes answer through the front, and only with the key; the balancer retries a request that never
reached a model, drains a server through the runtime socket, and passes streams through.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploys"))
from gptoss_deploy import haproxy as H  # noqa: E402

from test_standin_routes import KEY, MODEL, OPEN_ON_0_26, _free_port, install_standin, serving  # noqa: E402

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (apt-get install -y haproxy)")


def _balancer(**kw) -> H.Balancer:
    servers = (H.Server("gptoss-1", "10.0.0.11", 8000), H.Server("gptoss-2", "10.0.0.12", 8000))
    return H.Balancer(**{"bind_address": "0.0.0.0", "port": 8000, "servers": servers, **kw})


# -- the rendered text (pure) -------------------------------------------------------------------


def test_balancer_config_has_what_the_issue_asks():
    cfg = H.haproxy_cfg(_balancer())
    for line in ("balance leastconn", "option httpchk GET /health", "option redispatch 1",
                 "no option http-buffer-request", "no option httpclose",
                 f"stats socket {H.ADMIN_SOCKET} mode 660 level admin", "bind 127.0.0.1:8404",
                 "server gptoss-1 10.0.0.11:8000", "server gptoss-2 10.0.0.12:8000", "bind 0.0.0.0:8000"):
        assert line in cfg, line
    assert "retry-on conn-failure empty-response response-timeout" in cfg
    assert "timeout server 30m" in cfg and "timeout tunnel 1h" in cfg
    assert "ssl crt" not in cfg
    # the key passes through untouched: nothing rewrites or deletes Authorization
    assert "authorization" not in cfg.lower()


def test_tls_binds_with_the_certificate_and_same_input_same_bytes():
    cfg = H.haproxy_cfg(_balancer(tls=True))
    assert f"bind 0.0.0.0:8000 ssl crt {H.TLS_CERT_PATH}" in cfg
    assert H.haproxy_cfg(_balancer(tls=True)) == cfg  # a second deploy changes nothing


def test_front_config_allow_lists_and_never_holds_the_key():
    cfg = H.haproxy_cfg(H.Front("10.0.0.11", 8000, "127.0.0.1", 8001, ("10.1.0.0/16",)))
    assert "bind 10.0.0.11:8000" in cfg and "server vllm 127.0.0.1:8001" in cfg
    for route in H.API_ROUTES + H.PROBE_ROUTES:
        assert route in cfg
    assert "/invocations" not in cfg
    assert f"-f {H.AUTH_FILE}" in cfg and f"src -f {H.METRICS_ALLOW_FILE}" in cfg
    assert "Bearer" not in cfg
    no_scrapers = H.haproxy_cfg(H.Front("10.0.0.11", 8000, "127.0.0.1", 8001))
    assert "acl metrics_client always_false" in no_scrapers


def test_parse_stat_reads_the_backend_servers():
    text = ("# pxname,svname,qcur,qmax,scur,smax,slim,status,check_status\n"
            "gptoss,FRONTEND,,,3,5,,OPEN,\n"
            "gptoss,gptoss-1,0,0,2,4,,UP,L7OK\n"
            "gptoss,gptoss-2,0,0,0,1,,DRAIN,L7OK\n"
            "gptoss,BACKEND,0,0,2,5,,UP,\n"
            "stats,FRONTEND,,,0,1,,OPEN,\n")
    assert H.parse_stat(text) == {"gptoss-1": {"status": "UP", "scur": 2, "check": "L7OK"},
                                  "gptoss-2": {"status": "DRAIN", "scur": 0, "check": "L7OK"}}


# -- the real binary --------------------------------------------------------------------------------


def _paths(tmp: Path) -> H.Paths:
    return H.Paths(admin_socket=str(tmp / "admin.sock"), auth_file=str(tmp / "auth"),
                   metrics_allow_file=str(tmp / "metrics-allow"), tls_cert=str(tmp / "cert.pem"), chroot=None)


def _check(tmp: Path, text: str) -> subprocess.CompletedProcess:
    (tmp / "haproxy.cfg").write_text(text)
    return subprocess.run([HAPROXY, "-c", "-f", str(tmp / "haproxy.cfg")], capture_output=True, text=True)


def _self_signed(tmp: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gptoss-lb",
                    "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "crt.pem")], check=True, capture_output=True)
    (tmp / "cert.pem").write_bytes((tmp / "crt.pem").read_bytes() + (tmp / "key.pem").read_bytes())


@needs_haproxy
@pytest.mark.parametrize("tls", [False, True])
def test_haproxy_accepts_the_balancer_config(tmp_path, tls):
    if tls:
        _self_signed(tmp_path)
    r = _check(tmp_path, H.haproxy_cfg(_balancer(tls=tls, stats_port=_free_port()), _paths(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_haproxy
def test_haproxy_accepts_the_front_config(tmp_path):
    (tmp_path / "auth").write_text(H.auth_file_text("k"))
    (tmp_path / "metrics-allow").write_text(H.metrics_allow_text(("127.0.0.1",)))
    r = _check(tmp_path, H.haproxy_cfg(H.Front("127.0.0.1", 8000, "127.0.0.1", 8001, ("127.0.0.1",)), _paths(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr


@contextlib.contextmanager
def running_haproxy(tmp: Path, text: str, wait_port: int):
    """haproxy in master-worker mode in the foreground (-W -db) with `text` as its config."""
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(text)
    proc = subprocess.Popen([HAPROXY, "-W", "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", wait_port, timeout=1).connect()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "haproxy did not listen"
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def request(port: int, method: str, path: str, key: str | None = None, body: dict | None = None,
            headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
    hdrs = {"content-type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    conn.request(method, path, body=data, headers=hdrs)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


COMPLETION = {"model": MODEL, "prompt": "hello there", "max_tokens": 4}


@pytest.fixture(scope="module")
def standin_site(tmp_path_factory):
    return install_standin(tmp_path_factory.mktemp("standin"), "0.26.0")


def _port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def front(standin_site, tmp_path_factory):
    """The stand-in on loopback, and a front before it whose scrapers list holds 127.0.0.2 only."""
    tmp = tmp_path_factory.mktemp("front")
    (tmp / "auth").write_text(H.auth_file_text(KEY))
    (tmp / "metrics-allow").write_text(H.metrics_allow_text(("127.0.0.2",)))
    with serving(standin_site, ["vllm.entrypoints.cli.main", "serve", MODEL]) as base:
        port = _free_port()
        text = H.haproxy_cfg(H.Front("127.0.0.1", port, "127.0.0.1", _port_of(base), ("127.0.0.2",)), _paths(tmp))
        with running_haproxy(tmp, text, port):
            yield port, _port_of(base)


@needs_haproxy
def test_front_refuses_every_route_outside_the_allow_list(front):
    port, vllm_port = front
    for method, path in sorted(OPEN_ON_0_26):
        assert request(vllm_port, method, path)[0] != 401  # the stand-in itself answers it without a key
        if path in H.PROBE_ROUTES:
            continue
        code, _ = request(port, method, path, key=KEY)
        assert code in (403, 404), (path, code)
    # spellings that are not the allow-listed strings do not pass either
    for path in ("/v1/completions/../../invocations", "//v1/completions", "/v1/completions/", "/V1/models",
                 "/invocation%73", "/openapi.json?x=/v1/models"):
        assert request(port, "POST", path, key=KEY)[0] in (403, 404), path


@needs_haproxy
def test_front_checks_the_key_itself(front):
    port, _ = front
    for method, path in (("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                         ("POST", "/v1/responses")):
        assert request(port, method, path)[0] == 401, path
        assert request(port, method, path, key="wrong")[0] == 401, path
        assert request(port, method, path, headers={"Authorization": f"bearer {KEY}"})[0] == 401, path
    code, body = request(port, "POST", "/v1/completions", key=KEY, body=COMPLETION)
    assert code == 200 and json.loads(body)["choices"]
    code, body = request(port, "POST", "/v1/chat/completions", key=KEY,
                         body={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert code == 200 and json.loads(body)["choices"]
    assert request(port, "GET", "/v1/models", key=KEY)[0] == 200
    assert request(port, "GET", "/health")[0] == 200 and request(port, "GET", "/version")[0] == 200


@needs_haproxy
def test_front_serves_metrics_only_to_the_scrapers(front):
    port, _ = front
    assert request(port, "GET", "/metrics")[0] == 403  # from 127.0.0.1, not in the list
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    conn.request("GET", "/metrics")
    r = conn.getresponse()
    assert r.status == 200 and b"vllm:" in r.read()
