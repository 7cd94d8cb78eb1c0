"""Checks that the API and its secrets are not open to everyone."""

from __future__ import annotations

import ipaddress

from ..findings import Fix, check, found
from ..layout import KEY_FILE
from ._util import edit_unit_commands, env_file_hint, evidence, fact_list, has_flag, restart_command, serve, unit_name

VLLM_SECURITY = "https://docs.vllm.ai/en/latest/usage/security.html"


def _is_loopback(host) -> bool:
    if not isinstance(host, str) or not host:
        return False  # vLLM binds every interface when --host is not given
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it resolves to something reachable


@check(
    "api-without-key",
    severity="error",
    title="The OpenAI API is served on a non-loopback address without an API key",
    category="security",
    needs=("service.serve",),
    links=[VLLM_SECURITY],
)
def api_without_key(snap, kb):
    """vLLM listens on a non-loopback address (or every interface, its default) and no API key
    is set (neither `--api-key` nor VLLM_API_KEY).

    Why: anyone who can reach the port can use the GPUs, read other users' prompts through the
    Responses API's stored state, and, with `--tool-server demo`, make the model run Python.

    Fix: keep a key in a root:gptoss 0640 file and hand it to vLLM through the EnvironmentFile
    (never on the command line), or bind to 127.0.0.1 behind a proxy that authenticates.

    Source: vLLM security guide ("the API key is the only access control").
    """
    s = serve(snap)
    host = s.get("host")
    if _is_loopback(host) or s.get("api_key_set"):
        return
    env_file = env_file_hint(snap)
    yield found(
        title=f"vLLM listens on {host or 'every interface'}:{s.get('port')} with no API key",
        evidence=evidence(snap, ["service.serve", "service"], host=host, port=s.get("port"), api_key_set=False),
        fix=Fix(
            text=f"Create a key readable only by root and the service group, pass it as VLLM_API_KEY "
            f"through {env_file}, restart (or bind to 127.0.0.1).",
            commands=[
                f"install -m 0640 -o root -g gptoss /dev/null {KEY_FILE}",
                f"openssl rand -hex 32 > {KEY_FILE}",
                f"printf 'VLLM_API_KEY=%s\\n' \"$(cat {KEY_FILE})\" >> {env_file}",
                f"chmod 0640 {env_file}",
                restart_command(snap),
            ],
        ),
    )


@check(
    "world-readable-secrets",
    severity="error",
    title="Secrets in world-readable files",
    category="security",
    needs=("files.world_readable_secrets",),
    links=["https://www.freedesktop.org/software/systemd/man/latest/systemd.exec.html#EnvironmentFile="],
)
def world_readable_secrets(snap, kb):
    """A file holding a secret (API key, HF token, an EnvironmentFile with *_KEY/*_TOKEN) is
    readable by every user on the box.

    Why: any local user or compromised process can read the key and use or resell the API, or
    pull gated models with the HF token.

    Fix: make the files 0640 (owner root, group of the service) or 0600.

    Source: systemd.exec(5) EnvironmentFile=; the deploy's layout (docs/design.md: 0640
    root:gptoss).
    """
    files = [f for f in fact_list(snap, "files.world_readable_secrets") if isinstance(f, dict) and f.get("path")]
    if not files:
        return
    yield found(
        title=f"{len(files)} file(s) with secrets are world-readable: " + ", ".join(f"{f['path']} ({f.get('mode')})" for f in files),
        evidence=evidence(snap, ["files.world_readable_secrets"], files=files),
        fix=Fix(
            text="Remove read access for others (the service reads them as root or through its group).",
            commands=[f"chmod o-rwx {f['path']}" for f in files],
        ),
    )


@check(
    "api-key-in-argv",
    severity="warning",
    title="The API key is passed on the command line",
    category="security",
    needs=("service.serve",),
    links=[VLLM_SECURITY],
)
def api_key_in_argv(snap, kb):
    """The service passes `--api-key` on vLLM's command line.

    Why: every local user sees a process's argv (`ps aux`, /proc/PID/cmdline), and the unit file
    that holds it is usually world-readable (0644), as are `systemctl show` and the journal's
    start-up lines.

    Fix: move the key to VLLM_API_KEY in the 0640 EnvironmentFile and drop `--api-key`.

    Source: vLLM CLI (`--api-key` or VLLM_API_KEY); proc(5) /proc/PID/cmdline.
    """
    if not has_flag(snap, "--api-key"):
        return
    unit = unit_name(snap)
    yield found(
        title="`--api-key` is on the vLLM command line, visible to every local user",
        evidence=evidence(snap, ["service.serve", "service"], flag="--api-key", unit=unit),
        fix=Fix(
            text=f"Put the key in {env_file_hint(snap)} as VLLM_API_KEY=... (mode 0640) and remove --api-key from the unit.",
            commands=edit_unit_commands(snap, "delete '--api-key ...' from ExecStart"),
        ),
    )
