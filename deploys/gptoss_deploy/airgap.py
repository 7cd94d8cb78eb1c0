"""Air-gapped installs: the stack from a wheelhouse with no network at all, optionally layered on
an existing Python that already holds the exact torch build the stack pins (vendor PyTorch images).

Data keys:
- `gptoss_wheelhouse`: a directory of wheels on the host; the stack installs with
  `uv pip install --offline --no-index --find-links DIR` (and the doctor's venv from it too).
- `gptoss_wheelhouse_no_deps`: install exactly the wheelhouse's wheels, `--no-deps`, for a
  curated closure that cannot satisfy every Requires-Dist (vLLM lists dozens of packages a
  server never imports); the doctor gate then judges the result.
- `gptoss_base_python`: an existing interpreter whose torch/version.py must equal the stack's
  pin (e.g. 2.11.0+cu130). The stack venv is made with `uv venv --system-site-packages` from it
  and, where it is itself a venv (whose site-packages `--system-site-packages` does not reach),
  a .pth line per base site-packages directory, after the venv's own: the venv's wheels win,
  torch and its CUDA libraries come from the base. Checked before any host changes.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any, Mapping

from pyinfra.api import FactBase

from .fields import ConfigError, bad, check_abs_path, check_bool

KEYS = ("gptoss_wheelhouse", "gptoss_wheelhouse_no_deps", "gptoss_base_python")
PTH_NAME = "gptoss-base-python.pth"

# Runs on the host with the base interpreter, isolated (-I), importing nothing heavy: its
# version, whether it is a venv, its site-packages, and torch's build read as text.
_PROBE_PY = r"""
import json, os, re, site, sys
dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
torch = cuda = None
for d in dirs:
    p = os.path.join(d, 'torch', 'version.py')
    if os.path.isfile(p):
        text = open(p, encoding='utf-8', errors='replace').read()
        m = re.search(r"^__version__\s*(?::\s*str)?\s*=\s*['\"]([^'\"]+)", text, re.M)
        c = re.search(r"^cuda\s*(?::\s*[\w\[\], ]+)?\s*=\s*['\"]([^'\"]+)", text, re.M)
        torch, cuda = (m.group(1) if m else '?'), (c.group(1) if c else None)
        break
print(json.dumps({'version': '%d.%d.%d' % sys.version_info[:3], 'is_venv': sys.prefix != sys.base_prefix,
                  'site': dirs, 'torch': torch, 'torch_cuda': cuda, 'executable': sys.executable}))
"""


class AirgapFacts(FactBase):
    """{"wheelhouse": [wheel file names] or None, "base": probe dict or None}."""

    def default(self):
        return {"wheelhouse": None, "base": None}

    def command(self, wheelhouse: str | None, base_python: str | None) -> str:
        parts = []
        if wheelhouse:
            w = shlex.quote(wheelhouse)
            parts.append(f"if [ -d {w} ]; then for f in {w}/*.whl; do [ -e \"$f\" ] && echo \"whl=${{f##*/}}\"; done; "
                         f"echo whdir=1; fi")
        if base_python:
            b = shlex.quote(base_python)
            parts.append(f"if [ -x {b} ]; then echo \"base=$({b} -I -c {shlex.quote(_PROBE_PY)} 2>&1 | tail -n 1)\"; fi")
        parts.append("true")
        return "sh -c " + shlex.quote("; ".join(parts))

    def process(self, output: list[str]) -> dict:
        out: dict[str, Any] = {"wheelhouse": None, "base": None}
        wheels = []
        for line in output:
            key, _, val = line.partition("=")
            if key == "whdir":
                out["wheelhouse"] = wheels
            elif key == "whl":
                wheels.append(val.strip())
            elif key == "base":
                try:
                    out["base"] = json.loads(val)
                except ValueError:
                    out["base"] = {"error": val.strip()[-300:]}
        return out


@dataclass(frozen=True)
class Airgap:
    wheelhouse: str | None = None
    wheels: tuple[str, ...] = ()  # the wheel files found there, sorted
    no_deps: bool = False
    base_python: str | None = None
    base_version: str | None = None  # X.Y.Z of the base interpreter
    base_site: tuple[str, ...] = ()  # its site-packages, layered under the stack venv's
    base_is_venv: bool = False
    torch_build: str | None = None  # as read from the base's torch/version.py

    @property
    def enabled(self) -> bool:
        return bool(self.wheelhouse)


def wanted_torch(stack_versions: Mapping[str, Any]) -> str | None:
    """The stack's torch pin as torch/version.py spells it: '2.11.0' + '+cu130'."""
    v = stack_versions.get("torch")
    return f"{v}{stack_versions.get('torch_local') or ''}" if v else None


