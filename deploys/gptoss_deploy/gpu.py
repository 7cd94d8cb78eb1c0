"""The GPU stack on the host, and CUDA_HOME.

NVIDIA: the driver (opt-in; otherwise config refuses an old one with the fix), the fabric
manager only where NVSwitches exist and pinned to the driver's exact version, persistence
mode, and GPU packages held and kept out of unattended upgrades (an unattended driver
update breaks NVML until reboot). ROCm hosts only get their settings in the service env.

CUDA_HOME is chosen once in the config and used both by the install and by the service.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.operations import systemd

from . import config as C
from .fields import version_tuple
from .ops import ManagedFile, UnitState, files_in_place

UNATTENDED_BLACKLIST = "/etc/apt/apt.conf.d/51gptoss-gpu-packages"
# Package name patterns (regexes, as unattended-upgrades reads them) that must only change
# in a planned, rebooting upgrade.
GPU_PACKAGE_PATTERNS = ("nvidia-", "libnvidia-", "cuda-", "libcuda", "linux-modules-nvidia-", "amdgpu", "rocm")


class NvidiaPackages(FactBase):
    """Installed NVIDIA packages (name=version) and the apt holds among them."""

    def default(self):  # no output at all (a bare host)
        return self.process([])

    def command(self) -> str:
        return (
            "sh -c " + shlex.quote(
                "dpkg-query -W -f '${Package}=${Version} ${db:Status-Abbrev}\\n' 'nvidia-*' 'libnvidia-*' 2>/dev/null"
                " | awk '$2 ~ /^ii/ {print \"pkg \" $1}'; apt-mark showhold 2>/dev/null | sed 's/^/hold /'; true"
            )
        )

    def process(self, output: list[str]) -> dict:
        pkgs, holds = {}, set()
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "pkg":
                name, _, ver = rest.partition("=")
                pkgs[name] = ver
            elif kind == "hold":
                holds.add(rest.strip())
        return {"packages": pkgs, "holds": holds}


def driver_branch(version: str) -> str:
    return version.split(".")[0]


def fabric_manager_package(driver: str) -> str:
    """Ubuntu names it per branch up to 580 and drops the branch from 590 on (NVIDIA's driver
    docs, "Ubuntu 590 and later packages"); its version must equal the driver's exactly."""
    branch = driver_branch(driver)
    return "nvidia-fabricmanager" if branch.isdigit() and int(branch) >= 590 else f"nvidia-fabricmanager-{branch}"


def unattended_blacklist() -> str:
    pats = "\n".join(f'    "{p}";' for p in GPU_PACKAGE_PATTERNS)
    return (
        "// Written by the gptoss deploy: GPU driver, CUDA and ROCm packages change only in a\n"
        "// planned upgrade with a reboot, never unattended.\n"
        f"Unattended-Upgrade::Package-Blacklist {{\n{pats}\n}};\n"
    )


@operation()
def fabric_manager(cfg: C.HostConfig):
    """nvidia-fabricmanager at exactly the driver's version, held, enabled."""
    drv = cfg.driver_version
    state = host.get_fact(NvidiaPackages)
    want = [n for n in state["packages"] if n.startswith("nvidia-fabricmanager")]
    installed = {n: v for n, v in state["packages"].items() if n in want}
    if installed and all(v.startswith(drv) for v in installed.values()) and all(n in state["holds"] for n in want):
        host.noop(f"fabric manager {drv} installed and held")
        return
    pkg = fabric_manager_package(drv)
    yield StringCommand(f"apt-mark unhold {pkg} >/dev/null 2>&1 || true")
    yield StringCommand(
        f"DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-change-held-packages "
        f"{pkg}={shlex.quote(drv)}-*"
    )
    yield StringCommand(f"apt-mark hold {pkg}")


