"""Checks of the CUDA side: the toolkit CUDA_HOME points at, the driver, NVSwitch fabric."""

from __future__ import annotations

import posixpath
import shlex

from ..findings import Finding, Fix, check
from ._util import (
    GUIDE,
    NotApplicable,
    as_int,
    as_str,
    current_stack,
    dists_by_name,
    env_file_delete,
    env_file_hint,
    evidence,
    fact_obj,
    fmt_mm,
    host_daemon_command,
    fresh_stack_commands,
    major_minor,
    nvidia_gpus,
    obj,
    rocm_gpus,
    restart_command,
    uv_pip,
    venv_python,
    version,
)

CUDA_COMPAT = "https://docs.nvidia.com/deploy/cuda-compatibility/"


def _cuda_home_needed(snap) -> str | None:
    """Why this box needs a CUDA toolkit at run time, or None if nothing here needs one."""
    dists = dists_by_name(snap)
    if "flashinfer-python" in dists and not ({"flashinfer-cubin", "flashinfer-jit-cache"} & dists.keys()):
        return "flashinfer-python is installed without flashinfer-cubin/flashinfer-jit-cache, so its kernels JIT-compile with nvcc"
    svc_env = obj(fact_obj(snap, "service").get("environment"))
    if "CUDA_HOME" in svc_env:
        return f"the service sets CUDA_HOME={svc_env['CUDA_HOME']}"
    return None


def cuda_home_in_force(snap) -> tuple[str, dict | None, str]:
    """(fact key, CUDA_HOME value or None, whose) of the toolkit that serving uses: the deployed
    service's (`service.cuda_home`) where something is deployed, else the doctor's shell's. A
    snapshot from before `service.cuda_home` existed, or one where resolving it failed, falls back
    to the shell's."""
    fact = snap.fact("service.cuda_home")
    deployed = snap.has("service") or isinstance(fact_obj(snap, "manifest").get("env"), dict)
    if "value" in fact or ("absent" in fact and deployed and "service.cuda_home" in snap.facts):
        home = fact.get("value")
        return "service.cuda_home", home if isinstance(home, dict) else None, "the service's"
    home = snap.get("cuda_home")
    return "cuda_home", home if isinstance(home, dict) else None, "this shell's"


def _nvcc_fix(snap, kb) -> list[str]:
    """Commands that give the venv a matching nvcc and point CUDA_HOME at it (stack row data)."""
    try:
        stack, _ = current_stack(snap, kb)
    except NotApplicable:
        return []
    if not getattr(stack, "nvcc_requirement", None):
        return []  # no pip wheel carries this CUDA's nvcc: install the toolkit from NVIDIA
    sites = fact_obj(snap, "venv").get("site_packages")
    site = as_str(sites[0]) if isinstance(sites, list) and sites else None
    commands = [uv_pip(snap, "install", stack.nvcc_requirement)]
    if site and getattr(stack, "cuda_home_subdir", None):
        commands.append(f"export CUDA_HOME={posixpath.join(site, stack.cuda_home_subdir)}")
    return commands


def _for_the_service(snap, commands: list[str]) -> list[str]:
    """The shell's `export CUDA_HOME=...` rewritten as an EnvironmentFile edit plus a restart."""
    out = []
    for cmd in commands:
        if cmd.startswith("export CUDA_HOME="):
            path = env_file_hint(snap)
            out += [env_file_delete(path, ["CUDA_HOME"]),
                    f"echo {shlex.quote(cmd[len('export '):])} >> {shlex.quote(path)}",
                    restart_command(snap)]
        else:
            out.append(cmd)
    return out