def wheel_names(files: list[str]) -> set[str]:
    """Canonical distribution names of wheel files (`Foo_Bar-1.0-py3-none-any.whl` -> `foo-bar`)."""
    return {re.sub(r"[-_.]+", "-", f.split("-", 1)[0]).lower() for f in files if f.endswith(".whl")}


def requirement_name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~;@ ]", req, maxsplit=1)[0]).lower()


def check(host: str, data: Mapping[str, Any], facts: Mapping[str, Any], stack_name: str,
          stack_versions: Mapping[str, Any], python_spec: str, requirements: tuple[str, ...]) -> Airgap:
    """The air-gap settings of one host (pure): one ConfigError naming key, value and fix."""
    wh_value, base_value = data.get("gptoss_wheelhouse"), data.get("gptoss_base_python")
    no_deps = check_bool(host, "gptoss_wheelhouse_no_deps", data.get("gptoss_wheelhouse_no_deps"), False)
    if wh_value is None:
        if no_deps:
            raise bad(host, "gptoss_wheelhouse_no_deps", True, "needs gptoss_wheelhouse",
                        "set gptoss_wheelhouse to the directory of wheels, or drop gptoss_wheelhouse_no_deps")
        if base_value is not None:
            raise bad(host, "gptoss_base_python", base_value, "needs gptoss_wheelhouse",
                        "set gptoss_wheelhouse (uv cannot see the base's torch when it resolves from an index)")
        return Airgap()
    wheelhouse = check_abs_path(host, "gptoss_wheelhouse", wh_value, "/srv/wheelhouse")
    ag = facts.get("airgap") or {}
    files = ag.get("wheelhouse")
    if files is None:
        raise bad(host, "gptoss_wheelhouse", wh_value, "no such directory on the host",
                    "copy the wheels there first (rsync/scp), or fix the path")
    if not files:
        raise bad(host, "gptoss_wheelhouse", wh_value, "holds no .whl files", "put the stack's wheels there")
    have = wheel_names(files)
    missing = [r for r in requirements if requirement_name(r) not in have]
    if missing and base_value is None:
        raise bad(host, "gptoss_wheelhouse", wh_value, f"has no wheel for {', '.join(missing)} (stack {stack_name})",
                    "add those wheels to the wheelhouse")
    if base_value is None:
        return Airgap(wheelhouse=wheelhouse, wheels=tuple(sorted(files)), no_deps=no_deps)

    key = "gptoss_base_python"
    base_python = check_abs_path(host, key, base_value, "/opt/torch/.venv/bin/python3")
    if not no_deps:
        raise bad(host, key, base_value, "needs gptoss_wheelhouse_no_deps=True",
                    "set it: uv resolves against the new venv alone and would install a second torch over the base's")
    probe = ag.get("base")
    if not probe:
        raise bad(host, key, base_value, "not an executable on the host", "point it at the python3 that holds torch")
    if "error" in probe:
        raise bad(host, key, base_value, f"does not run: {probe['error']}", "point it at a working python3")
    from packaging.specifiers import SpecifierSet

    if python_spec and probe["version"] not in SpecifierSet(python_spec):
        raise bad(host, key, base_value, f"is Python {probe['version']}, outside stack {stack_name}'s {python_spec}",
                    "use an interpreter in that range, or another stack")
    want, got = wanted_torch(stack_versions), probe.get("torch")
    if want and got != want:
        seen = f"holds torch {got} (torch/version.py)" if got else "holds no torch"
        raise bad(host, key, base_value, f"{seen}, stack {stack_name} pins torch {want}",
                    f"use a Python whose torch is exactly {want}, or drop gptoss_base_python to install torch from the wheelhouse")
    missing = [r for r in requirements if requirement_name(r) not in have]
    if missing:
        raise bad(host, "gptoss_wheelhouse", wh_value, f"has no wheel for {', '.join(missing)} (stack {stack_name})",
                    "add those wheels to the wheelhouse")
    return Airgap(wheelhouse=wheelhouse, wheels=tuple(sorted(files)), no_deps=True, base_python=base_python, base_version=probe["version"],
                  base_site=tuple(probe.get("site") or ()), base_is_venv=bool(probe.get("is_venv")), torch_build=got)


