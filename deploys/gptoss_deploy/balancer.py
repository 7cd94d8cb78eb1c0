"""HAProxy from the distribution's packages: the balancer (hosts of the `gptoss_lb` group) and the
front of vLLM on each serving host that answers beyond loopback. The text of haproxy.cfg comes
from `haproxy.haproxy_cfg` (pure); here are the units that put it on a host.

Every host of the inventory outside `gptoss_lb` is a serving host and a server of the balancer's
backend, at the address and port its clients use (its front, or vLLM without one). A change of
the config (a serving host added or removed) is applied with `systemctl reload haproxy`: HAProxy
2.x in master-worker mode hands the listening sockets to the new worker and lets the old one
finish its connections, so no connection is dropped. A second run changes nothing.
"""

from __future__ import annotations

import shlex
from typing import Any, Iterable

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

from . import haproxy as H
from . import keys
from .fields import ConfigError, bad, read_api_key
from .ops import ManagedFile, files_in_place

LB_GROUP = "gptoss_lb"
UNIT = "haproxy"


def is_balancer(h: Any = None) -> bool:
    # `host` is a proxy (no truth test); a stand-in host may have no groups at all
    return LB_GROUP in (getattr(host if h is None else h, "groups", None) or ())


def serving_hosts(inventory: Iterable[Any]) -> list[Any]:
    """The hosts that serve (every host outside gptoss_lb), in inventory order."""
    return [h for h in inventory if not is_balancer(h)]


def _data(h: Any) -> dict:
    return {k: v for k, v in h.data.dict().items() if k.startswith("gptoss_")}


def server_of(h: Any) -> H.Server:
    """Where the balancer reaches a serving host: its front (or vLLM) at gptoss_bind_address:gptoss_port,
    parsed by the same rows of the key table as the host's own deploy."""
    data = _data(h)
    ctx = keys.Context(h.name, data)
    for name in ("gptoss_port", "gptoss_bind_address"):
        k = keys.KEYS[name]
        ctx.parsed[name] = k.parse(ctx, k, data.get(name))
    address = ctx.parsed["gptoss_bind_address"]
    if address in ("0.0.0.0", "::"):
        address = str(h.data.get("ssh_hostname") or h.name)
    elif keys.is_loopback(address) and not _shares_loopback(address):
        raise bad(h.name, "gptoss_bind_address", address, "the service answers on loopback only, so the balancer "
                  "cannot reach it", "set gptoss_bind_address to the host's address (its front answers there)")
    return H.Server(h.name, address, ctx.parsed["gptoss_port"])


def _shares_loopback(address: str) -> bool:
    # 127.0.0.2 and up: the local fleet's hosts share the controller's network (testbed/), where
    # each host's own loopback address is its network address. 127.0.0.1 is every host's own.
    return address != "127.0.0.1"


def balancer_config(lb: Any, inventory: Iterable[Any]) -> tuple[H.Balancer, str | None]:
    """(the balancer of host `lb`, its TLS certificate file on the controller or None)."""
    data = _data(lb)
    ctx = keys.Context(lb.name, data)
    keys.check_unknown_keys(lb.name, data)
    for k in keys.TABLE:
        if k.reader == "balancer":
            ctx.parsed[k.name] = k.parse(ctx, k, data.get(k.name))
    servers = tuple(server_of(h) for h in serving_hosts(inventory))
    if not servers:
        raise ConfigError(f"host {lb.name}: group {LB_GROUP}: no serving host in the inventory to balance; "
                          f"fix: add the serving hosts to the same inventory")
    cert = ctx.parsed["gptoss_lb_tls_cert"]
    bind = ctx.parsed["gptoss_lb_bind_address"]
    # the stats page stays on loopback: the balancer's own loopback address where it has one
    # (the local fleet's hosts share one network, and one 127.0.0.1)
    stats = bind if keys.is_loopback(bind) else "127.0.0.1"
    b = H.Balancer(bind, ctx.parsed["gptoss_lb_port"], servers, ctx.parsed["gptoss_lb_check_interval_ms"],
                   tls=cert is not None, stats_address=stats)
    return b, cert


# -- units ----------------------------------------------------------------------------------------


class HaproxyState(FactBase):
    """`systemctl is-active/is-enabled haproxy`."""

    def default(self):
        return {}

    def command(self) -> str:
        return "sh -c 'echo active=$(systemctl is-active haproxy); echo enabled=$(systemctl is-enabled haproxy 2>/dev/null)'"

    def process(self, output: list[str]) -> dict:
        return dict(line.partition("=")[::2] for line in output)


@operation()
def haproxy_running(reload_if):
    """Enabled and active; the config checked by haproxy itself, then a reload (never a restart:
    a restart drops every connection) when `reload_if()` says a file changed."""
    st = host.get_fact(HaproxyState)
    changed = host.state.is_executing and reload_if()
    if changed:
        yield StringCommand("haproxy", "-c", "-q", "-f", H.CFG_PATH)
    if st.get("enabled") != "enabled":
        yield StringCommand("systemctl", "enable", UNIT)
    if st.get("active") != "active":
        yield StringCommand("systemctl", "restart" if st.get("active") == "failed" else "start", UNIT)
    elif changed:
        yield StringCommand("systemctl", "reload", UNIT)
    if not changed and st.get("enabled") == "enabled" and st.get("active") == "active":
        host.noop("haproxy enabled and active")


