"""The installed vLLM has a published security advisory whose condition holds on this box."""

from __future__ import annotations

from packaging.version import Version

from .. import advisories as adv
from ..findings import Finding, Fix, check
from ._util import evidence, fact_obj, obj, serve, vllm_version
from .exposure import exposed_addresses, is_loopback, registered

ADVISORY_LIST = "https://github.com/vllm-project/vllm/security/advisories"


def _routes(snap) -> list[str] | None:
    """Paths the installed vLLM registers with this service's flags (None: its source was not read)."""
    surface = snap.get("vllm.http_surface")
    if not isinstance(surface, dict):
        return None
    flags = obj(serve(snap).get("flags"))
    environ = obj(fact_obj(snap, "service").get("environment"))
    return [r["path"] for r in surface.get("routes") or [] if registered(r, flags, environ) is not False]


def _exposed(snap) -> list[str]:
    """Where vLLM's own port is reachable beyond loopback: the listening sockets, else the bind address."""
    listen = snap.get("service.listen")
    if isinstance(listen, dict):
        return exposed_addresses(listen)[0]
    host = serve(snap).get("host")
    return [] if not host or is_loopback(host) else [f"{host}:{serve(snap).get('port')}"]


def _multimodal(snap, kb) -> bool | None:
    model = serve(snap).get("model") or fact_obj(snap, "manifest").get("model")
    if not model:
        return False  # nothing served yet: the project serves gpt-oss only
    return False if kb.model(str(model)) is not None else None  # the knowledge's models are text-only gpt-oss


@check(
    "vllm-advisory",
    severity="error",
    title="The installed vLLM has a published security advisory that applies to this deployment",
    category="security",
    needs=("vllm.install", "vllm.http_surface"),
    links=[ADVISORY_LIST],
)
def vllm_advisory(snap, kb):
    """The installed vLLM is in the affected range of a published vLLM security advisory
    (knowledge/advisories.toml) and the advisory's condition holds here: the server is reachable
    by API clients, it relies on the API key, it runs a flag or topology the advisory names
    (prompt embeddings, a tool parser, multi-node, a KV connector), or it registers the route.
    Advisories for multimodal models are not reported for gpt-oss, which is text-only. It runs
    where the installed vLLM's source was read (`vllm.http_surface`): route conditions are judged
    from it; before a stack is installed, the deploy asks `advisories_for` instead.

    Why: each is a published denial of service, data leak or code execution in the serving
    engine; the fixed release is known. A critical or high one is an error where vLLM's own port
    is reachable beyond loopback; behind a front on loopback it is a warning.

    Fix: move the host to a stack whose vLLM is past every advisory that applies (the upgrade
    deploy stages it and rolls back on failure).

    Source: vLLM's security advisories (github.com/vllm-project/vllm/security/advisories), the
    GitHub advisory database and OSV; each row names its own page.
    """
    version = vllm_version(snap)
    s = serve(snap)
    environ = obj(fact_obj(snap, "service").get("environment"))
    api_key_set = s.get("api_key_set") if s else None
    kw = dict(environ=environ, multimodal=_multimodal(snap, kb), api_key_set=api_key_set, routes=_routes(snap))
    found = adv.advisories_for(version, obj(s.get("flags")), **kw)
    if not found:
        return
    sure = [a for a in found if a.holds]
    bad = [a for a in sure if a.advisory.severity in ("critical", "high")]
    exposed = _exposed(snap)
    # A critical/high one is an error where outsiders reach vLLM itself; behind a front on
    # loopback (which checks the key and allows a few routes) it is a warning to plan the upgrade.
    severity = "error" if bad and exposed else "warning"
    newer = [st for st in kb.stacks.values() if st.site_file is None and st.vllm_version > Version(Version(version).public)]
    target = next((st for st in newer if not adv.advisories_for(st.vllm, obj(s.get("flags")), **kw)), None)
    fixed = max((a.advisory.fixed for a in found if a.advisory.fixed), key=Version, default=None)
    names = ", ".join(f"{a.advisory.id} ({a.advisory.severity})" for a in found)
    if target is not None:
        fix_text = (f"Upgrade to stack {target.name} (vLLM {target.vllm}), which no listed advisory affects with "
                    f"these flags: `uv run pyinfra -y INVENTORY deploys/upgrade.py --data gptoss_stack={target.name}`.")
    else:
        fix_text = (f"Upgrade vLLM to {fixed} or later (no stack in the knowledge clears every advisory), or "
                    "remove the condition each names.")
    yield Finding(
        id="vllm-advisory",
        severity=severity,
        title=f"vLLM {version} has {len(found)} published advisor{'y' if len(found) == 1 else 'ies'} "
        f"that apply here: {names}",
        evidence=evidence(snap, ["vllm.install", "service.serve", "vllm.http_surface"], vllm=version,
                          advisories=[a.to_dict() for a in found], upgrade_to=target.name if target else None,
                          exposed=exposed),
        fix=Fix(text=fix_text),
        links=[a.advisory.source for a in found][:8] or [ADVISORY_LIST],
    )