@check(
    "bad-cuda-home",
    severity="error",
    title="CUDA_HOME is unset, missing, without nvcc, too old, or not torch's CUDA",
    category="cuda",
    needs=("torch.build",),
    links=[GUIDE + "#known-issues", "https://github.com/pytorch/pytorch/blob/main/torch/utils/cpp_extension.py"],
)
def bad_cuda_home(snap, kb):
    """The CUDA toolkit that torch and FlashInfer would use (CUDA_HOME, resolved as torch does) is wrong.

    Why: source builds and JIT-compiled kernels (FlashInfer without its cubin wheel, Triton's
    launcher) take nvcc and headers from CUDA_HOME, else CUDA_PATH, else nvcc on PATH, else
    /usr/local/cuda. The guide: "If the output you see is garbage, that might be because you
    haven't properly set CUDA_HOME. The CUDA version needs to be greater than or equal to 12.8
    and must be the same for installation and serving." This check reports, in order: a
    CUDA_HOME that does not exist; no toolkit where one is needed; no nvcc (or, where needed, no
    include/cuda.h) in it; a toolkit older
    than the oldest CUDA any knowledge stack uses; a different CUDA major than torch's build
    (error) or minor (warning, torch's own rule). A toolkit found only by the default search
    (nvcc on PATH, /usr/local/cuda) is judged only when something here compiles with it.

    Where a service is deployed, the toolkit judged is the one the service resolves (its
    Environment=/EnvironmentFile= values, systemd's default PATH), not the one of the shell that
    runs the doctor: `service.cuda_home`; elsewhere, the shell's `cuda_home`.

    Fix: point CUDA_HOME at a toolkit of torch's CUDA version, in the shell and in the service's
    EnvironmentFile; the stack row names a pip-installable nvcc for the venv.

    Source: the gpt-oss vLLM guide, Installation from main and Known Issues; torch's
    `_find_cuda_home()` order in torch/utils/cpp_extension.py.
    """
    if rocm_gpus(snap) and not nvidia_gpus(snap):
        raise NotApplicable("ROCm box: CUDA_HOME is not used")
    torch = fact_obj(snap, "torch.build")
    torch_mm = major_minor(torch.get("cuda"))
    if torch_mm is None:
        raise NotApplicable("torch is not a CUDA build (see torch-cuda-suffix)")
    home_key, home, whose = cuda_home_in_force(snap)
    needed = _cuda_home_needed(snap)
    keys = [home_key, "torch.build"]
    fix_cmds = _nvcc_fix(snap, kb)
    if home_key == "service.cuda_home":
        fix_cmds = _for_the_service(snap, fix_cmds)

    def finding(severity, title, text, **seen):
        return Finding(
            id="bad-cuda-home",
            severity=severity,
            title=f"{title} ({whose} environment)",
            evidence=evidence(snap, keys, cuda_home=home, judged=home_key, torch_cuda=fmt_mm(torch_mm),
                              needed_because=needed, **seen),
            fix=Fix(text=text, commands=fix_cmds),
            links=[GUIDE + "#known-issues", "https://github.com/pytorch/pytorch/blob/main/torch/utils/cpp_extension.py"],
        )

    want = f"a CUDA {fmt_mm(torch_mm)} toolkit (torch's build)"
    if home is None:
        if needed:
            # from vLLM 0.32 `vllm download-kernels` fetches FlashInfer's cubins: no compiler needed
            release = kb.release(fact_obj(snap, "vllm.install").get("version") or "0") if version(
                fact_obj(snap, "vllm.install").get("version")) else None
            text = f"Install {want} and set CUDA_HOME for the service, because {needed}."
            if release is not None and release.download_kernels and "flashinfer" in needed:
                fix_cmds[:] = [f"{posixpath.dirname(venv_python(snap))}/vllm download-kernels"]
                text = (f"Fetch FlashInfer's prebuilt kernels with `vllm download-kernels` (vLLM {release.vllm} has it), "
                        f"so nothing JIT-compiles; or install {want} and set CUDA_HOME for the service, because {needed}.")
            yield finding(
                "warning",
                "No CUDA toolkit found (CUDA_HOME/CUDA_PATH unset, no nvcc on PATH, no /usr/local/cuda)",
                text,
            )
        return
    path, rule = home.get("path"), home.get("rule")
    explicit = rule in ("CUDA_HOME", "CUDA_PATH")
    if not needed and not explicit:
        return  # a toolkit found by default search that nothing here compiles with
    if home.get("exists") is False:
        yield finding("error", f"CUDA_HOME resolves to {path} (from {rule}), which does not exist",
                      f"Set {rule if rule in ('CUDA_HOME', 'CUDA_PATH') else 'CUDA_HOME'} to {want}, or unset it.")
        return
    if not home.get("nvcc"):
        if needed or explicit:
            yield finding("warning", f"CUDA_HOME {path} (from {rule}) has no bin/nvcc",
                          f"Point CUDA_HOME at a full toolkit: {want}.")
        return
    if needed and home.get("has_cuda_h") is False:
        yield finding("warning", f"CUDA_HOME {path} (from {rule}) has nvcc but no include/cuda.h",
                      f"JIT compiles need the headers too: point CUDA_HOME at a full toolkit ({want}).")
        return
    home_mm = major_minor(home.get("version"))
    if home_mm is None:
        return
    floor = min((major_minor(s.cuda) for s in kb.stacks.values() if major_minor(s.cuda)), default=None)
    if floor and home_mm < floor:
        yield finding("error", f"CUDA_HOME {path} is CUDA {fmt_mm(home_mm)}, older than {fmt_mm(floor)}",
                      f"gpt-oss kernels need CUDA >= {fmt_mm(floor)}: point CUDA_HOME at {want}.", floor=fmt_mm(floor))
        return
    if home_mm[0] != torch_mm[0]:
        yield finding("error", f"CUDA_HOME {path} is CUDA {fmt_mm(home_mm)} but torch is built for CUDA {fmt_mm(torch_mm)}",
                      f"Build and serve with the same CUDA: point CUDA_HOME at {want}.")
    elif home_mm != torch_mm:
        yield finding("warning", f"CUDA_HOME {path} is CUDA {fmt_mm(home_mm)}; torch is built for CUDA {fmt_mm(torch_mm)}",
                      f"Minor versions differ (torch tolerates it, JIT kernels may not): prefer {want}.")


