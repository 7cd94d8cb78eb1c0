"""Checks of the live state that stops a start although every file is right: the port, the GPUs
the service may see and the memory left on them, what its user may read, the disk, and a venv
or torch that cannot serve at all."""

from __future__ import annotations

import shlex

from ..findings import Fix, check, found
from ._util import (
    NotApplicable,
    as_int,
    current_stack,
    evidence,
    fact_list,
    fact_obj,
    gpu_memory_utilization,
    nvidia_gpus,
    restart_command,
    rocm_gpus,
    served_model,
    service,
    stack_install_commands,
    tensor_parallel_size,
    uv_pip,
    venv_path,
)

PROC_NET = "https://www.kernel.org/doc/html/latest/networking/proc_net_tcp.html"
CUDA_ENV = "https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#cuda-environment-variables"
ROCM_ENV = "https://rocm.docs.amd.com/en/latest/conceptual/gpu-isolation.html"
VLLM_MEMORY = "https://docs.vllm.ai/en/latest/configuration/conserving_memory.html"
PATH_RESOLUTION = "https://man7.org/linux/man-pages/man7/path_resolution.7.html"
HF_CACHE = "https://huggingface.co/docs/huggingface_hub/guides/manage-cache"
TORCH_INSTALL = "https://pytorch.org/get-started/locally/"
VLLM_GPU = "https://docs.vllm.ai/en/latest/getting_started/installation/gpu.html"
VENV_DOC = "https://docs.python.org/3/library/venv.html"
RECORD_SPEC = "https://packaging.python.org/en/latest/specifications/recording-installed-packages/"
GIB = 1 << 30


def _quote(text: str | None) -> str:
    return shlex.quote(text or "")


# -- the port -------------------------------------------------------------------------------------


@check(
    "port-held-by-other",
    severity="error",
    title="Another process listens on the service's port",
    category="service",
    needs=("service.port",),
    links=[PROC_NET],
)
def port_held_by_other(snap, kb):
    """A process that is not the service listens on the port the service serves on.

    Why: vLLM binds its API port last, after loading the model: with the port taken it loads for
    minutes and then exits with "[Errno 98] Address already in use", and the service manager
    restarts it into the same wall. Often a `vllm serve` started by hand, an earlier instance
    outside the service, or another server on 8000.

    How it is seen: the LISTEN sockets on the port in /proc/net/tcp and /proc/net/tcp6, their
    processes through /proc/*/fd; a process is the service's when it or an ancestor is in the
    unit's cgroup (systemd) or is gptoss-supervise. Another user's processes are visible to root
    only: run the doctor as root to have them named.

    Fix: stop that process (the finding names its pid and command), or serve on another port.

    Source: the kernel's /proc/net/tcp format; vLLM's API server binds after the engine starts.
    """
    port = fact_obj(snap, "service.port")
    listeners = [x for x in port.get("listeners") if isinstance(x, dict)] if isinstance(port.get("listeners"), list) else []
    others = [x for x in listeners if x.get("is_service") is False]
    hidden = [x for x in listeners if x.get("pid") is None]
    manager = fact_obj(snap, "service.manager")
    if not others and hidden and manager.get("running") is False:
        others = hidden  # someone listens and the service does not run: not the service's
    if not others:
        return
    who = "; ".join(f"pid {x['pid']} ({x.get('command') or 'command unknown'})" if x.get("pid") else x.get("why") or "unknown"
                    for x in others)
    pids = [str(x["pid"]) for x in others if x.get("pid")]
    commands = ([f"ps -o pid,user,etime,args -p {','.join(pids)}", f"kill {' '.join(pids)}"] if pids
                else [f"ss -ltnp 'sport = :{port.get('port')}'"])
    yield found(
        title=f"Port {port.get('port')} is held by {who}, not by the service: vLLM will fail with 'Address already in use'",
        evidence=evidence(snap, ["service.port", "service.manager"], port=port.get("port"), host=port.get("host"),
                          holders=others),
        fix=Fix(text="Stop the process that holds the port (check what it is first), then restart the service; "
                     "or give the service another --port.", commands=[*commands, restart_command(snap)]),
    )


# -- GPUs the service may see ---------------------------------------------------------------------

VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def _service_env(snap) -> tuple[str, dict]:
    env = service(snap).get("environment")
    if snap.has("service") and isinstance(env, dict):
        return "service", env
    menv = fact_obj(snap, "manifest").get("env")
    if isinstance(menv, dict):
        return "manifest", menv
    raise NotApplicable("no deployed service: no environment to read the visible devices from")


