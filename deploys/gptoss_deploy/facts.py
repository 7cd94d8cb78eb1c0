"""Custom pyinfra facts: read-only, one shell command each, tolerant of missing tools.

`HostFacts` is everything the config needs (OS, arch, python3, NVIDIA/AMD GPUs, NVSwitch,
system CUDA); `DeployState` is what is already deployed (uv, stack markers, `current`,
doctor marker). One command each keeps a no-change re-run to a few round trips per host.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from pyinfra.api import FactBase

# POSIX sh; every line is `key=value` or `gpu=...`, so process() is a tiny parser.
_HOST_FACTS_SH = r"""
if [ -r /etc/os-release ]; then . /etc/os-release; fi
echo "os_id=${ID:-}"; echo "os_like=${ID_LIKE:-}"; echo "os_version=${VERSION_ID:-}"; echo "os_pretty=${PRETTY_NAME:-}"
echo "arch=$(uname -m)"
PY=$(command -v python3 2>/dev/null)
if [ -n "$PY" ]; then echo "python_path=$PY"; echo "python_version=$($PY -c 'import platform;print(platform.python_version())' 2>/dev/null)"
else echo "python_candidate=$(apt-cache policy python3 2>/dev/null | awk '/Candidate:/{print $2}')"; fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version,persistence_mode --format=csv,noheader,nounits 2>/dev/null | sed 's/^/nvgpu=/'
fi
if [ -r /proc/driver/nvidia/version ]; then echo "nvproc=$(head -n1 /proc/driver/nvidia/version)"; fi
echo "nvswitch_count=$(ls /proc/driver/nvidia-nvswitch/devices 2>/dev/null | wc -l)"
if [ -r /opt/rocm/.info/version ]; then echo "rocm_version=$(cat /opt/rocm/.info/version)"; fi
for p in /sys/class/kfd/kfd/topology/nodes/*/properties; do
  [ -r "$p" ] || continue
  s=$(awk '$1=="simd_count"{print $2}' "$p"); g=$(awk '$1=="gfx_target_version"{print $2}' "$p")
  if [ "${s:-0}" -gt 0 ] 2>/dev/null; then echo "amdgpu=$g"; fi
done
if [ -x /usr/local/cuda/bin/nvcc ]; then echo "system_cuda=$(/usr/local/cuda/bin/nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"; fi
if systemctl is-enabled unattended-upgrades >/dev/null 2>&1; then echo "unattended_upgrades=1"; fi
for p in python3 ca-certificates; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "missing_pkg=$p"
done
true
"""


def gfx_name(target_version: str) -> str:
    """KFD's gfx_target_version (90402) -> 'gfx942'."""
    v = int(target_version)
    major, minor, step = v // 10000, (v // 100) % 100, v % 100
    return f"gfx{major}{minor:x}{step:x}"


def parse_host_facts(lines: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"gpus": [], "nvswitch_count": 0, "missing_packages": []}
    for line in lines:
        key, _, val = line.partition("=")
        val = val.strip()
        if key == "nvgpu":
            parts = [p.strip() for p in val.split(",")]
            if len(parts) >= 5 and parts[0].isdigit():
                out["gpus"].append(
                    {"vendor": "nvidia", "index": int(parts[0]), "name": parts[1], "compute_cap": parts[2],
                     "memory_mib": int(float(parts[3])) if parts[3].replace(".", "").isdigit() else None}
                )
                out["driver_version"] = parts[4]
                if len(parts) >= 6:
                    out["gpus"][-1]["persistence_mode"] = parts[5]
        elif key == "amdgpu" and val.isdigit() and int(val) > 0:
            g = gfx_name(val)
            out["gpus"].append({"vendor": "amd", "index": len(out["gpus"]), "name": g, "gfx": g})
        elif key == "nvswitch_count":
            out["nvswitch_count"] = int(val or 0)
        elif key == "nvproc" and "driver_version" not in out:
            for word in val.split():
                if word.count(".") >= 1 and word.replace(".", "").isdigit():
                    out["driver_version"] = word
                    break
        elif key == "system_cuda":
            out["system_cuda_version"] = val or None
        elif key == "python_candidate":
            # No python3 yet: the host unit installs the distro's, so judge that version.
            m = re.match(r"\d+\.\d+(\.\d+)?", val)
            if m:
                out["python_candidate"] = m.group(0)
        elif key == "missing_pkg" and val:
            out["missing_packages"].append(val)
        elif key == "unattended_upgrades":
            out["unattended_upgrades"] = True
        elif key in ("os_id", "os_like", "os_version", "os_pretty", "arch", "python_path", "python_version",
                     "rocm_version"):
            out[key] = val or None
    if not out.get("python_version") and out.get("python_candidate"):
        out["python_version"], out["python_path"] = out["python_candidate"], "/usr/bin/python3"
    return out


class HostFacts(FactBase):
    """OS, arch, python3, GPUs (NVIDIA via nvidia-smi, AMD via KFD topology), NVSwitch, CUDA."""

    def default(self):  # no output at all (a bare host)
        return self.process([])

    def command(self) -> str:
        return "sh -c " + shlex.quote(_HOST_FACTS_SH)

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_host_facts(output)


class DeployState(FactBase):
    """What this deploy left on the host: `key=value` lines, {} on a bare host."""

    def default(self):  # no output at all (a bare host)
        return self.process([])

    def command(self, uv: str, markers: list[str], current: str, doctor_marker: str, files: list[str], links: tuple = ()) -> str:
        parts = [
            f"if [ -x {shlex.quote(uv)} ]; then echo \"uv=$({shlex.quote(uv)} --version 2>/dev/null)\"; fi",
            f"echo \"current=$(readlink {shlex.quote(current)} 2>/dev/null)\"",
            f"if [ -r {shlex.quote(doctor_marker)} ]; then echo \"doctor=$(cat {shlex.quote(doctor_marker)})\"; fi",
        ]
        for m in markers:
            parts.append(f"if [ -r {shlex.quote(m)} ]; then echo \"marker:{m}=$(cat {shlex.quote(m)})\"; fi")
        for f in files:
            parts.append(f"if [ -s {shlex.quote(f)} ]; then echo \"file:{f}=1\"; fi")
        for ln in links:
            parts.append(f"echo \"link:{ln}=$(readlink {shlex.quote(ln)} 2>/dev/null)\"")
        parts.append("true")
        return "sh -c " + shlex.quote("; ".join(parts))

    def process(self, output: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"markers": {}, "files": set(), "links": {}}
        for line in output:
            key, _, val = line.partition("=")
            if key.startswith("marker:"):
                out["markers"][key[7:]] = val.strip()
            elif key.startswith("file:"):
                out["files"].add(key[5:])
            elif key.startswith("link:"):
                out["links"][key[5:]] = val.strip()
            else:
                out[key] = val.strip()
        return out
