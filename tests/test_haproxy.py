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
            "gptoss,gptoss-2,0,0,0,1,,DRAIN,* L7OK\n"
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
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "crt.pem")], check=True, capture_output=True)
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


# -- the balancer before two stand-ins ---------------------------------------------------------------


@contextlib.contextmanager
def standin(site: Path):
    """One stand-in vLLM on a free loopback port: (process, port) once /health answers."""
    port = _free_port()
    # 50 ms a token: a 12-token stream is in flight for 0.6 s
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site), "VLLM_API_KEY": KEY, "GPTOSS_STANDIN_STARTUP_S": "0.1",
           "GPTOSS_STANDIN_TOKEN_S": "0.05"}
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", MODEL, "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the stand-in never became healthy"
            time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def served_count(port: int) -> int:
    _code, body = request(port, "GET", "/metrics")
    line = next(l for l in body.decode().splitlines() if l.startswith("vllm:request_success_total"))
    return int(float(line.rsplit(" ", 1)[1]))


def runtime(tmp: Path, action: str, server: str, timeout_s: float | None = None) -> dict:
    r = subprocess.run(["sh", "-c", H.runtime_command(action, server, timeout_s, socket=str(tmp / "admin.sock"))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return H.parse_runtime_output(r.stdout)


def stream(port: int, path: str = "/v1/completions", max_tokens: int = 12) -> tuple[list[float], list[bytes]]:
    """A streamed completion: (arrival time of each event, the events)."""
    body = {**COMPLETION, "max_tokens": max_tokens, "stream": True}
    if path.endswith("chat/completions"):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json",
                                                               "Authorization": f"Bearer {KEY}"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("content-type", "").startswith("text/event-stream")
    t0, times, events = time.monotonic(), [], []
    for line in r:
        if line.startswith(b"data: "):
            times.append(time.monotonic() - t0)
            events.append(line[6:].strip())
    conn.close()
    return times, events


@pytest.fixture()
def lb(standin_site, tmp_path):
    """Two stand-ins behind the balancer (checks every 200 ms): (haproxy, balancer port, {server: (proc, port)})."""
    with standin(standin_site) as a, standin(standin_site) as b:
        port = _free_port()
        servers = {"gptoss-1": a, "gptoss-2": b}
        cfg = H.Balancer("127.0.0.1", port, tuple(H.Server(n, "127.0.0.1", p) for n, (_proc, p) in servers.items()),
                         check_interval_ms=200, stats_port=_free_port())
        with running_haproxy(tmp_path, H.haproxy_cfg(cfg, _paths(tmp_path)), port) as proc:
            deadline = time.monotonic() + 5
            while any(s["status"] != "UP" for s in _stat(tmp_path).values()):
                assert time.monotonic() < deadline, _stat(tmp_path)
                time.sleep(0.05)
            yield proc, port, servers, cfg


def _stat(tmp: Path) -> dict:
    import socket as sk

    s = sk.socket(sk.AF_UNIX)
    s.connect(str(tmp / "admin.sock"))
    s.sendall(b"show stat\n")
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return H.parse_stat(out.decode())


@needs_haproxy
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_streams_pass_through_the_balancer_unbuffered(lb, path):
    _proc, port, _servers, _cfg = lb
    times, events = stream(port, path, max_tokens=12)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == ("chat.completion.chunk" if "chat" in path else "text_completion") for c in chunks)
    # the first token arrives long before the last: nothing waits for the whole response
    assert times[0] < times[-2] / 2, times


@needs_haproxy
def test_the_key_passes_through_to_the_backend(lb):
    _proc, port, _servers, _cfg = lb
    assert request(port, "POST", "/v1/completions", body=COMPLETION)[0] == 401
    assert request(port, "POST", "/v1/completions", key=KEY, body=COMPLETION)[0] == 200


@needs_haproxy
def test_a_drained_server_gets_no_new_request_and_its_sessions_are_waited_for(lb, tmp_path):
    _proc, port, servers, _cfg = lb
    said = runtime(tmp_path, "drain", "gptoss-1", 0)
    assert said["status"] == "DRAIN"
    before = {n: served_count(p) for n, (_pr, p) in servers.items()}
    for _ in range(10):
        assert request(port, "POST", "/v1/completions", key=KEY, body=COMPLETION)[0] == 200
    after = {n: served_count(p) for n, (_pr, p) in servers.items()}
    assert after["gptoss-1"] == before["gptoss-1"] and after["gptoss-2"] == before["gptoss-2"] + 10
    assert runtime(tmp_path, "ready", "gptoss-1")["status"] == "UP"

    # a long stream in flight on gptoss-2: draining it waits until the stream has ended
    runtime(tmp_path, "drain", "gptoss-1", 0)
    done = []
    t = threading.Thread(target=lambda: done.append(stream(port, max_tokens=16)))
    t.start()
    deadline = time.monotonic() + 5
    while _stat(tmp_path)["gptoss-2"]["scur"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    runtime(tmp_path, "ready", "gptoss-1")
    said = runtime(tmp_path, "drain", "gptoss-2", 20)
    t.join(timeout=30)
    assert said["scur"] == 0 and said["waited"] > 0 and done and done[0][1][-1] == b"[DONE]"


@needs_haproxy
def test_a_killed_server_costs_no_new_request_and_leaves_within_its_check_interval(lb, tmp_path):
    _proc, port, servers, cfg = lb
    proc, _p = servers["gptoss-1"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t_kill = time.monotonic()
    out_after: list[float] = []

    def watch() -> None:
        while _stat(tmp_path)["gptoss-1"]["status"] != "DOWN":
            time.sleep(0.01)
        out_after.append(time.monotonic() - t_kill)

    watcher = threading.Thread(target=watch)
    watcher.start()
    codes = [request(port, "POST", "/v1/completions", key=KEY, body=COMPLETION)[0] for _ in range(20)]
    assert codes == [200] * 20  # refused connections are retried on the other server
    watcher.join(timeout=10)
    # one failed check takes it out (fall 1): within one interval (+ the check itself)
    assert out_after and out_after[0] < cfg.check_interval_ms / 1000 + 0.2, out_after


@needs_haproxy
def test_a_reload_with_a_server_removed_drops_no_connection(lb, tmp_path):
    proc, port, servers, cfg = lb
    results: list = []

    def client(n: int) -> None:
        for _ in range(n):
            try:
                times, events = stream(port, max_tokens=8)
                results.append(events[-1] == b"[DONE]")
            except Exception as e:  # noqa: BLE001 - a dropped connection is the failure counted
                results.append(repr(e))

    threads = [threading.Thread(target=client, args=(6,)) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    smaller = H.Balancer(cfg.bind_address, cfg.port, cfg.servers[1:], cfg.check_interval_ms,
                         stats_port=cfg.stats_port)
    (tmp_path / "haproxy.cfg").write_text(H.haproxy_cfg(smaller, _paths(tmp_path)))
    proc.send_signal(signal.SIGUSR2)  # master-worker reload, as `systemctl reload haproxy` does
    for t in threads:
        t.join(timeout=60)
    assert results == [True] * 24, results
    deadline = time.monotonic() + 5
    while set(_stat(tmp_path)) != {"gptoss-2"}:
        assert time.monotonic() < deadline, _stat(tmp_path)
        time.sleep(0.05)


@needs_haproxy
def test_show_stat_command_reads_the_runtime_socket(lb, tmp_path):
    r = subprocess.run(["sh", "-c", H.show_stat_command(str(tmp_path / "admin.sock"))], capture_output=True, text=True)
    assert r.returncode == 0 and set(H.parse_stat(r.stdout)) == {"gptoss-1", "gptoss-2"}


@needs_haproxy
def test_tls_endpoint_serves_with_the_sites_certificate(standin_site, tmp_path):
    import ssl

    _self_signed(tmp_path)
    with standin(standin_site) as (_proc, vllm_port):
        port = _free_port()
        cfg = H.Balancer("127.0.0.1", port, (H.Server("gptoss-1", "127.0.0.1", vllm_port),), tls=True,
                         stats_port=_free_port())
        with running_haproxy(tmp_path, H.haproxy_cfg(cfg, _paths(tmp_path)), port):
            time.sleep(0.5)  # the first check marks the server up
            ctx = ssl.create_default_context(cafile=str(tmp_path / "crt.pem"))
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=ctx)
            conn.request("POST", "/v1/completions", body=json.dumps(COMPLETION),
                         headers={"content-type": "application/json", "Authorization": f"Bearer {KEY}"})
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["choices"]
            plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            with pytest.raises((http.client.HTTPException, ConnectionError)):
                plain.request("GET", "/health")
                plain.getresponse()


@needs_haproxy
def test_a_plain_request_on_a_killed_vllm_is_answered_by_another_host(standin_site, tmp_path):
    """balancer -> a host's front -> vLLM, twice: vLLM killed while plain (not streamed) requests
    are in flight on it; its front answers 502 at once, which the balancer may retry on the other
    host: at most the requests in flight on the killed host fail, and every request sent once
    the check has taken it out is served."""
    with standin(standin_site) as (proc_a, port_a), standin(standin_site) as (_proc_b, port_b):
        fronts = []
        with contextlib.ExitStack() as stack:
            for name, vllm_port in (("a", port_a), ("b", port_b)):
                d = tmp_path / name
                d.mkdir()
                (d / "auth").write_text(H.auth_file_text(KEY))
                port = _free_port()
                stack.enter_context(running_haproxy(d, H.haproxy_cfg(H.Front("127.0.0.1", port, "127.0.0.1", vllm_port),
                                                                     _paths(d)), port))
                fronts.append(port)
            lb_port = _free_port()
            cfg = H.Balancer("127.0.0.1", lb_port, (H.Server("a", "127.0.0.1", fronts[0]), H.Server("b", "127.0.0.1", fronts[1])),
                             check_interval_ms=200, stats_port=_free_port())
            stack.enter_context(running_haproxy(tmp_path, H.haproxy_cfg(cfg, _paths(tmp_path)), lb_port))
            time.sleep(0.6)  # both servers checked up
            codes: list = []
            body = {**COMPLETION, "max_tokens": 12}  # 0.6 s of generation
            threads = [threading.Thread(target=lambda: codes.append(request(lb_port, "POST", "/v1/completions", key=KEY,
                                                                            body=body)[0])) for _ in range(6)]
            for t in threads:
                t.start()
            time.sleep(0.2)
            on_a = _stat(tmp_path)["a"]["scur"]
            assert on_a > 0  # some are in flight on the host about to die
            proc_a.send_signal(signal.SIGKILL)
            for t in threads:
                t.join(timeout=30)
            assert len(codes) == 6 and len([c for c in codes if c != 200]) <= on_a, (codes, on_a)
            deadline = time.monotonic() + 2
            while _stat(tmp_path)["a"]["status"] != "DOWN":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert [request(lb_port, "POST", "/v1/completions", key=KEY, body=COMPLETION)[0] for _ in range(10)] == [200] * 10