def visible_entries(raw: str, gpus: list[dict]) -> tuple[list[dict], list[str]]:
    """(GPUs the list makes visible, entries that name no GPU). As CUDA reads it: an invalid
    entry hides itself and every entry after it."""
    by_index = {str(g.get("index")): g for g in gpus}
    visible, bad = [], []
    for word in [w.strip() for w in raw.split(",")]:
        g = by_index.get(word) if word.isdigit() else next(
            (x for x in gpus if word and str(x.get("uuid") or "").startswith(word)), None)
        if g is None or bad:
            bad.append(word or "(empty)")
            continue
        visible.append(g)
    return visible, bad


@check(
    "visible-devices-invalid",
    severity="error",
    title="The service's CUDA/HIP/ROCR_VISIBLE_DEVICES hides the GPUs it needs",
    category="gpu",
    needs=("service",),
    links=[CUDA_ENV, ROCM_ENV],
)
def visible_devices_invalid(snap, kb):
    """The service's environment (its EnvironmentFile= and Environment=) sets
    CUDA_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES or ROCR_VISIBLE_DEVICES empty, or to indices or
    UUIDs of GPUs this box does not have, or to fewer GPUs than --tensor-parallel-size.

    Why: an empty value hides every GPU ("No CUDA GPUs are available", or vLLM falls back to a
    platform it cannot serve on); CUDA stops at the first entry that names no device, so a wrong
    index hides it and all after it. Often copied from another box with more GPUs.

    Fix: set the variable to GPUs this box has (indices from `nvidia-smi -L` / `amd-smi list`),
    as many as --tensor-parallel-size, or remove it; then restart the service.

    Source: CUDA programming guide, CUDA environment variables; ROCm GPU isolation.
    """
    where, env = _service_env(snap)
    nv, amd = nvidia_gpus(snap), rocm_gpus(snap)
    tp = tensor_parallel_size(snap)
    problems = []
    for name in VISIBILITY_VARS:
        if name not in env:
            continue
        raw = str(env[name])
        gpus = nv if name == "CUDA_VISIBLE_DEVICES" and nv else amd or nv
        if not raw.strip() or raw.strip() == "-1":
            problems.append({"variable": name, "value": raw, "problem": "hides every GPU"})
            continue
        if not gpus:
            continue  # no GPU list to judge the entries against (no-gpu says so)
        visible, bad = visible_entries(raw, gpus)
        if bad:
            problems.append({"variable": name, "value": raw, "problem": f"names no GPU of this box: {', '.join(bad)} "
                             f"(it has {len(gpus)}: indices 0-{len(gpus) - 1})"})
        elif len(visible) < tp:
            problems.append({"variable": name, "value": raw,
                             "problem": f"shows {len(visible)} GPU(s), --tensor-parallel-size is {tp}"})
    if not problems:
        return
    files = service(snap).get("environment_files") or []
    path = files[0] if files else "/etc/gptoss/gptoss.env"
    names = "|".join(p["variable"] for p in problems)
    yield found(
        title="; ".join(f"{p['variable']}={p['value']!r} ({where}) {p['problem']}" for p in problems),
        evidence=evidence(snap, ["service", "manifest", "nvidia.gpus", "rocm.gpus"], problems=problems,
                          nvidia_gpus=len(nv), amd_gpus=len(amd), tensor_parallel_size=tp),
        fix=Fix(text=f"Remove the variable from {path} (or set it to GPUs this box has), then restart the service.",
                commands=[f"sed -i -E '/^(export +)?({names})=/d' {_quote(path)}", restart_command(snap)]),
    )


