"""Is vLLM's own port reachable from the network while its key check leaves routes open?

vLLM's API key is a path-prefix test (`/v1`, later also `/v2`, `/inference`, `/cohere`): every
other route it registers answers without the key, `/invocations` (full inference) included. So a
vLLM port reachable beyond loopback is open to anyone who reaches it, key or no key. What is open
is read from the installed source (`vllm.http_surface`), never from a version list.
"""

from __future__ import annotations

import ast

from ..findings import Finding, Fix, check
from ._util import edit_unit_commands, evidence, fact_obj, obj, serve
from .security import VLLM_SECURITY
from .security import _is_loopback as is_loopback

ISSUE_INVOCATIONS = "https://github.com/vllm-project/vllm/issues/58144"
BIND_KEY = "gptoss_bind_address"  # deploys/gptoss_deploy/config.py
# gpt-oss is a generative model: vLLM registers the routes of its "generate" task only.
SERVED_TASKS = frozenset({"generate"})
# Routes that run the model (or its tokenizer / chat template) for the caller.
MODEL_ROUTES = ("/invocations", "/inference", "/generative_scoring", "/v1/", "/v2/", "/cohere/", "/pooling",
                "/classify", "/score", "/rerank", "/tokenize", "/detokenize")
# Routes that only report state; any other open route that takes a non-GET method acts on the server.
READ_ROUTES = ("/health", "/ping", "/load", "/version", "/metrics", "/docs", "/redoc", "/openapi.json", "/static",
               "/ready", "/readyz")
_TRUE = frozenset({"1", "true", "yes", "on"})


# -- registration conditions, judged against the service's flags and environment -----------------


def _setting_name(node) -> str | None:
    """`args.x`, `app.state.args.x`, `getattr(args, "x", ...)` -> "x"."""
    if isinstance(node, ast.Attribute):
        base = node.value
        if (isinstance(base, ast.Name) and base.id == "args") or (isinstance(base, ast.Attribute) and base.attr == "args"):
            return node.attr
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
        return _setting_name(ast.Attribute(value=node.args[0], attr=node.args[1].value))
    return None