@operation()
def persistence_mode(gpus: tuple):
    """nvidia-persistenced enabled and running where the driver ships its unit (the packaged
    drivers do); else `nvidia-smi -pm 1`, which lasts until reboot, when a GPU has it off."""
    st = host.get_fact(UnitState, unit="nvidia-persistenced.service")
    if st.get("enabled") in ("enabled", "static", "disabled", "masked"):
        if st.get("enabled") == "enabled" and st.get("active") == "active":
            host.noop("nvidia-persistenced running")
            return
        yield StringCommand("systemctl", "unmask", "nvidia-persistenced.service", "&&", "systemctl", "enable", "--now",
                            "nvidia-persistenced.service")
        return
    if all(g.get("persistence_mode") == "Enabled" for g in gpus):
        host.noop("persistence mode on for every GPU")
        return
    yield StringCommand("nvidia-smi", "-pm", "1")


@operation()
def hold_gpu_packages():
    """apt-mark hold every installed NVIDIA package (driver, utils, libs)."""
    state = host.get_fact(NvidiaPackages)
    unheld = sorted(n for n in state["packages"] if n not in state["holds"])
    if not unheld:
        host.noop("NVIDIA packages held")
        return
    yield StringCommand("apt-mark", "hold", *unheld)


@operation()
def nvidia_driver(cfg: C.HostConfig):
    """Opt-in (gptoss_install_driver): the open-module server driver of the needed branch."""
    have = cfg.driver_version
    if have and version_tuple(have) >= version_tuple(cfg.min_driver or "0"):
        host.noop(f"driver {have} >= {cfg.min_driver}")
        return
    branch = driver_branch(cfg.min_driver or "580")
    # Ubuntu's server branch packages; Turing+ (every gpt-oss GPU) runs the open modules.
    yield StringCommand(
        f"DEBIAN_FRONTEND=noninteractive apt-get install -y "
        f"nvidia-headless-{branch}-server-open nvidia-utils-{branch}-server"
    )
    # Stop this host here: the new driver only loads after a reboot.
    yield StringCommand("echo 'gptoss: NVIDIA driver installed; fix: reboot this host, then run the deploy again' >&2 && false")


@operation()
def cuda_home_check(cfg: C.HostConfig):
    """At execute time: CUDA_HOME holds an nvcc at least as new as the stack's CUDA."""
    if not host.state.is_executing or not cfg.cuda_home:
        return
    need = cfg.stack_versions.get("cuda") or "0"
    nvcc = f"{cfg.cuda_home}/bin/nvcc"
    ok, out = host.run_shell_command(StringCommand(f"{nvcc} --version 2>/dev/null || true"))
    text = " ".join(out.stdout_lines)
    import re

    m = re.search(r"release (\d+\.\d+)", text)
    if m and version_tuple(m.group(1)) >= version_tuple(need):
        return
    found = m.group(1) if m else "no nvcc"
    msg = (
        f"gptoss: CUDA_HOME={cfg.cuda_home} has {found}, stack {cfg.stack} needs CUDA >= {need}; "
        f"fix: check the stack's nvcc_requirement/cuda_home_subdir or set gptoss_cuda_home"
    )
    yield StringCommand("echo", shlex.quote(msg), ">&2", "&&", "false")


@deploy("gptoss gpu")
def apply(cfg: C.HostConfig):
    if cfg.vendor == "nvidia" and cfg.gpu_count:
        if cfg.install_driver:
            nvidia_driver(name="NVIDIA driver (opt-in)", cfg=cfg)
        if cfg.nvswitch_count and cfg.driver_version:
            fabric_manager(name="fabric manager matched to the driver", cfg=cfg)
            systemd.service(name="fabric manager running", service="nvidia-fabricmanager", running=True, enabled=True)
        persistence_mode(name="persistence mode", gpus=tuple(cfg.gpus))
        hold_gpu_packages(name="hold NVIDIA packages")
    if cfg.gpu_count:
        files_in_place(name="GPU packages out of unattended upgrades",
                       files=(ManagedFile(UNATTENDED_BLACKLIST, unattended_blacklist()),))


@deploy("gptoss cuda home")
def check_cuda_home(cfg: C.HostConfig):
    cuda_home_check(name="CUDA_HOME toolkit version", cfg=cfg)