@check(
    "gpu-memory-held",
    severity="error",
    title="Other processes hold GPU memory the service's --gpu-memory-utilization needs",
    category="gpu",
    needs=("nvidia.gpus", "nvidia.compute_apps"),
    links=[VLLM_MEMORY],
)
def gpu_memory_held(snap, kb):
    """Processes that are not the service hold so much memory on a GPU the service uses that
    less than --gpu-memory-utilization (default 0.9) of it is free.

    Why: vLLM asks for that share of each GPU's total memory at start and refuses with "Free
    memory on device ... is less than desired GPU memory utilization"; a notebook, a leftover
    vLLM or a training job on the same GPU is the usual holder.

    Fix: stop the processes named (or move them to other GPUs), or lower
    --gpu-memory-utilization to what is free.

    Source: vLLM's memory profiling at startup (the "desired GPU memory utilization" check);
    nvidia-smi --query-compute-apps.
    """
    gpus = nvidia_gpus(snap)
    if not gpus:
        raise NotApplicable("no NVIDIA GPU")
    util, _ = gpu_memory_utilization(snap)
    try:
        _, env = _service_env(snap)
        raw = env.get("CUDA_VISIBLE_DEVICES")
    except NotApplicable:
        raw = None
    used = visible_entries(str(raw), gpus)[0] if raw else gpus
    used = used[: tensor_parallel_size(snap)] if snap.has("service.serve") else used
    apps = [a for a in fact_list(snap, "nvidia.compute_apps") if isinstance(a, dict) and a.get("is_service") is False]
    short = []
    for g in used:
        total = g.get("memory_mib")
        if not isinstance(total, int) or not total:
            continue
        holders = [a for a in apps if a.get("gpu_uuid") == g.get("uuid")]
        held = sum(as_int(a.get("used_mib"), 0) for a in holders)
        free = total - held
        if held and free < util * total:
            short.append({"gpu": g.get("index"), "total_mib": total, "held_by_others_mib": held,
                          "needed_mib": int(util * total), "holders": holders})
    if not short:
        return
    pids = sorted({str(a["pid"]) for s in short for a in s["holders"]})
    yield found(
        title="; ".join(f"GPU {s['gpu']}: other processes hold {s['held_by_others_mib']} MiB, the service needs "
                        f"{s['needed_mib']} MiB of {s['total_mib']} (--gpu-memory-utilization {util:g})" for s in short)
        + " (held by " + ", ".join(f"pid {a['pid']} {a.get('command') or a.get('process_name')}"
                                    for s in short for a in s["holders"]) + ")",
        evidence=evidence(snap, ["nvidia.gpus", "nvidia.compute_apps", "service.serve"], gpus=short,
                          gpu_memory_utilization=util),
        fix=Fix(text="Stop the processes that hold the memory (check what they are first), or lower "
                     "--gpu-memory-utilization to what is free; then restart the service.",
                commands=[f"ps -o pid,user,etime,args -p {','.join(pids)}", f"kill {' '.join(pids)}", restart_command(snap)]),
    )


@check(
    "no-gpu",
    severity="warning",
    title="No GPU found: this box cannot serve gpt-oss",
    category="gpu",
    links=[VLLM_GPU],
)
def no_gpu(snap, kb):
    """Neither nvidia-smi nor amd-smi/rocm-smi lists a GPU here.

    Why: vLLM serves gpt-oss on NVIDIA or AMD GPUs only; without one it fails at start with "No
    CUDA GPUs are available" or picks a CPU platform that cannot run the model. Most GPU checks
    are skipped on such a box, so "no errors" would say nothing: this finding says it plainly.
    A warning, not an error: a box that only builds, stages or tests a deploy has no GPU on
    purpose, and its deploy gate must still pass.

    Fix: run the doctor on the GPU machine; if it has GPUs, install the driver (nvidia-smi must
    list them) or make them visible to this container (`--gpus all`, /dev/kfd and /dev/dri).

    Source: vLLM GPU installation docs.
    """
    if nvidia_gpus(snap) or rocm_gpus(snap):
        return
    if "nvidia.gpus" not in snap.facts and "rocm.gpus" not in snap.facts:
        raise NotApplicable("the snapshot holds no GPU facts (a partial snapshot): nothing to judge")
    why = [f"{k}: " + str(snap.fact(k).get("failed") or snap.fact(k).get("absent") or "empty list")
           for k in ("nvidia.gpus", "rocm.gpus")]
    yield found(
        title="No GPU found (" + "; ".join(why) + "): vLLM cannot serve gpt-oss on this box",
        evidence=evidence(snap, ["nvidia.gpus", "rocm.gpus", "nvidia.driver"], nvidia=why[0], amd=why[1]),
        fix=Fix(text="Run the doctor where the GPUs are; on a GPU machine, install the driver so nvidia-smi (or "
                     "amd-smi) lists them, or pass the GPUs into this container.",
                commands=["nvidia-smi -L", "ls -l /dev/nvidia* /dev/kfd /dev/dri 2>&1"]),
    )


# -- what the service's user may read, and the disk ------------------------------------------------