@check(
    "driver-too-old",
    severity="error",
    title="The NVIDIA driver is too old for torch's CUDA",
    category="cuda",
    needs=("torch.build", "nvidia.driver"),
    links=[CUDA_COMPAT, "https://github.com/vllm-project/vllm/issues/44335"],
)
def driver_too_old(snap, kb):
    """The NVIDIA driver is older than the minimum for the CUDA that torch is built for.

    Why: a CUDA 13 build (vLLM >= 0.20's default wheels) on a 570/575 driver fails at the first
    CUDA call with "The NVIDIA driver on your system is too old (found version 12080)" or
    "libcudart.so.13: cannot open shared object file". The minimum driver per CUDA comes from the
    knowledge (NVIDIA's toolkit release notes); the driver's own newest CUDA (nvidia-smi's
    "CUDA Version") is compared too.

    Fix: upgrade the driver to at least the minimum, or install the newest stack this driver
    runs (for CUDA 13 on a 575 driver: a cu129 build).

    Source: NVIDIA CUDA compatibility guide; vllm-project/vllm#44335, #42756, #43847.
    """
    torch = fact_obj(snap, "torch.build")
    cuda = torch.get("cuda")
    if not cuda:
        raise NotApplicable("torch is not a CUDA build")
    driver = str(fact_obj(snap, "nvidia.driver").get("version") or "")
    need = kb.min_driver_for_cuda(str(cuda))
    too_old_for_min = bool(need and version(driver) and version(driver) < version(need))
    driver_max = snap.get("nvidia.cuda_driver_max")
    torch_mm, max_mm = major_minor(cuda), major_minor(driver_max)
    too_new_for_max = bool(torch_mm and max_mm and torch_mm > max_mm)
    if not (too_old_for_min or too_new_for_max):
        return
    fallback = _newest_stack_for_driver(kb, driver, driver_max)
    commands = fresh_stack_commands(fallback) if fallback else []
    yield Finding(
        id="driver-too-old",
        severity="error",
        title=f"Driver {driver or '(unknown)'} is too old for torch built for CUDA {cuda}"
        + (f" (needs >= {need})" if need else ""),
        evidence=evidence(
            snap, ["nvidia.driver", "nvidia.cuda_driver_max", "torch.build"],
            driver=driver, driver_max_cuda=driver_max, torch=torch.get("version"), torch_cuda=cuda, min_driver=need,
        ),
        fix=Fix(
            text=f"Upgrade the NVIDIA driver to >= {need or 'the CUDA ' + str(cuda) + ' minimum'} (and reboot)"
            + (f", or serve the newest stack this driver runs, {fallback.name} (CUDA {fallback.cuda}, driver >= "
               f"{fallback.min_driver}), from a venv of its own:" if fallback else "."),
            commands=commands,
        ),
        links=[CUDA_COMPAT, "https://github.com/vllm-project/vllm/issues/44335"],
    )


