"""Glue between pyinfra and the pure config: this host's data + facts + knowledge -> HostConfig.

Called at the top of the deploy file, which pyinfra runs for every host in the prepare phase;
a ConfigError here stops the whole run before any operation executes on any host.
"""

from __future__ import annotations

from typing import Any

from pyinfra import host

from . import config as C
from .airgap import AirgapFacts
from .facts import HostFacts
from .supervisor import InitSystem


def host_data() -> dict[str, Any]:
    return {k: v for k, v in host.data.dict().items() if k.startswith("gptoss_")}


def current_config() -> tuple[C.HostConfig, Any]:
    data = host_data()
    kb = C.load_knowledge(host.name, data.get("gptoss_extra_stack_files"))
    facts = dict(host.get_fact(HostFacts))
    # Read-only too: the init system (systemd or not) and, when set, the wheelhouse / base Python.
    facts["init"] = host.get_fact(InitSystem)
    if data.get("gptoss_wheelhouse") or data.get("gptoss_base_python"):
        facts["airgap"] = host.get_fact(AirgapFacts, wheelhouse=data.get("gptoss_wheelhouse"),
                                        base_python=data.get("gptoss_base_python"))
    return C.validate(host.name, data, facts, kb), kb