@check(
    "service-user-cannot-read",
    severity="error",
    title="The service's user cannot read the model or use the HF cache",
    category="service",
    needs=("service.access",),
    links=[PATH_RESOLUTION, HF_CACHE],
)
def service_user_cannot_read(snap, kb):
    """The model path (or its folder in the HF cache) is not readable, or the HF hub cache not
    writable, by the user the service runs as (User=), judged as that user: the mode bits of
    every directory on the way and of the path itself, with the user's groups.

    Why: the doctor usually runs as root, which reads everything; the service does not. vLLM then
    fails with "Permission denied" or, for a hub id, tries to download into a cache it cannot
    write. A model copied in as root with 0700/0600 is the usual cause. ACLs and read-only
    mounts are not seen by this check.

    Fix: give the service's user access: chown the HF cache to it; make the model group-readable
    by its group (and each directory above it enterable).

    Source: path_resolution(7) (search permission on every directory); huggingface_hub cache.
    """
    acc = fact_obj(snap, "service.access")
    paths = acc.get("paths") if isinstance(acc.get("paths"), list) else []
    bad = [p for p in paths if isinstance(p, dict) and p.get("problem")]
    if not bad:
        return
    user = str(acc.get("user") or "gptoss")
    commands = []
    for p in bad:
        path = _quote(p.get("path"))
        if p.get("need") == "rw":
            commands.append(f"install -d -o {user} {path} && chown -R {user}: {path}")
        else:
            commands.append(f"chgrp -R {user} {path} && chmod -R g+rX {path}")
    yield found(
        title="; ".join(f"{user} cannot {'write' if p.get('need') == 'rw' else 'read'} the {p.get('what')} "
                        f"{p.get('path')}: {p.get('problem')}" for p in bad),
        evidence=evidence(snap, ["service.access", "service.serve"], user=user, uid=acc.get("uid"), gids=acc.get("gids"),
                          paths=bad),
        fix=Fix(text=f"Give {user} access (a directory above that it cannot enter needs o+x or its group), then "
                     "restart the service.", commands=[*commands, restart_command(snap)]),
    )


@check(
    "model-disk-space",
    severity="error",
    title="Not enough free disk for the model download",
    category="service",
    needs=("model.disk", "service.serve"),
    links=[HF_CACHE],
)
def model_disk_space(snap, kb):
    """The served model is not fully in the HF cache yet and the cache's filesystem has less
    free space than what is still to download (the model's weights less what is there).

    Why: vLLM downloads the weights at its first start; a full disk stops it mid-download
    ("No space left on device"), often after many minutes, and leaves a partial cache.

    Fix: free space on that filesystem, or point HF_HOME at a larger one, before starting.

    Source: the knowledge's model sizes; huggingface_hub cache layout.
    """
    disk = fact_obj(snap, "model.disk")
    if disk.get("local"):
        raise NotApplicable("the model is a local path: nothing to download")
    if disk.get("complete"):
        return
    model = served_model(snap, kb)
    free, present = disk.get("free_bytes"), disk.get("present_bytes") or 0
    if not isinstance(free, int):
        raise NotApplicable("the free space is unknown")
    need = int(model.weights_gib * GIB) - int(present)
    if need <= free:
        return
    yield found(
        title=f"{model.hf_id} needs {need / GIB:.1f} GiB more in {disk.get('path')}, but {disk.get('filesystem_of')} "
              f"has {free / GIB:.1f} GiB free",
        evidence=evidence(snap, ["model.disk", "service.serve"], model=model.hf_id, weights_gib=model.weights_gib,
                          present_gib=round(present / GIB, 2), free_gib=round(free / GIB, 2)),
        fix=Fix(text="Free space there, or set HF_HOME to a filesystem with room, then restart the service.",
                commands=[f"df -h {_quote(disk.get('filesystem_of'))}", f"du -sh {_quote(disk.get('path'))}"]),
        links=[model.source],
    )


# -- a venv or torch that cannot serve ------------------------------------------------------------


