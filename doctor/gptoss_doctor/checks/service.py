"""Checks of who runs the service: the manager the deploy chose against what this host has."""

from __future__ import annotations

from ..findings import Fix, check, found
from ..layout import SUPERVISE
from ._util import NotApplicable, evidence, fact_obj

DESIGN = "docs/design.md#on-a-deployed-host"
SUPERVISOR_DOC = "deploys/gptoss_deploy/supervisor.py"


def _problem(m: dict) -> tuple[str, str, list[str]] | None:
    """(title, fix text, commands) when the manifest's manager cannot run the service here (pure)."""
    recorded = m.get("manifest_manager")
    supervise = m.get("supervise") or SUPERVISE
    if recorded == "systemd" and m.get("pid1_systemd") is False:
        commands = [f"{supervise} start"] if m.get("supervise_installed") else []
        return (
            "The manifest says systemd runs gptoss-vllm, but systemd is not PID 1 here: nothing starts the service",
            "This host was deployed where systemd ran (or forced with gptoss_service_manager=systemd) and now runs "
            "without it (a container, an image). Re-run the deploy for this host with gptoss_service_manager=auto: "
            "it installs gptoss-supervise, which runs the same unit."
            + (" gptoss-supervise is already installed, so it can start the unit now:" if commands else ""),
            commands,
        )
    if recorded == "supervisor" and m.get("supervise_installed") is False:
        return (
            f"The manifest says gptoss-supervise runs gptoss-vllm, but {supervise} is missing",
            "Re-run the deploy for this host: it installs gptoss-supervise and starts the service behind the health gate.",
            [],
        )
    return None


@check(
    "service-manager-mismatch",
    severity="error",
    title="The manifest's service manager cannot run the service on this host",
    category="service",
    needs=("service.manager",),
    links=[DESIGN, SUPERVISOR_DOC],
)
def service_manager_mismatch(snap, kb):
    """The deploy recorded a service manager (manifest `service_manager`) this host cannot use
    now: systemd, where systemd is not PID 1; or gptoss-supervise, where its program is gone.

    Why: on hosts without systemd (containers, many GPU machines) the deploy runs the unit under
    /opt/gptoss/bin/gptoss-supervise. A host deployed under systemd and then run without it (an
    image started as a container) has a unit nobody starts: vLLM never comes up, and every
    `systemctl` fix fails with "System has not been booted with systemd".

    Fix: re-run the deploy with `gptoss_service_manager` left at `auto` (it picks gptoss-supervise
    where systemd is not PID 1), or start the unit with gptoss-supervise if it is installed.

    Source: deploys/gptoss_deploy/supervisor.py (the manager check: /run/systemd/system, as
    sd_booted() tests); docs/design.md (on a deployed host).
    """
    m = fact_obj(snap, "service.manager")
    if not m.get("manifest_manager"):
        raise NotApplicable("the manifest records no service manager (deployed before it did, or not deployed)")
    problem = _problem(m)
    if problem is None:
        return
    title, text, commands = problem
    yield found(
        title=title,
        evidence=evidence(snap, ["service.manager", "manifest"], manifest_manager=m.get("manifest_manager"),
                          pid1_systemd=m.get("pid1_systemd"), supervise=m.get("supervise"),
                          supervise_installed=m.get("supervise_installed")),
        fix=Fix(text=text, commands=commands),
    )
