"""The stack's Python where the host lacks it: uv's managed CPython (python-build-standalone).

A stack pins a Python range (the launch stack: >=3.12,<3.13) that the host's python3 may miss
(Debian 12 has 3.11, Ubuntu 22.04 3.10). Then, as the launch recipe does (`uv venv --python
3.12`), the stack venv is built on a CPython that uv installs under /opt/gptoss/python (root's,
readable by the service user; never ~/.local, which the service user cannot reach). The host's
python3 still runs the doctor and gptoss-supervise.

Data keys (air-gapped sites; their rows are in keys.py, which calls `check`):
- `gptoss_python_mirror`: where uv downloads CPython from instead of GitHub
  (UV_PYTHON_INSTALL_MIRROR): a mirror of https://github.com/astral-sh/python-build-standalone/releases/download,
  same layout (`<release>/cpython-<version>+<release>-<triple>-install_only.tar.gz`), as an
  http(s) URL or a file:// directory on the host. uv checks each archive against the sha256 its
  own release carries, so a mirror must hold the upstream files.
- `gptoss_python_downloads_json`: a downloads list in uv's format (UV_PYTHON_DOWNLOADS_JSON_URL,
  an http(s)/file URL or a path on the host), for a site that builds its own CPython archives:
  their versions and sha256, at URLs under the upstream prefix that the mirror replaces.

Both reach uv through the install command's stdin, never its argv: a mirror URL may carry
credentials. uv writes them masked in its own messages.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlparse

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from gptoss_doctor.layout import ROOT

from .fields import bad

INSTALL_DIR = f"{ROOT}/python"  # uv's UV_PYTHON_INSTALL_DIR on the host
UPSTREAM = "https://github.com/astral-sh/python-build-standalone/releases/download"
MINORS = range(8, 20)  # CPython 3.8 .. 3.19: the minors a stack's range is searched for


@dataclass(frozen=True)
class ManagedPython:
    minor: str  # "3.12": what `uv python install` and `uv venv --python` ask for
    mirror: str | None = None  # UV_PYTHON_INSTALL_MIRROR
    downloads_json: str | None = None  # UV_PYTHON_DOWNLOADS_JSON_URL

    def env(self) -> dict[str, str]:
        """uv's settings for the download: the secrets-bearing part, sent over stdin."""
        out = {}
        if self.mirror:
            out["UV_PYTHON_INSTALL_MIRROR"] = self.mirror
        if self.downloads_json:
            out["UV_PYTHON_DOWNLOADS_JSON_URL"] = self.downloads_json
        return out


def lowest_minor(spec: str) -> str | None:
    """The oldest CPython minor the range admits ("3.12" for ">=3.12,<3.13"), as the recipes pin."""
    from packaging.specifiers import SpecifierSet

    rng = SpecifierSet(spec)
    for m in MINORS:
        if any(rng.contains(f"3.{m}.{patch}") for patch in (0, 99)):
            return f"3.{m}"
    return None


def _check_location(host_name: str, key: str, value: Any, paths_ok: bool) -> str | None:
    if value is None or value == "":
        return None
    fix = (f"use an http(s):// URL or a file:// directory on the host{' (or an absolute path)' if paths_ok else ''}, "
           f"e.g. https://mirror.example/python-build-standalone")
    parsed = urlparse(value) if isinstance(value, str) else None
    if parsed is None or any(c in value for c in "\n\r\0"):
        raise bad(host_name, key, value, "not a URL", fix)
    if paths_ok and value.startswith("/"):
        return value
    if parsed.scheme not in ("http", "https", "file") or (parsed.scheme != "file" and not parsed.netloc):
        raise bad(host_name, key, value, "not an http(s):// or file:// URL", fix)
    return value


def check(host_name: str, data: Mapping[str, Any], facts: Mapping[str, Any], spec: str) -> ManagedPython | None:
    """None when the host's python3 is in the stack's range (or the air gap's base Python decides);
    else the CPython uv installs for the stack venv. Pure: one ConfigError naming key, value, fix."""
    from packaging.specifiers import SpecifierSet

    mirror = _check_location(host_name, "gptoss_python_mirror", data.get("gptoss_python_mirror"), paths_ok=False)
    listing = _check_location(host_name, "gptoss_python_downloads_json", data.get("gptoss_python_downloads_json"),
                              paths_ok=True)
    have = facts.get("python_version")
    if not spec or not have or have in SpecifierSet(spec) or data.get("gptoss_base_python") is not None:
        return None
    minor = lowest_minor(spec)
    if minor is None:
        raise bad(host_name, "gptoss_stack", data.get("gptoss_stack"), f"its Python range {spec} admits no CPython 3",
                  "fix the stack's python range")
    if data.get("gptoss_wheelhouse") is not None and not mirror:
        raise bad(host_name, "gptoss_python_mirror", None,
                  f"python3 {have} is outside the stack's range {spec} and the host is air-gapped (gptoss_wheelhouse), "
                  f"so uv cannot download CPython {minor}",
                  f"set gptoss_python_mirror to a mirror of {UPSTREAM}, or install python3 {minor} as /usr/bin/python3")
    return ManagedPython(minor, mirror, listing)


def venv_facts(facts: Mapping[str, Any], managed: ManagedPython | None) -> Mapping[str, Any]:
    """The host facts as the stack venv sees them: its Python is the managed one when there is one."""
    return facts if managed is None else {**facts, "python_version": managed.minor}


def spec_fields(managed: ManagedPython) -> dict:
    """What the venv's contents depend on (the mirror moves the source, not the result)."""
    return {"managed_python": managed.minor}


def venv_command(uv_env: str, uv: str, venv: str, managed: ManagedPython) -> str:
    """`uv venv` on the managed CPython only: never a download here, never the host's python3."""
    return (f"{uv_env} UV_PYTHON_INSTALL_DIR={INSTALL_DIR} {uv} venv --quiet --managed-python "
            f"--python {shlex.quote(managed.minor)} {venv}")


class ManagedPythons(FactBase):
    """The CPython installs uv made under `install_dir` (directory names), [] when none."""

    def default(self):
        return []

    def command(self, install_dir: str) -> str:
        d = shlex.quote(install_dir)
        return "sh -c " + shlex.quote(f'for p in {d}/cpython-*; do [ -x "$p/bin/python3" ] && echo "${{p##*/}}"; done; true')

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip().startswith("cpython-"))


def install_command(uv_env: str, uv: str, managed: ManagedPython) -> StringCommand:
    """`uv python install` into INSTALL_DIR; the mirror settings read from stdin, one
    `NAME=value` per line, so that no URL (nor its credentials) is in argv or pyinfra's output."""
    run = (f"{uv_env} UV_PYTHON_DOWNLOADS=manual UV_PYTHON_INSTALL_DIR={INSTALL_DIR} "
           f"{uv} python install --no-bin {shlex.quote(managed.minor)}")
    env = managed.env()
    if not env:
        return StringCommand(run)
    script = f'while IFS= read -r kv; do export "$kv"; done; exec env {run}'
    return StringCommand("sh", "-c", shlex.quote(script),
                         _stdin="".join(f"{k}={v}\n" for k, v in env.items()))


@operation()
def python_installed(managed: ManagedPython, uv_env: str, uv: str):
    """CPython `managed.minor` under INSTALL_DIR, from upstream or the site's mirror; once."""
    have = host.get_fact(ManagedPythons, install_dir=INSTALL_DIR)
    found = [n for n in have if n.startswith(f"cpython-{managed.minor}.")]
    if found:
        host.noop(f"{found[-1]} in {INSTALL_DIR}")
        return
    yield install_command(uv_env, uv, managed)