@check(
    "torch-cpu-only",
    severity="error",
    title="torch is a CPU-only build: vLLM cannot use a GPU",
    category="packages",
    needs=("torch.build",),
    links=[TORCH_INSTALL, VLLM_GPU],
)
def torch_cpu_only(snap, kb):
    """torch in the inspected venv was built with neither CUDA nor ROCm (`+cpu`, or PyPI's CPU
    wheel on a platform where that is the default).

    Why: vLLM's GPU kernels need torch's CUDA or ROCm runtime; with a CPU torch it fails at start
    ("Torch not compiled with CUDA enabled") or picks the CPU platform, which cannot serve
    gpt-oss. pip and uv install the CPU build whenever the index they use has only that one.

    Fix: install the CUDA build of the stack's torch (uv's `--torch-backend`, or the PyTorch
    index of the stack's CUDA), in the same venv.

    Source: PyTorch install matrix; vLLM GPU installation.
    """
    torch = fact_obj(snap, "torch.build")
    if torch.get("cuda") or torch.get("hip"):
        return
    try:
        stack, how = current_stack(snap, kb)
        commands = stack_install_commands(snap, stack, "--reinstall-package", "torch")
    except NotApplicable:
        stack, how = None, None
        commands = [uv_pip(snap, "install", "--reinstall-package", "torch", "--torch-backend", "auto", "torch")]
    yield found(
        title=f"torch {torch.get('version') or '(unknown)'} is a CPU-only build (no CUDA, no ROCm): install the CUDA build",
        evidence=evidence(snap, ["torch.build"], torch=torch.get("version"), cuda=None, hip=None, stack_from=how),
        fix=Fix(text="Install the CUDA build of torch into the same venv" + (f" (stack {stack.name})" if stack else
                     "; run this on the GPU box, where --torch-backend auto picks the driver's CUDA") + ":",
                commands=commands),
    )


@check(
    "venv-python-broken",
    severity="error",
    title="The venv's python is a broken link",
    category="packages",
    needs=("venv",),
    links=[VENV_DOC],
)
def venv_python_broken(snap, kb):
    """The venv's bin/python is a symlink whose target no longer exists.

    Why: a venv links to the interpreter it was made from; removing or upgrading that Python
    (an OS upgrade, a uv-managed Python pruned from its cache) leaves every script of the venv
    failing with "No such file or directory" while its packages are still there.

    Fix: re-point the venv at an interpreter of the same minor version (`uv venv --allow-existing`
    keeps the installed packages); on a deployed host, re-run the deploy.

    Source: the venv module docs (venvs link to their base interpreter).
    """
    venv = fact_obj(snap, "venv")
    if venv.get("executable_ok") is not False:
        return
    python = venv.get("python") or ""
    minor = ".".join(str(python).split(".")[:2]) or "3.12"
    path = venv_path(snap)
    yield found(
        title=f"{venv.get('executable')} -> {venv.get('executable_link') or '?'}, which does not exist: nothing in "
              f"{path} can run",
        evidence=evidence(snap, ["venv"], executable=venv.get("executable"), link=venv.get("executable_link"),
                          home=venv.get("home"), python=python),
        fix=Fix(text=f"Point the venv at a Python {minor} again (its packages stay)"
                     + ("; or re-run the deploy for this host." if venv.get("deployed") else "."),
                commands=[f"uv venv --allow-existing --python {minor} {_quote(path)}"]),
    )


@check(
    "dist-info-without-metadata",
    severity="warning",
    title="A dist-info directory has no METADATA",
    category="packages",
    needs=("venv.distributions",),
    links=[RECORD_SPEC],
)
def dist_info_without_metadata(snap, kb):
    """A `*.dist-info` directory in site-packages has no METADATA file.

    Why: what an interrupted install or uninstall leaves. importlib.metadata lists it with no
    name and no version (code that asks for versions, vLLM's included, can then fail), pip and uv
    may refuse to work on the venv, and the files it recorded may still shadow another
    distribution's (a leftover `pytorch_triton` beside `triton` is counted by duplicate-triton).

    Fix: remove the directory, then reinstall the distribution if it is still wanted.

    Source: PyPA "Recording installed projects" (METADATA is required).
    """
    broken = [d for d in fact_list(snap, "venv.distributions") if isinstance(d, dict) and d.get("metadata") is False]
    if not broken:
        return
    yield found(
        title=f"{len(broken)} dist-info without METADATA: " + ", ".join(str(d.get("dist_info")) for d in broken),
        evidence=evidence(snap, ["venv.distributions"], dist_infos=[
            {k: d.get(k) for k in ("dist_info", "location", "top_level")} for d in broken]),
        fix=Fix(text="Remove each, then reinstall the distribution if the venv still needs it:",
                commands=[f"rm -rf {_quote(str(d.get('location')) + '/' + str(d.get('dist_info')))}" for d in broken]
                + [uv_pip(snap, "install", "--reinstall", *sorted({str(d.get("name")) for d in broken}))]),
    )