def _newest_stack_for_driver(kb, driver: str, driver_max) -> object | None:
    d = version(driver)
    fits = []
    for s in kb.shipped_stacks.values():  # a recommendation: never a site's own stack
        if s.cuda is None:  # a ROCm stack
            continue
        if d is not None and version(s.min_driver) and version(s.min_driver) > d:
            continue
        max_mm = major_minor(driver_max)
        if max_mm and major_minor(s.cuda) and major_minor(s.cuda) > max_mm:
            continue
        fits.append(s)
    return fits[-1] if fits else None  # stacks are ordered oldest first


@check(
    "fabric-manager-inactive",
    severity="error",
    title="NVSwitch present but the fabric manager is not running",
    category="cuda",
    needs=("nvidia.nvswitch", "nvidia.fabric_manager"),
    links=[
        "https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/",
        "https://github.com/aws-samples/aws-deep-learning-ami-ubuntu-dcv-desktop/issues/33",
    ],
)
def fabric_manager_inactive(snap, kb):
    """The box has NVSwitches (HGX/DGX A100, H100, H200, B200) but nvidia-fabricmanager is not active.

    Why: on NVSwitch systems the GPUs stay unusable until the fabric manager has configured the
    switches: CUDA init fails with error 802 "system not yet initialized", so vLLM dies with
    "No CUDA GPUs are available" or an NCCL error, even though nvidia-smi lists every GPU.

    Fix: install the fabric manager of exactly the driver's branch and start it.

    Source: NVIDIA Fabric Manager user guide; aws-samples/aws-deep-learning-ami-ubuntu-dcv-desktop#33
    ("CUDA initialization fails with 802 system error owing to lack of nvidia-fabricmanager").
    """
    count = as_int(fact_obj(snap, "nvidia.nvswitch").get("count"), 0)
    if count <= 0:
        return
    fm = fact_obj(snap, "nvidia.fabric_manager")
    if fm.get("installed") and fm.get("active"):
        return
    driver = str(fact_obj(snap, "nvidia.driver").get("version") or "")
    branch = driver.split(".")[0] if driver else "<driver-branch>"
    commands = ([] if fm.get("installed") else [f"apt-get install -y nvidia-fabricmanager-{branch}"]) + [
        host_daemon_command(snap, "nvidia-fabricmanager", "enable --now"),
        host_daemon_command(snap, "nvidia-fabricmanager", "status"),
    ]
    state = "not installed" if not fm.get("installed") else "installed but not active"
    yield Finding(
        id="fabric-manager-inactive",
        severity="error",
        title=f"{count} NVSwitch(es) present; nvidia-fabricmanager is {state}",
        evidence=evidence(snap, ["nvidia.nvswitch", "nvidia.fabric_manager", "nvidia.driver"], nvswitches=count, fabric_manager=fm, driver=driver),
        fix=Fix(
            text=f"Install nvidia-fabricmanager for driver branch {branch} (Ubuntu package name shown; "
            "RHEL: nvidia-fabric-manager) and start it before vLLM.",
            commands=commands,
        ),
        links=["https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/"],
    )