def judge_condition(text: str, flags: dict, environ: dict, tasks=SERVED_TASKS) -> bool | None:
    """True / False / None (cannot tell) for one condition the collector copied from vLLM's source."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    return _judge(tree, flags, environ, tasks)


def _judge(node, flags, environ, tasks) -> bool | None:
    if isinstance(node, ast.BoolOp):
        got = [_judge(v, flags, environ, tasks) for v in node.values]
        if isinstance(node.op, ast.And):
            return False if False in got else (None if None in got else True)
        return True if True in got else (None if None in got else False)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        got = _judge(node.operand, flags, environ, tasks)
        return None if got is None else not got
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "envs":
        return str(environ.get(node.attr, "")).strip().lower() in _TRUE
    setting = _setting_name(node)
    if setting is not None:
        val = flags.get(setting.replace("_", "-"))
        return val is not None and str(val).lower() not in ("false", "0", "")
    if (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn))
            and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)
            and "task" in ast.unparse(node.comparators[0])):
        inside = node.left.value in tasks
        return inside if isinstance(node.ops[0], ast.In) else not inside
    return None


def registered(route: dict, flags: dict, environ: dict) -> bool | None:
    """Whether the running server registers this route: any alternative whose conditions all hold."""
    states = []
    for alt in route.get("when") or [[]]:
        got = [judge_condition(c, flags, environ) for c in alt]
        states.append(False if False in got else (None if None in got else True))
    return True if True in states else (None if None in states else False)


def route_kind(route: dict) -> str:
    path = route["path"]
    if path.startswith(MODEL_ROUTES) or path in {p.rstrip("/") for p in MODEL_ROUTES}:
        return "model"
    if path.startswith(READ_ROUTES) or set(route.get("methods") or ["GET"]) <= {"GET", "HEAD"}:
        return "read"
    return "control"


def open_routes(surface: dict, api_key_set: bool, flags: dict, environ: dict) -> tuple[list[dict], list[dict]]:
    """(routes served without the key, routes that may be: their condition could not be judged)."""
    guard = surface.get("guard") or {}
    prefixes = tuple(guard.get("prefixes") or ()) if api_key_set else ()
    sure, maybe = [], []
    for route in surface.get("routes") or []:
        if prefixes and route["path"].startswith(prefixes):
            continue
        state = registered(route, flags, environ)
        if state is False:
            continue
        entry = {"path": route["path"], "methods": route.get("methods") or [], "kind": route_kind(route),
                 "source": f"{route.get('file')}:{route.get('line')}"}
        if state is None:
            entry["when"] = route.get("when")
            maybe.append(entry)
        else:
            sure.append(entry)
    return sure, maybe


# -- where vLLM listens ----------------------------------------------------------------------------


def exposed_addresses(listen: dict) -> tuple[list[str], str]:
    """Non-loopback addresses vLLM's port is reachable on, and how that was known: the listening
    sockets on its port that a vLLM process owns (or may own), else the configured bind address."""
    port = listen.get("port")
    on_port = [s for s in listen.get("sockets") or [] if isinstance(s, dict) and s.get("port") == port
               and s.get("vllm") is not False]
    if port is None:  # no deployed service: any socket a vLLM process owns
        on_port = [s for s in listen.get("sockets") or [] if isinstance(s, dict) and s.get("vllm")]
    if on_port:
        return sorted({f"{s['address']}:{s['port']}" for s in on_port if not is_loopback(s["address"])}), "listening"
    host = listen.get("host")
    if host is None or is_loopback(host):
        return [], "configured"
    return [f"{host}:{port}"], "configured"


def _fmt(routes: list[dict]) -> str:
    return ", ".join(r["path"] for r in routes)


@check(
    "vllm-port-exposed",
    severity="error",
    title="vLLM's own port is reachable from the network and its key check leaves routes open",
    category="security",
    needs=("service.listen", "vllm.http_surface"),
    links=[VLLM_SECURITY, ISSUE_INVOCATIONS],
)
def vllm_port_exposed(snap, kb):
    """vLLM listens on a non-loopback address and the installed vLLM's API-key check leaves
    routes that run the model or act on the server open to anyone who reaches the port.

    Why: vLLM's key check is a path-prefix test (`/v1`, in later releases also `/v2`,
    `/inference`, `/cohere`). Every other route it registers answers without the key:
    `/invocations` serves full completions (measured on 0.26.0 here; vllm-project/vllm#58144 on
    0.27.1 and 0.29.0), `/tokenize`, `/generative_scoring`, `/scale_elastic_ep`, the metrics and
    the docs.
    vLLM's own security guide says not to rely on `--api-key` alone and to put a reverse proxy
    with an allow-list in front. The open routes are read from the installed vLLM's source
    (its key-check middleware and its route registrations), so a release that widens the guard
    is judged by what it does.

    Fix: bind vLLM to 127.0.0.1 (inventory data key `gptoss_bind_address`, the default) and serve
    the network through the front or the balancer, which answer only an allow-list and check the
    key themselves.

    Source: docs.vllm.ai/en/latest/usage/security (reverse proxy, allow-list);
    github.com/vllm-project/vllm/issues/58144.
    """
    listen = fact_obj(snap, "service.listen")
    surface = fact_obj(snap, "vllm.http_surface")
    addresses, how = exposed_addresses(listen)
    if not addresses:
        return
    s = serve(snap)
    flags = obj(s.get("flags"))
    environ = obj(fact_obj(snap, "service").get("environment"))
    # No unit (a hand-started server): whether it has a key is unknown, so claim only what is
    # open with one: the routes outside the key check.
    api_key_set = bool(s.get("api_key_set")) if s else True
    sure, maybe = open_routes(surface, api_key_set, flags, environ)
    acting = [r for r in sure if r["kind"] in ("model", "control")]
    if not acting:
        return
    model = [r for r in acting if r["kind"] == "model"]
    control = [r for r in acting if r["kind"] == "control"]
    guard = surface.get("guard") or {}
    if not api_key_set:
        why = "no API key is set, so every route is open"
    elif guard:
        why = f"its key check ({guard.get('file')}) guards only {', '.join(guard.get('prefixes') or [])}"
    else:
        why = "no API-key check was found in its source"
    parts = []
    if model:
        parts.append(f"model routes {_fmt(model)}")
    if control:
        parts.append(f"control routes {_fmt(control)}")
    reads = [r for r in sure if r["kind"] == "read"]
    port = listen.get("port") or addresses[0].rsplit(":", 1)[-1]
    deployed = snap.has("manifest")
    unit = snap.has("service")
    yield Finding(
        id="vllm-port-exposed",
        severity="error",
        title=f"vLLM's own port is reachable on {', '.join(addresses)} and answers without the key: "
        + "; ".join(parts) + f" ({why})",
        evidence=evidence(
            snap, ["service.listen", "vllm.http_surface", "service.serve"],
            addresses=addresses, known_from=how, api_key_set=api_key_set, guard=guard or None,
            open_routes=sure, open_if_enabled=maybe, reads_open=_fmt(reads),
        ),
        fix=Fix(
            text=("Bind vLLM to 127.0.0.1 and serve the network only through the front or the balancer "
                  "(an allow-list of /v1/chat/completions, /v1/completions, /v1/responses, /v1/models that "
                  "checks the key itself): "
                  + (f"set {BIND_KEY} = \"127.0.0.1\" for this host in the inventory (the default) and re-run "
                     "the deploy; until then, " if deployed else "")
                  + ("change the unit's `--host` to 127.0.0.1 and restart. " if unit else
                     "restart this hand-started server with `--host 127.0.0.1`. ")
                  + f"Port {port} must not be reachable from other hosts."),
            commands=edit_unit_commands(snap, "set --host 127.0.0.1 in ExecStart (keep --port)") if unit else [],
        ),
        links=[VLLM_SECURITY, ISSUE_INVOCATIONS],
    )