def _packages() -> None:
    """haproxy, and python3 for the runtime-socket programs the upgrade and the doctor run here."""
    missing = [p for p in ("haproxy", "python3") if p not in (host.get_fact(DebPackages) or {})]
    if missing:
        # Only touch the apt cache when something is missing: a re-run stays a no-op.
        apt.packages(name="haproxy (the distribution's package)", packages=missing, update=True)


_FRONT_PROBE = r"""
import sys, time, urllib.error, urllib.request
base = sys.argv[1]
def code(path, method='GET'):
    r = urllib.request.Request(base + path, data=b'{}' if method == 'POST' else None, method=method,
                               headers={'content-type': 'application/json'})
    try:
        with urllib.request.urlopen(r, timeout=10) as resp: return resp.status
    except urllib.error.HTTPError as e: return e.code
    except OSError: return None
deadline = time.time() + 30
while code('/health') != 200:
    if time.time() > deadline: print('gptoss front: /health through the front is not 200', file=sys.stderr); sys.exit(1)
    time.sleep(0.5)
bad = [(m, p, c) for m, p in (('POST', '/invocations'), ('GET', '/openapi.json'), ('POST', '/tokenize'),
                              ('POST', '/v1/completions'), ('GET', '/v1/models'))
       for c in [code(p, m)] if c not in (401, 403, 404)]
if bad: print('gptoss front: answered without the key: %s' % bad, file=sys.stderr); sys.exit(1)
print('front ok')
"""


@operation()
def front_gate(bind_address: str, port: int):
    """Through the front: /health 200, and routes outside the allow-list (or without the key) refused."""
    if not host.state.is_executing:
        return
    address = "127.0.0.1" if bind_address in ("0.0.0.0", "::") else bind_address
    base = f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"
    ok, out = host.run_shell_command(StringCommand(f"python3 -c {shlex.quote(_FRONT_PROBE)} {base}"),
                                     print_output=False, print_input=False)
    if not ok:
        yield StringCommand("echo", shlex.quote(" ".join(out.stderr_lines)[-600:] or "front check failed"), ">&2", "&&", "false")


@deploy("gptoss balancer")
def apply(b: H.Balancer, tls_cert: str | None):
    _packages()
    files = [ManagedFile(H.CFG_PATH, H.haproxy_cfg(b))]
    if tls_cert:
        with open(tls_cert, encoding="utf-8") as f:
            files.append(ManagedFile(H.TLS_CERT_PATH, f.read(), "root", "haproxy", "0640", secret=True))
    placed = files_in_place(name="haproxy.cfg (the balancer)" + (", TLS certificate" if tls_cert else ""),
                            files=tuple(files))
    haproxy_running(name="haproxy running (reloaded when its config changed)", reload_if=placed.did_change)


@deploy("gptoss front")
def apply_front(front: H.Front, api_key_file: str):
    """After the service: vLLM has moved behind the front before HAProxy takes its address."""
    _packages()
    files = (
        ManagedFile(H.CFG_PATH, H.haproxy_cfg(front)),
        ManagedFile(H.AUTH_FILE, H.auth_file_text(read_api_key(api_key_file)), "root", "haproxy", "0640", secret=True),
        ManagedFile(H.METRICS_ALLOW_FILE, H.metrics_allow_text(front.metrics_allow), "root", "haproxy", "0640"),
    )
    placed = files_in_place(name="haproxy.cfg (the front), key and scrapers files", files=files)
    haproxy_running(name="haproxy running (reloaded when its config changed)", reload_if=placed.did_change)
    front_gate(name="front gate: allow-list and key", bind_address=front.bind_address, port=front.port)


# -- the runtime API, for the rolling upgrade ----------------------------------------------------------


def balancers(inventory: Iterable[Any]) -> list[Any]:
    return [h for h in inventory if is_balancer(h)]


def runtime(lbs: list[Any], action: str, server: str, timeout_s: float | None = None) -> tuple[bool, str]:
    """`set server gptoss/<server> state drain|ready` on every balancer, through the pyinfra
    connection to each balancer host (its admin socket is local to it); drain waits for the
    server's sessions to reach 0 or `timeout_s`. (ok, what each balancer said, in one line)."""
    said = []
    for lb in lbs:
        if getattr(lb, "connected", True) is False:
            return False, (f"balancer {lb.name} is not connected in this run (left out by --limit?): {server} cannot "
                           f"be drained through it; run without --limit, or include {lb.name}")
        cmd = StringCommand(H.runtime_command(action, server, timeout_s))
        try:
            ok, out = lb.run_shell_command(cmd, print_output=False, print_input=False)
        except Exception as e:  # not connected in this run (--limit), or the connection broke
            return False, f"balancer {lb.name}: {type(e).__name__}: {e}"[:400]
        if not ok:
            last = (out.stderr_lines or out.stdout_lines or ["no output"])[-1]
            return False, f"balancer {lb.name}: {action} {server}: {last}"[:400]
        said.append(f"{lb.name} {(out.stdout_lines or [''])[-1]}")
    return True, "; ".join(said)
