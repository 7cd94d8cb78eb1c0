"""The one error type the CLI turns into a single line on stderr (no traceback)."""

from __future__ import annotations

import subprocess


class TestbedError(RuntimeError):
    """Something the user can fix; the message names the value, where it came from, and the fix."""

    __test__ = False  # not a pytest test class despite the name


def run(cmd: list[str], what: str, *, timeout: float | None = None, env: dict | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command; on failure raise TestbedError naming what failed and the last line it printed."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    except FileNotFoundError:
        raise TestbedError(f"{what}: command {cmd[0]!r} not found; install it (see `gptoss-testbed up` requirements)") from None
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{what}: `{' '.join(cmd[:3])} ...` took more than {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise TestbedError(f"{what}: `{' '.join(cmd[:4])} ...` exited {proc.returncode}: {tail[0]}")
    return proc