def spec_fields(ag: Airgap) -> dict:
    """What the air gap adds to the stack venv's install spec: nothing when unused, so the hash
    of a host that does not use it stays what it was. The wheel files, not the directory: like a
    mirror URL, the path moves the source, not the result."""
    if not ag.enabled:
        return {}
    return {"wheels": list(ag.wheels), "no_deps": ag.no_deps, "base_python": ag.base_python,
            "torch_build": ag.torch_build}


def install_args(ag: Airgap) -> list[str]:
    """uv's options for a zero-network install from the wheelhouse."""
    return ["--offline", "--no-index", "--find-links", ag.wheelhouse]


def site_packages(venv: str, version: str) -> str:
    return f"{venv}/lib/python{'.'.join(version.split('.')[:2])}/site-packages"


def pth_text(ag: Airgap) -> str:
    # Plain directory lines: site appends them after the venv's own site-packages (so the
    # venv's wheels win), and the doctor reads them as text.
    return "".join(f"{d}\n" for d in ag.base_site)


_VERIFY_PY = r"""
import importlib.util, os, re, sys
want = sys.argv[1]
spec = importlib.util.find_spec('torch')
if spec is None or not spec.origin:
    sys.exit('gptoss: the stack venv sees no torch; fix: gptoss_base_python must hold torch ' + want)
p = os.path.join(os.path.dirname(spec.origin), 'version.py')
m = re.search(r"^__version__\s*(?::\s*str)?\s*=\s*['\"]([^'\"]+)", open(p).read(), re.M)
got = m.group(1) if m else '?'
if got != want:
    sys.exit('gptoss: the stack venv sees torch %s at %s, the stack pins %s; fix: gptoss_base_python' % (got, p, want))
print('torch %s from %s' % (got, p))
"""


def venv_commands(uv_env: str, uv: str, venv: str, ag: Airgap, want_torch: str | None) -> list[str]:
    """Shell commands that make the stack venv on the base interpreter and prove the venv
    imports the base's torch build (read as text, torch is not imported)."""
    cmds = [f"{uv_env} {uv} venv --quiet --system-site-packages --python {shlex.quote(ag.base_python)} {venv}"]
    if ag.base_is_venv and ag.base_site:
        sp = site_packages(venv, ag.base_version)
        cmds.append(f"printf %s {shlex.quote(pth_text(ag))} > {sp}/{PTH_NAME}")
    if want_torch:
        cmds.append(f"{venv}/bin/python -I -c {shlex.quote(_VERIFY_PY)} {shlex.quote(want_torch)}")
    return cmds


def install_commands(uv_env: str, uv: str, venv_py: str, ag: Airgap, requirements: list[str], cuda_prefix: str) -> list[str]:
    """The install: exactly the wheelhouse with --no-deps (then the stack's requirements, which
    must already be satisfied), or a normal resolution restricted to the wheelhouse."""
    common = " ".join(shlex.quote(a) for a in install_args(ag))
    reqs = " ".join(shlex.quote(r) for r in requirements)
    if ag.no_deps:
        wh = shlex.quote(ag.wheelhouse)
        return [
            f"{cuda_prefix}{uv_env} {uv} pip install --python {venv_py} {common} --no-deps {wh}/*.whl",
            f"{cuda_prefix}{uv_env} {uv} pip install --python {venv_py} {common} --no-deps {reqs}",
        ]
    return [f"{cuda_prefix}{uv_env} {uv} pip install --python {venv_py} {common} {reqs}"]


def filter_missing_packages(host: str, missing: tuple[str, ...], facts: Mapping[str, Any], ag: Airgap) -> tuple[str, ...]:
    """With no network apt cannot install anything: ca-certificates is not needed, python3 is
    not needed when a python3 runs already; anything else is a one-line error."""
    if not ag.enabled:
        return missing
    have_python = bool(facts.get("python_version") and facts.get("python_path")) or bool(ag.base_python)
    left = tuple(p for p in missing if p != "ca-certificates" and not (p == "python3" and have_python))
    if left:
        raise ConfigError(f"host {host}: gptoss_wheelhouse is set (no network) but the host lacks {', '.join(left)}; "
                            f"fix: install {' '.join(left)} from your local apt mirror first")
    return ()
