"""The local fleet (`gptoss-testbed up`) as a pyinfra inventory:

    uv run gptoss-testbed up && uv run pyinfra -y inventories/testbed.py deploys/gptoss.py

Reads the testbed's state file (/var/lib/gptoss-testbed/state.json, or $GPTOSS_TESTBED_STATE/state.json)
and targets its hosts over SSH with the testbed's key. The group data is what the deploy needs
on hosts without GPUs and without internet: every package index mapped to the testbed's
loopback index, the stand-in broken stack loadable, the harmony vocab from the controller.
Override any key with --data, e.g. `--data gptoss_stack=vllm-0.10.1-gptoss`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyinfra.api.exceptions import PyinfraError

STATE_FILE = Path(os.environ.get("GPTOSS_TESTBED_STATE", "/var/lib/gptoss-testbed")) / "state.json"


def _state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        raise PyinfraError(f"inventories/testbed.py: {STATE_FILE} not found: the local fleet is not up; "
                           f"run `uv run gptoss-testbed up` first") from None
    except (OSError, json.JSONDecodeError) as e:
        raise PyinfraError(f"inventories/testbed.py: cannot read {STATE_FILE} ({e}); "
                           f"run `uv run gptoss-testbed down && uv run gptoss-testbed up`") from None


def _check_running(state: dict) -> None:
    # A state file outlives a machine restart: without this, every host fails with "connection
    # refused". A single host that is down stays the deploy's per-host failure to report.
    try:
        from gptoss_testbed import fleet
    except ImportError:
        return  # run outside the project's venv: pyinfra reports unreachable hosts itself
    if not fleet.anything_running(state):
        raise PyinfraError(f"inventories/testbed.py: the local fleet in {STATE_FILE} is not running (nothing of it "
                           f"runs: a machine restart leaves this); run `uv run gptoss-testbed up` first")


_S = _state()
_check_running(_S)

_SSH = {
    "ssh_user": "root",
    "ssh_key": _S["ssh_key"],
    "ssh_known_hosts_file": "/dev/null",
    "ssh_strict_host_key_checking": "no",
}

testbed = (
    [
        (h["name"], {
            "ssh_hostname": h["address"],
            # Clients reach each host on port 8000 of its own loopback address (its front there).
            "gptoss_bind_address": h["address"],
            # Each host's address stands for its network address (the hosts share the controller's
            # network): serving there is serving beyond loopback, so vLLM goes behind the front
            # ("auto" counts 127.0.0.0/8 as loopback). Every host's 127.0.0.1 is one and the same
            # here: vLLM listens on the host's own address, on another port.
            "gptoss_front": True,
            "gptoss_vllm_address": h["address"],
        })
        for h in _S["hosts"]
    ],
    {
        **_SSH,
        "gptoss_stack": _S["today_stack"],
        "gptoss_gpu_family": "H100",  # the hosts have no GPUs: the deploy builds as for H100
        "gptoss_model": "20b",
        "gptoss_port": 8000,
        "gptoss_index_mirrors": _S["index_mirrors"],
        "gptoss_api_key_file": _S["api_key_file"],
        "gptoss_extra_stack_files": [_S["stack_file"]],
        "gptoss_tiktoken_url": _S["tiktoken_url"],
        "gptoss_health_timeout_s": 60,
    },
)

# `gptoss-testbed up --lb`: the balancer host, HAProxy before every host above.
if _S.get("lb"):
    gptoss_lb = (
        [(_S["lb"]["name"], {"ssh_hostname": _S["lb"]["address"]})],
        {**_SSH, "gptoss_lb_bind_address": _S["lb"]["address"], "gptoss_lb_port": _S["lb"]["port"],
         "gptoss_lb_check_interval_ms": 500},
    )