@check(
    "fabric-manager-version-mismatch",
    severity="error",
    title="The fabric manager's version differs from the driver's",
    category="cuda",
    needs=("nvidia.fabric_manager", "nvidia.driver"),
    links=["https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/", "https://github.com/ollama/ollama/issues/12136"],
)
def fabric_manager_version_mismatch(snap, kb):
    """nvidia-fabricmanager is installed with a version other than the driver's.

    Why: the fabric manager refuses to start unless its version equals the kernel driver's
    exactly; after a driver upgrade without the matching fabric manager the NVSwitch GPUs are
    unusable (CUDA error 802 "system not yet initialized").

    Fix: install the fabric manager build equal to the driver version and restart it (or
    reboot).

    Source: NVIDIA Fabric Manager user guide; ollama/ollama#12136 (fixed by reinstalling the
    fabric manager of the driver's version).
    """
    fm = fact_obj(snap, "nvidia.fabric_manager")
    fm_v = fm.get("version")
    driver = str(fact_obj(snap, "nvidia.driver").get("version") or "")
    if not fm.get("installed") or not fm_v or not driver or version(fm_v) == version(driver) or str(fm_v) == driver:
        return
    branch = driver.split(".")[0]
    yield Finding(
        id="fabric-manager-version-mismatch",
        severity="error",
        title=f"nvidia-fabricmanager {fm_v} does not match driver {driver}",
        evidence=evidence(snap, ["nvidia.fabric_manager", "nvidia.driver"], fabric_manager=fm_v, driver=driver),
        fix=Fix(
            text=f"Install nvidia-fabricmanager {driver} (same as the driver) and restart it.",
            commands=[f"apt-get install -y nvidia-fabricmanager-{branch}={driver}-1", host_daemon_command(snap, "nvidia-fabricmanager", "restart")],
        ),
        links=["https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/"],
    )


@check(
    "torch-wrong-vendor",
    severity="error",
    title="torch is built for the other GPU vendor",
    category="cuda",
    needs=("torch.build",),
    links=["https://pytorch.org/get-started/locally/"],
)
def torch_wrong_vendor(snap, kb):
    """torch is a ROCm build on an NVIDIA-only box, or a CUDA build on an AMD-only box.

    Why: the wheel's GPU runtime must match the hardware; a ROCm torch sees no NVIDIA GPU (and
    the reverse), so vLLM fails with "No CUDA GPUs are available" or picks the CPU platform.

    Fix: reinstall torch (and vLLM) for this box's vendor: on NVIDIA the stack's CUDA build, on
    AMD vLLM's ROCm wheels.

    Source: PyTorch install matrix; vLLM ROCm install docs.
    """
    torch = fact_obj(snap, "torch.build")
    nv, amd = nvidia_gpus(snap), rocm_gpus(snap)
    if torch.get("hip") and nv and not amd:
        want, have = "CUDA", f"ROCm (hip {torch.get('hip')})"
        cmd = [uv_pip(snap, "install", "--reinstall-package", "torch", "--torch-backend", "auto", "vllm")]
    elif torch.get("cuda") and amd and not nv:
        want, have = "ROCm", f"CUDA {torch.get('cuda')}"
        cmd = [uv_pip(snap, "install", "--reinstall", "vllm", "--extra-index-url", "https://wheels.vllm.ai/rocm")]
    else:
        return
    yield Finding(
        id="torch-wrong-vendor",
        severity="error",
        title=f"torch {torch.get('version')} is a {have} build but this box's GPUs need {want}",
        evidence=evidence(snap, ["torch.build", "nvidia.gpus", "rocm.gpus"], torch=torch.get("version"), nvidia_gpus=len(nv), amd_gpus=len(amd)),
        fix=Fix(text=f"Reinstall torch and vLLM for {want}.", commands=cmd),
        links=["https://pytorch.org/get-started/locally/"],
    )
