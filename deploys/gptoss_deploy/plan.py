"""The one builder: this host's data + facts + knowledge -> its config(s). The deploy
(deploys/gptoss.py) and the upgrade (deploys/upgrade.py) both call `host_configs`, so both see
the same facts: the host's OS, GPUs and Python, its init system (systemd or not: who runs the
service), and, where the data asks for them, its wheelhouse and base Python.

Called at the top of the entry files, which pyinfra runs for every host in the prepare phase;
a ConfigError here stops the whole run before any operation executes on any host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from gptoss_doctor import advisories
from pyinfra import host, logger

from . import config as C
from . import rollout
from .airgap import AirgapFacts
from .facts import HostFacts
from .fields import ConfigError, bad
from .supervisor import InitSystem


@dataclass(frozen=True)
class HostConfigs:
    cfg: C.HostConfig  # the stack asked for (gptoss_stack)
    kb: Any  # the knowledge, with the host's extra stack files
    rollback: C.HostConfig | None = None  # upgrade: the stack the host runs now (its rollback)
    settings: rollout.Settings | None = None  # upgrade: its own keys
    state: dict | None = None  # upgrade: what the host has (rollout.UpgradeState)

    @property
    def deploy(self) -> tuple[C.HostConfig, Any]:
        """(config, knowledge): what the deploy's units take."""
        return self.cfg, self.kb


def host_data() -> dict[str, Any]:
    return {k: v for k, v in host.data.dict().items() if k.startswith("gptoss_")}


def gather_facts(data: Mapping[str, Any]) -> dict[str, Any]:
    """Every read-only fact a config is built from (no change on the host)."""
    facts = dict(host.get_fact(HostFacts))
    facts["init"] = host.get_fact(InitSystem)
    if data.get("gptoss_wheelhouse") or data.get("gptoss_base_python"):
        facts["airgap"] = host.get_fact(AirgapFacts, wheelhouse=data.get("gptoss_wheelhouse"),
                                        base_python=data.get("gptoss_base_python"))
    return facts


def warn_advisories(cfg: C.HostConfig) -> None:
    """Before the stack is installed: the published vLLM advisories that apply to it as it will be
    served (one warning line each; the doctor's vllm-advisory judges the installed box later)."""
    found = advisories.advisories_for(cfg.vllm, cfg.serve_argv(), api_key_set=True)
    for line in advisories.warning_lines(cfg.vllm, found):
        logger.warning(f"{host.print_prefix}{line}")


def host_configs(upgrade: bool = False) -> HostConfigs:
    """This host's config; with `upgrade`, also its rollback stack's config (same data and facts,
    the stack it runs now), the upgrade's settings and the host's upgrade state."""
    data = host_data()
    settings = rollout.settings(host.name, data) if upgrade else None
    kb = C.load_knowledge(host.name, data.get("gptoss_extra_stack_files"))
    facts = gather_facts(data)
    cfg = C.validate(host.name, data, facts, kb)
    warn_advisories(cfg)
    if not upgrade:
        return HostConfigs(cfg, kb)
    state = host.get_fact(rollout.UpgradeState)
    if not rollout.stack_of(state["current"]):
        raise ConfigError(f"host {host.name}: nothing deployed yet ({C.CURRENT} missing); "
                          f"fix: run deploys/gptoss.py for this host first, then upgrade")
    old_name = rollout.rollback_stack(cfg.stack, state["current"], state["rollback"])
    old = None
    if old_name:
        if old_name not in kb.stacks:
            raise bad(host.name, "gptoss_stack", old_name, "the host runs a stack the knowledge does not know, so "
                      "its rollback files cannot be written", "add it with gptoss_extra_stack_files")
        old = C.validate(host.name, {**data, "gptoss_stack": old_name}, facts, kb, installed=True)
    return HostConfigs(cfg, kb, old, settings, state)
