"""HAProxy's configuration and runtime API, as pure functions (Debian's haproxy package runs it).

Two modes of one renderer, `haproxy_cfg`:
- the balancer (`Balancer`, hosts of the `gptoss_lb` inventory group): one frontend, every
  serving host a backend server, health-checked on /health, least connections; a request that
  never reached a model is retried on another server; streams pass through unbuffered.
- the front (`Front`, on a serving host that answers beyond loopback): vLLM listens only where
  the front reaches it; from the network only the allow-listed routes answer, and the API key is
  checked here as well (vLLM's own check covers only some path prefixes: vllm-project/vllm#58144).

Both keep the stats and the runtime socket (`ADMIN_SOCKET`, level admin) on the host itself.
The key never appears in the config: the front reads `Bearer <key>` from `AUTH_FILE` (0640
root:haproxy) as a pattern file, so it is in no argv, no log and no world-readable file.

The runtime part (`runtime_script`) is the python3 program the upgrade runs on the balancer host
to drain a server, wait for its sessions to reach 0, and put it back.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

CFG_PATH = "/etc/haproxy/haproxy.cfg"
ADMIN_SOCKET = "/run/haproxy/admin.sock"
AUTH_FILE = "/etc/haproxy/gptoss-auth"  # "Bearer <key>": the front's key check (0640 root:haproxy)
METRICS_ALLOW_FILE = "/etc/haproxy/gptoss-metrics-allow"  # one address or CIDR per line
TLS_CERT_PATH = "/etc/haproxy/gptoss.pem"  # certificate + key, 0640 root:haproxy
BACKEND = "gptoss"  # the balancer's backend: `set server gptoss/<host> state drain`
FRONT_BACKEND = "vllm"
# What the front answers from the network (issue: only the routes we mean to serve).
API_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models")
PROBE_ROUTES = ("/health", "/version")  # no key, as vLLM: the balancer's check and the health gate
METRICS_ROUTE = "/metrics"
# Generations of minutes: a server may think (no byte) that long; a stream stays open longer.
TIMEOUT_SERVER = "30m"
TIMEOUT_CLIENT = "30m"
TIMEOUT_TUNNEL = "1h"


@dataclass(frozen=True)
class Paths:
    """Where the rendered config points; a test renders into a temporary directory."""

    admin_socket: str = ADMIN_SOCKET
    auth_file: str = AUTH_FILE
    metrics_allow_file: str = METRICS_ALLOW_FILE
    tls_cert: str = TLS_CERT_PATH
    chroot: str | None = "/var/lib/haproxy"


@dataclass(frozen=True)
class Server:
    name: str  # the inventory host name: the server's name in the backend (drain/ready by it)
    address: str
    port: int


@dataclass(frozen=True)
class Balancer:
    bind_address: str
    port: int
    servers: tuple[Server, ...]
    check_interval_ms: int = 1000
    tls: bool = False  # bind with TLS_CERT_PATH
    stats_address: str = "127.0.0.1"
    stats_port: int = 8404


@dataclass(frozen=True)
class Front:
    bind_address: str  # the host's address (or 0.0.0.0): where clients and the balancer reach it
    port: int
    vllm_address: str  # where vLLM itself listens: loopback, or only where the front reaches it
    vllm_port: int
    metrics_allow: tuple[str, ...] = ()  # scrapers' addresses/CIDRs; empty: /metrics refused to all


def _global(p: Paths) -> list[str]:
    return [
        "global",
        "    log /dev/log local0 notice",
        *([f"    chroot {p.chroot}"] if p.chroot else []),
        # The runtime API: drain/ready and `show stat` for the upgrade and the doctor; root and
        # the haproxy group only (the directory is Debian's, 0755 haproxy).
        f"    stats socket {p.admin_socket} mode 660 level admin",
        "    stats timeout 30s",
        "    user haproxy",
        "    group haproxy",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        # Streams (SSE) pass as they come: no waiting for a whole request or response, and
        # keep-alive on both sides (httpclose would cut every stream's connection reuse).
        "    no option http-buffer-request",
        "    no option httpclose",
        "    timeout connect 3s",
        f"    timeout client {TIMEOUT_CLIENT}",
        f"    timeout server {TIMEOUT_SERVER}",
        f"    timeout tunnel {TIMEOUT_TUNNEL}",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 30s",
        "    timeout queue 60s",
        "    timeout client-fin 30s",
        "    timeout server-fin 30s",
        "",
    ]


def _balancer(b: Balancer, p: Paths) -> list[str]:
    tls = f" ssl crt {p.tls_cert} alpn http/1.1" if b.tls else ""
    inter = b.check_interval_ms
    lines = [
        f"frontend {BACKEND}",
        f"    bind {b.bind_address}:{b.port}{tls}",
        # The Authorization header passes untouched: each host's front (and vLLM) checks the key.
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance leastconn",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        # A request that got no answer from a model goes to another server: connection refused
        # or reset before any response byte, or a host's front answering 503 (its vLLM refused
        # the connection) or 502 (its vLLM closed it without a response: killed, restarting).
        # Nothing has reached the client then, so the retry is invisible to it. Until the check
        # marks a dead server down, a redispatch may pick it again (least connections: it has
        # none), so a request in flight on a killed host can still fail: at most those.
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout 502 503",
        # fall 1: a failed check takes the server out at once (within one interval). Its
        # sessions are left to finish: a check failing once must not cut the streams in flight.
        # Between checks, one answer that says "no model here" (a 5xx, a refused or reset
        # connection: HAProxy's layer-7 observation) takes it out too, so that no retry picks it
        # again; the checks bring it back (rise 2). The cost: a vLLM 500 also takes its host out
        # for two check intervals.
        f"    default-server check inter {inter}ms fastinter {max(100, inter // 2)}ms downinter {inter}ms "
        "fall 1 rise 2 observe layer7 error-limit 1 on-error mark-down",
    ]
    lines += [f"    server {s.name} {_hostport(s.address, s.port)}" for s in b.servers]
    lines += [
        "",
        "frontend stats",
        f"    bind {b.stats_address}:{b.stats_port}",
        "    stats enable",
        "    stats uri /",
        "    stats refresh 5s",
        "    no log",
        "",
    ]
    return lines


def _front(f: Front, p: Paths) -> list[str]:
    api = " ".join(API_ROUTES)
    probes = " ".join(PROBE_ROUTES)
    metrics_src = f"src -f {p.metrics_allow_file}" if f.metrics_allow else "always_false"
    return [
        f"frontend {BACKEND}",
        f"    bind {_hostport(f.bind_address, f.port)}",
        # `path` is the raw path (no query, no decoding): only these exact strings pass, and
        # vLLM routes none of them elsewhere.
        f"    acl api_route path {api}",
        f"    acl probe_route path {probes}",
        f"    acl metrics_route path {METRICS_ROUTE}",
        f"    acl metrics_client {metrics_src}",
        f"    acl has_key req.hdr(authorization) -m str -f {p.auth_file}",
        "    http-request deny deny_status 403 if metrics_route !metrics_client",
        "    http-request deny deny_status 404 unless api_route or probe_route or metrics_route",
        "    http-request deny deny_status 401 if api_route !has_key",
        f"    default_backend {FRONT_BACKEND}",
        "",
        f"backend {FRONT_BACKEND}",
        # vLLM restarting or killed: answered at once (503 refused, 502 closed without a
        # response), no retry here: a retry would wait HAProxy's 1 s turn-around on the same
        # dead server, where the balancer retries on another host at once, and /health fails
        # fast so the balancer's check takes the host out within its interval.
        "    retries 0",
        f"    server vllm {_hostport(f.vllm_address, f.vllm_port)}",
        "",
    ]


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def haproxy_cfg(mode: Balancer | Front, paths: Paths = Paths()) -> str:
    """/etc/haproxy/haproxy.cfg for the balancer or a host's front (pure; the same input gives
    the same bytes, so a second deploy changes nothing)."""
    body = _balancer(mode, paths) if isinstance(mode, Balancer) else _front(mode, paths)
    what = "balancer" if isinstance(mode, Balancer) else "front of vLLM on this host"
    return "\n".join([f"# Written by the gptoss deploy: the {what}. Changes here are overwritten.", ""]
                     + _global(paths) + body)


def auth_file_text(api_key: str) -> str:
    return f"Bearer {api_key}\n"


def metrics_allow_text(allow: tuple[str, ...]) -> str:
    return "".join(f"{a}\n" for a in allow)


# -- the runtime API --------------------------------------------------------------------------------


def parse_stat(csv_text: str, backend: str = BACKEND) -> dict[str, dict]:
    """`show stat` CSV -> {server name: {"status", "scur", "check"}} for `backend`'s servers."""
    text = csv_text.lstrip("# ")
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND", None):
            # "* L7OK": a check is running now, the last one said L7OK
            out[row["svname"]] = {"status": row.get("status", ""), "scur": int(row.get("scur") or 0),
                                  "check": (row.get("check_status") or "").removeprefix("* ")}
    return out


