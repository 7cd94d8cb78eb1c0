"""Optional tool servers for the Responses API (`--tool-server`).

`demo` needs the `gpt-oss` package in the stack venv (added to the stack's requirements by the
config); MCP servers (`host:port`) must answer before vLLM starts, or vLLM fails at startup.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import StringCommand, deploy, operation

from . import config as C

_PROBE_PY = (
    "import socket,sys\n"
    "bad=[]\n"
    "for hp in sys.argv[1:]:\n"
    "    h,_,p=hp.rpartition(':')\n"
    "    try: socket.create_connection((h.strip('[]'),int(p)),timeout=5).close()\n"
    "    except OSError as e: bad.append('%s (%s)'%(hp,e))\n"
    "if bad: print('gptoss: MCP tool server(s) unreachable from this host: '+', '.join(bad)+'; fix: start them or fix gptoss_tool_servers',file=sys.stderr); sys.exit(1)\n"
)


@operation()
def mcp_reachable(servers: tuple):
    """At execute time: every MCP server accepts TCP from this host (no change when they do)."""
    if not host.state.is_executing or not servers:
        return
    ok, out = host.run_shell_command(
        StringCommand("python3", "-c", shlex.quote(_PROBE_PY), *[shlex.quote(s) for s in servers]),
        print_output=False,
    )
    if not ok:
        msg = " ".join(out.stderr_lines)
        yield StringCommand("echo", shlex.quote(msg[-1000:]), ">&2", "&&", "false")


@deploy("gptoss tool servers")
def apply(cfg: C.HostConfig):
    mcp = tuple(s for s in cfg.tool_servers if s != "demo")
    if mcp:
        mcp_reachable(name="MCP tool servers reachable", servers=mcp)