# Runs with python3 on the balancer host (root): `SOCKET drain|ready|stat BACKEND SERVER [TIMEOUT]`.
# drain: state drain (no new requests; the ones in flight finish), then wait until the server's
# current sessions reach 0 or TIMEOUT seconds pass. Prints `scur=N status=S [waited=T]`; exit 0,
# or 1 with one line on stderr.
RUNTIME_PY = r"""
import socket, sys, time
SOCK = sys.argv[1]
def cmd(line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(10); s.connect(SOCK)
    s.sendall((line + '\n').encode()); out = b''
    while True:
        d = s.recv(65536)
        if not d: break
        out += d
    s.close(); return out.decode()
def scur(backend, server):
    lines = cmd('show stat').lstrip('# ').splitlines()
    head = lines[0].split(',')
    for l in lines[1:]:
        row = dict(zip(head, l.split(',')))
        if row.get('pxname') == backend and row.get('svname') == server:
            return int(row.get('scur') or 0), row.get('status')
    print('gptoss lb: no server %s/%s on this balancer' % (backend, server), file=sys.stderr); sys.exit(1)
what, backend, server = sys.argv[2], sys.argv[3], sys.argv[4]
try:
    n, status = scur(backend, server)
    if what != 'stat':
        said = cmd('set server %s/%s state %s' % (backend, server, 'drain' if what == 'drain' else 'ready')).strip()
        if said:
            print('gptoss lb: set server %s/%s: %s' % (backend, server, said), file=sys.stderr); sys.exit(1)
    t0 = time.time(); deadline = t0 + (float(sys.argv[5]) if len(sys.argv) > 5 else 0)
    while what == 'drain' and n > 0 and time.time() < deadline:
        time.sleep(0.2); n, status = scur(backend, server)
    n, status = scur(backend, server)
    print('scur=%d status=%s waited=%.1f' % (n, status, time.time() - t0))
except OSError as e:
    print('gptoss lb: runtime socket %s: %s' % (SOCK, e), file=sys.stderr); sys.exit(1)
"""


def runtime_command(action: str, server: str, timeout_s: float | None = None, backend: str = BACKEND,
                    socket: str = ADMIN_SOCKET) -> str:
    """The shell command (for the balancer host) of one runtime action: drain, ready or stat."""
    import shlex

    if action not in ("drain", "ready", "stat"):
        raise ValueError(f"runtime action {action!r}: use drain, ready or stat")
    args = [socket, action, backend, server] + ([f"{timeout_s:g}"] if timeout_s is not None else [])
    return " ".join(["python3", "-c", shlex.quote(RUNTIME_PY), *(shlex.quote(a) for a in args)])


_SHOW_STAT_PY = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(10); s.connect(sys.argv[1])
s.sendall(b'show stat\n'); out = b''
while True:
    d = s.recv(65536)
    if not d: break
    out += d
sys.stdout.write(out.decode())
"""


def show_stat_command(socket: str = ADMIN_SOCKET) -> str:
    """The shell command (for a host running haproxy) printing `show stat` CSV; read it with parse_stat."""
    import shlex

    return f"python3 -c {shlex.quote(_SHOW_STAT_PY)} {shlex.quote(socket)}"


def parse_runtime_output(text: str) -> dict:
    """`scur=N status=S waited=T` -> {"scur": N, "status": S, "waited": T}."""
    out: dict = {}
    for part in text.split():
        k, _, v = part.partition("=")
        if k == "scur":
            out[k] = int(v)
        elif k == "waited":
            out[k] = float(v)
        elif k == "status":
            out[k] = v
    return out
