"""Checks of the venv's distributions: what is installed against what the stack needs."""

from __future__ import annotations

import re
import shlex

from ..findings import Finding, Fix, check
from ..snapshot import canonical_name
from ._util import (
    GUIDE,
    NotApplicable,
    current_stack,
    distributions,
    dists_by_name,
    evidence,
    fact_list,
    fact_obj,
    in_specifier,
    installed_version,
    knowledge_for,
    nvidia_gpus,
    public,
    python_in,
    rocm_gpus,
    stack_args,
    stack_install_commands,
    uv_pip,
    venv_python,
    version,
    vllm_version,
)

# Distributions that install the `triton` import package (PyTorch's nightly and ROCm builds
# ship it under other names). Owning `triton` per RECORD counts too, so leftovers show up.
DESIGN = "docs/design.md#on-a-deployed-host"  # this project's layout of a deployed host

TRITON_DISTS = ("triton", "pytorch-triton", "pytorch-triton-rocm", "triton-nightly")


def _triton_owners(snap) -> list[dict]:
    owners = []
    for d in distributions(snap):
        name = canonical_name(str(d.get("name", "")))
        if name in TRITON_DISTS or "triton" in (d.get("top_level") or []):
            owners.append(d)
    return owners


def _triton_to_keep(snap, kb) -> tuple[str, str | None, str]:
    """(distribution, version or None, why) of the Triton this venv should keep."""
    try:
        stack, how = current_stack(snap, kb)
        # a stack whose pins were not read from its build's files names the distribution only
        return stack.triton_dist, stack.triton if stack.verified else None, how
    except NotApplicable:
        pass
    torch = fact_obj(snap, "torch.build")
    if torch.get("hip"):
        return "pytorch-triton-rocm", None, f"torch {torch.get('version')} is a ROCm build"
    v = version(torch.get("version"))
    if v is not None and v.is_devrelease:
        return "pytorch-triton", None, f"torch {torch.get('version')} is a nightly, which pairs with pytorch-triton"
    return "triton", None, "a released torch pairs with the triton distribution"


@check(
    "duplicate-triton",
    severity="error",
    title="Two distributions install the `triton` package",
    category="packages",
    needs=("venv.distributions",),
    links=[GUIDE + "#troubleshooting", "https://github.com/vllm-project/vllm/issues/17309"],
)
def duplicate_triton(snap, kb):
    """More than one distribution owns the `triton` import package.

    Why: `triton` and `pytorch-triton` (PyTorch nightly's build) or `pytorch-triton-rocm` unpack
    into the same `site-packages/triton/` directory; whichever was installed last wins file by
    file, so the package is a mix of two versions. The gpt-oss guide's symptom is Triton's
    "`tl.language` not defined"; other symptoms are import errors inside torch.compile or the
    MoE kernels. Leftover dist-info directories of an uninstalled Triton count too.

    Fix: uninstall every Triton but the one the stack pairs with torch, then reinstall that one
    (uninstalling the other removed files the two shared).

    Source: the gpt-oss vLLM guide, Troubleshooting ("Make sure there's no other triton
    installed in your environment (pytorch-triton, etc)"); vllm-project/vllm#17309.
    """
    owners = _triton_owners(snap)
    if len(owners) < 2:
        return
    keep, keep_version, why = _triton_to_keep(snap, kb)
    others = sorted({canonical_name(str(d["name"])) for d in owners} - {keep})
    pin = f"{keep}=={keep_version}" if keep_version else keep
    yield Finding(
        id="duplicate-triton",
        severity="error",
        title=f"{len(owners)} distributions install `triton`: "
        + ", ".join(f"{d.get('name')} {d.get('version')}" for d in owners),
        evidence=evidence(
            snap,
            ["venv.distributions"],
            owners=[
                {k: d.get(k) for k in ("name", "version", "installer", "dist_info")} for d in owners
            ],
            keep=pin,
            keep_because=why,
        ),
        fix=Fix(
            text=f"Keep only {keep} ({why}); uninstall the others, then reinstall {keep} because "
            "the uninstall removed files the distributions shared.",
            commands=[
                *([uv_pip(snap, "uninstall", *others)] if others else []),
                uv_pip(snap, "install", "--reinstall", pin),
            ],
        ),
        links=[GUIDE + "#troubleshooting", "https://github.com/vllm-project/vllm/issues/17309"],
    )


def _local(ver: str | None) -> str:
    v = version(ver)
    return f"+{v.local}" if v is not None and v.local else ""


@check(
    "torch-cuda-suffix",
    severity="error",
    title="torch is not the CUDA build the stack needs",
    category="packages",
    needs=("torch.build",),
    links=[GUIDE + "#known-issues", "https://pytorch.org/get-started/locally/"],
)
def torch_cuda_suffix(snap, kb):
    """torch's real build (torch/version.py) is not the CUDA build the stack needs.

    Why: PyPI metadata says `2.7.1` for every build; only `torch/version.py` tells `+cu128` from
    `+cu126` or `+cpu`. vLLM's kernels are compiled against one CUDA build of torch: a CPU build
    cannot serve at all, and a build for another CUDA fails at import or, for source builds, at
    CMake time with the guide's "The link interface of target "torch::nvtoolsext" contains:
    CUDA::nvToolsExt but the target was not found". The stack comes from the deployed manifest,
    else from the installed vLLM version.

    Fix: reinstall torch from the stack's indexes into the same venv (the command reinstalls the
    stack's requirements with `--reinstall-package torch`).

    Source: the gpt-oss vLLM guide, Known Issues ("double check your pytorch version has
    suffix `+cu128`").
    """
    torch = fact_obj(snap, "torch.build")
    installed = str(torch.get("version") or "")
    try:
        stack, how = current_stack(snap, kb)
    except NotApplicable:
        stack, how = None, None
    if torch.get("hip") and rocm_gpus(snap):
        # a ROCm torch on an AMD box: judged against a ROCm stack's ROCm (+rocm7.0 = +rocm7.0.x)
        if stack is None or not stack.rocm:
            raise NotApplicable("a ROCm torch on an AMD box, and no ROCm stack for this vLLM")
        have = re.match(r"\+rocm(\d+\.\d+)", _local(installed))
        if have is None or have.group(1) != stack.rocm:
            yield _suffix_finding(snap, installed, f"a ROCm {stack.rocm} build ({stack.torch}{stack.torch_local})", how, stack)
        return
    if stack is None:
        # Without a stack: a build without CUDA on an NVIDIA box is certainly wrong, and so is a
        # torch of another CUDA major than the libcudart vLLM's compiled library links.
        if nvidia_gpus(snap) and not torch.get("cuda") and not torch.get("hip"):
            yield _suffix_finding(snap, installed, "a CUDA build", "this box has NVIDIA GPUs", None)
            return
        cudart = fact_obj(snap, "vllm.install").get("cudart")
        vllm = fact_obj(snap, "vllm.install").get("version")
        if cudart and torch.get("cuda"):
            if str(torch.get("cuda")).split(".")[0] != str(cudart):
                yield _suffix_finding(snap, installed, f"a CUDA {cudart}.x build",
                                      f"vLLM {vllm}'s compiled library links libcudart.so.{cudart}", None)
            return
        raise NotApplicable("the stack is unknown (no manifest, vLLM matches no knowledge stack) and vLLM's CUDA was not read")
    want_local = stack.torch_local
    have_local = _local(installed)
    if want_local:
        wrong = have_local != want_local
    else:  # the stack takes PyPI's default build: judge by the CUDA it was built for
        wrong = str(torch.get("cuda") or "") != stack.cuda
    if not wrong:
        return
    yield _suffix_finding(snap, installed, stack.torch_build if want_local else f"a CUDA {stack.cuda} build", how, stack)


def _suffix_finding(snap, installed, wanted, how, stack):
    torch = fact_obj(snap, "torch.build")
    kind = ("a CPU build" if not torch.get("cuda") and not torch.get("hip")
            else f"built for ROCm {torch.get('hip')}" if torch.get("hip") else f"built for CUDA {torch.get('cuda')}")
    if stack is not None:
        commands = stack_install_commands(snap, stack, "--reinstall-package", "torch")
    else:
        commands = [uv_pip(snap, "install", "--reinstall-package", "torch", "--torch-backend", "auto", "torch")]
    return Finding(
        id="torch-cuda-suffix",
        severity="error",
        title=f"torch {installed or '(unknown)'} is {kind}; the stack needs {wanted}",
        evidence=evidence(snap, ["torch.build"], torch=installed, torch_cuda=torch.get("cuda"), needed=wanted, stack_from=how),
        fix=Fix(text=f"Reinstall torch as {wanted} in {venv_python(snap)}'s venv.", commands=commands),
        links=[GUIDE + "#known-issues", *(stack.links if stack is not None else [])],
    )


@check(
    "tilde-leftover-dists",
    severity="warning",
    title="`~`-prefixed leftovers of an interrupted install in site-packages",
    category="packages",
    needs=("venv.leftovers",),
    links=["https://github.com/vllm-project/vllm/issues/12219"],
)
def tilde_leftover_dists(snap, kb):
    """site-packages holds `~`-prefixed entries left by an interrupted pip install/uninstall.

    Why: pip renames what it is replacing to `~xxx` (`~orch`, `~riton`) and deletes it at the
    end; when that is interrupted the renamed copy stays. pip then warns "Ignoring invalid
    distribution ~orch" on every run, and a leftover `~riton-*.dist-info` still claims files.

    Fix: remove the listed entries, then reinstall the distribution they belonged to (`~orch`
    is torch, `~riton` is triton).

    Source: vllm-project/vllm#12219 ("WARNING: Ignoring invalid distribution -orch").
    """
    leftovers = [x for x in fact_list(snap, "venv.leftovers") if isinstance(x, dict) and x.get("path")]
    if not leftovers:
        return
    paths = [str(x["path"]) for x in leftovers]
    yield Finding(
        id="tilde-leftover-dists",
        severity="warning",
        title=f"{len(leftovers)} `~` leftover(s) in site-packages: " + ", ".join(str(x.get("name")) for x in leftovers[:4]),
        evidence=evidence(snap, ["venv.leftovers"], leftovers=leftovers),
        fix=Fix(
            text="Delete the leftovers; then reinstall the package each belonged to (its name with the first letter restored).",
            commands=["rm -rf -- " + " ".join(shlex.quote(p) for p in paths)],
        ),
        links=["https://github.com/vllm-project/vllm/issues/12219"],
    )


def _cuda_major_of_dist(name: str) -> int | None:
    for major in (12, 13):
        if name.endswith(f"-cu{major}"):
            return major
    return None


@check(
    "nvidia-cu12-cu13-mixed",
    severity="warning",
    title="CUDA 12 and CUDA 13 nvidia-* wheels side by side",
    category="packages",
    needs=("venv.distributions",),
    links=["https://github.com/vllm-project/vllm/issues/44335", "https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/"],
)
def nvidia_cu12_cu13_mixed(snap, kb):
    """The venv holds nvidia-*-cu12 wheels next to CUDA 13 ones (or next to a CUDA 13 torch).

    Why: an upgrade from a cu12x stack to a cu130 one (vLLM >= 0.20) installs the CUDA 13
    libraries but leaves the `-cu12` wheels behind. Both sets ship libraries in the same
    `nvidia/` namespace; which libcublas / libnccl a process loads then depends on import order,
    which shows up as "undefined symbol" or NCCL version errors at start-up.

    Fix: uninstall the set that does not match torch's CUDA (usually the `-cu12` wheels after an
    upgrade), then reinstall torch's own dependencies.

    Source: vllm-project/vllm#44335 (CUDA 13 wheels on CUDA 12 hosts), PyTorch's cu130 wheels
    depending on `nvidia-*-cu13` / unsuffixed 13.x wheels.
    """
    by_major: dict[int, list[str]] = {12: [], 13: []}
    for d in distributions(snap):
        name = canonical_name(str(d.get("name", "")))
        if not name.startswith("nvidia-"):
            continue
        major = _cuda_major_of_dist(name)
        if major:
            by_major[major].append(f"{name}=={d.get('version')}")
    torch_cuda = version(fact_obj(snap, "torch.build").get("cuda"))
    torch_major = torch_cuda.release[0] if torch_cuda is not None else None
    mixed = by_major[12] and (by_major[13] or torch_major == 13)
    if not mixed:
        return
    stale_major = 12 if torch_major in (13, None) else 13
    stale = [x.split("==")[0] for x in by_major[stale_major]]
    commands = [uv_pip(snap, "uninstall", *stale)]
    torch_v = version(fact_obj(snap, "torch.build").get("version"))
    if torch_v is not None:  # uninstalling shared namespace files can break torch's own wheels
        commands.append(uv_pip(snap, "install", "--reinstall-package", "torch", f"torch=={public(torch_v)}"))
    yield Finding(
        id="nvidia-cu12-cu13-mixed",
        severity="warning",
        title=f"{len(by_major[12])} nvidia-*-cu12 wheel(s) beside CUDA 13 ones"
        + (f" (torch is built for CUDA {torch_cuda})" if torch_cuda else ""),
        evidence=evidence(
            snap, ["venv.distributions", "torch.build"], cu12=by_major[12], cu13=by_major[13],
            torch_cuda=str(torch_cuda) if torch_cuda else None,
        ),
        fix=Fix(
            text=f"Remove the CUDA {stale_major} wheels torch does not use, then let uv restore torch's own.",
            commands=commands,
        ),
        links=["https://github.com/vllm-project/vllm/issues/44335"],
    )


@check(
    "vllm-torch-pair",
    severity="error",
    title="vLLM and torch are not the pair the stack pins",
    category="packages",
    needs=("vllm.install", "torch.build"),
    links=["https://github.com/vllm-project/vllm/issues/20361", "https://github.com/vllm-project/vllm/issues/13608"],
)
def vllm_torch_pair(snap, kb):
    """The installed torch is not the version the installed vLLM was built against.

    Why: vLLM's compiled extensions (`vllm/_C.abi3.so`) link against one torch release; with
    another torch (a `pip install -U torch` after vLLM, or a nightly swapped for a stable) the
    import fails with "undefined symbol: _ZN..." or, worse, loads and misbehaves. The pair comes
    from the knowledge stack whose vLLM equals the installed one.

    Fix: reinstall the stack's requirements, which pins torch to vLLM's pair.

    Source: vllm-project/vllm#20361, #13608, #21226 (undefined symbol after a torch change);
    each stack row's source (vLLM METADATA `Requires-Dist: torch==...`).
    """
    vllm = vllm_version(snap)
    stack = kb.stack_for_vllm(vllm)
    pin = vllm_pin(snap, "torch")
    # The installed build's own METADATA first (a ROCm or cu129 build, a release newer than the
    # knowledge), else the knowledge's stack of that vLLM.
    if pin is not None:
        want, whence = pin, f"vLLM {vllm}'s METADATA (Requires-Dist: torch=={pin})"
    elif stack is not None and stack.verified:
        want, whence = stack.torch, f"stack {stack.name}"
    elif stack is not None:
        raise NotApplicable(f"stack {stack.name}'s torch pin was not read from the build's files, and no torch== pin was read from vLLM {vllm}'s METADATA")
    else:
        raise NotApplicable(f"vLLM {vllm} matches no knowledge stack and no torch== pin was read from its METADATA")
    torch = str(fact_obj(snap, "torch.build").get("version") or "")
    have, wanted = version(torch), version(want)
    if have is not None and wanted is not None and public(have) == public(wanted):
        return
    newer = newer_than_knowledge(kb, vllm)
    if stack is not None:
        commands = stack_install_commands(snap, stack, "--reinstall-package", "torch")
    else:
        commands = [uv_pip(snap, "install", "--reinstall-package", "torch", f"vllm=={vllm}", f"torch=={want}", "--torch-backend", "auto")]
    yield Finding(
        id="vllm-torch-pair",
        severity="error",
        title=f"vLLM {vllm} pins torch {want}, but torch {torch or '(unknown)'} is installed"
        + (f" (vLLM {vllm} is newer than the knowledge: judged from its own METADATA)" if newer else ""),
        evidence=evidence(snap, ["vllm.install", "torch.build"], vllm=vllm, torch=torch, needed=want, needed_from=whence,
                          stack=stack.name if stack else None, newer_than_knowledge=newer or None),
        fix=Fix(text=f"Reinstall torch {want} so it matches vLLM {vllm}" + (f" (stack {stack.name})." if stack else "."), commands=commands),
        links=["https://github.com/vllm-project/vllm/issues/20361", *(stack.links if stack else [f"https://pypi.org/project/vllm/{public(version(vllm))}/"])],
    )


def vllm_pin(snap, name: str) -> str | None:
    """The version the installed vLLM's METADATA pins `name` to (`Requires-Dist: torch==2.14.0`)."""
    for req in fact_obj(snap, "vllm.install").get("requires") or ():
        head, sep, ver = str(req).partition("==")
        if sep and canonical_name(head.split("[")[0].strip()) == name:
            return ver.split(";")[0].strip() or None
    return None


def newer_than_knowledge(kb, vllm: str) -> str | None:
    """"the knowledge ends at <newest>" when this vLLM is a release after every one it has."""
    v = version(vllm)
    newest = kb.newest_release.vllm
    if v is None or kb.stack_for_vllm(vllm) is not None or public(v) <= version(newest):
        return None
    return f"the knowledge ends at vLLM {newest}"


@check(
    "vllm-newer-than-knowledge",
    severity="info",
    title="vLLM is newer than the knowledge: judged from its own files",
    category="packages",
    needs=("vllm.install",),
    links=["https://pypi.org/project/vllm/#history"],
)
def vllm_newer_than_knowledge(snap, kb):
    """The installed vLLM is a release after the newest one the knowledge has a row for.

    Why: every other check still runs, judged from what is installed instead of the knowledge:
    the torch== pin of vLLM's METADATA (vllm-torch-pair) and its Requires-Python
    (python-outside-stack), the CUDA major its compiled library
    links against torch's build (torch-cuda-suffix), the env var names of its envs.py and the
    backend names of its registry (the env checks). Only the knowledge's recipes and eras stop
    at the newest release it has.

    Fix: upgrade gptoss-doctor to one whose knowledge has the release (maintainers regenerate it
    with scripts/gen_stacks.py).

    Source: each release's own files on PyPI (https://pypi.org/project/vllm/#history).
    """
    vllm = vllm_version(snap)
    newer = newer_than_knowledge(kb, vllm)
    if newer is None:
        return
    install = fact_obj(snap, "vllm.install")
    env_vars, backends = snap.get("vllm.env_vars"), snap.get("vllm.attention_backends")
    yield Finding(
        id="vllm-newer-than-knowledge",
        severity="info",
        title=f"vLLM {vllm} is newer than the knowledge ({newer}): judged from its own METADATA, compiled library, envs.py and backend registry",
        evidence=evidence(snap, ["vllm.install"], vllm=vllm, knowledge_newest=kb.newest_release.vllm,
                          torch_pin=vllm_pin(snap, "torch"), links_libcudart=install.get("cudart"),
                          env_vars_read=len(env_vars) if isinstance(env_vars, list) else None,
                          backends_read=len(backends) if isinstance(backends, list) else None),
        fix=Fix(text="Upgrade gptoss-doctor to a release whose knowledge has this vLLM (maintainers: scripts/gen_stacks.py).", commands=[]),
        links=[f"https://pypi.org/project/vllm/{public(version(vllm))}/"],
    )


@check(
    "python-outside-stack",
    severity="error",
    title="The venv's Python is outside the stack's supported range",
    category="packages",
    needs=("venv",),
    links=["https://pypi.org/project/vllm/#files"],
)
def python_outside_stack(snap, kb):
    """The venv's Python version is not in the range the stack's vLLM supports.

    Why: vLLM publishes `Requires-Python` (0.10.1: >=3.9,<3.13; 0.33.0: >=3.11,<3.15); outside it
    the resolver picks an old vLLM or fails with "no matching distribution", and a venv moved
    across Pythons loads extensions built for another ABI. The gpt-oss tool package needs 3.12.

    Fix: recreate the venv with a Python inside the range (uv downloads one) and reinstall.

    Source: vLLM wheel METADATA Requires-Python, per stack row in the knowledge.
    """
    py = fact_obj(snap, "venv").get("python")
    if not py:
        raise NotApplicable("the venv's Python version was not collected")
    try:
        stack, how = current_stack(snap, kb)
        wanted, name, commands = stack.python, stack.name, None
    except NotApplicable:
        # no stack (a release newer than the knowledge): the installed vLLM's own Requires-Python
        install = fact_obj(snap, "vllm.install")
        wanted = install.get("requires_python")
        if not wanted:
            raise
        stack, name = None, f"vLLM {install.get('version')}"
        how = f"vLLM {install.get('version')}'s METADATA (Requires-Python: {wanted})"
        commands = [uv_pip(snap, "install", f"vllm=={install.get('version')}", "--torch-backend", "auto")]
    ok = in_specifier(py, wanted)
    if ok is None or ok:
        return
    path = fact_obj(snap, "venv").get("path") or "/opt/gptoss/current"
    pick = python_in(wanted)
    yield Finding(
        id="python-outside-stack",
        severity="error",
        title=f"Python {py} is outside {name}'s range {wanted}",
        evidence=evidence(snap, ["venv"], python=py, needed=wanted, stack_from=how),
        fix=Fix(
            text=f"Recreate {path} with Python {pick} and reinstall the stack"
            + (" (on a deployed host: set its python in the host config and re-run the deploy)." if snap.has("manifest") else "."),
            commands=[f"uv venv --clear --python {pick} {path}", *(stack_install_commands(snap, stack) if stack else commands)],
        ),
        links=[*(stack.links if stack else [f"https://pypi.org/project/vllm/{fact_obj(snap, 'vllm.install').get('version')}/"]),
               "https://pypi.org/project/vllm/#files"],
    )


def _same(have: str | None, want: str | None, *, local: bool = True) -> bool:
    hv, wv = version(have), version(want)
    if hv is None or wv is None:
        return have == want
    return hv == wv if local else public(hv) == public(wv)


@check(
    "manifest-drift",
    severity="warning",
    title="Installed versions differ from the deployed manifest",
    category="packages",
    needs=("manifest",),
    links=[DESIGN],
)
def manifest_drift(snap, kb):
    """vLLM, torch (with its CUDA build) or Triton differ from what the deploy recorded in
    /etc/gptoss/manifest.json; or, on a venv built on a base Python (manifest `base_python`,
    air-gapped installs on vendor PyTorch images), torch is no longer the base's: a torch
    installed into the stack venv shadows it.

    Why: someone ran `pip install -U ...` by hand, or a deploy was interrupted: the box no longer
    runs the tested stack, and the next upgrade's rollback point is wrong.

    Fix: re-run the deploy for this host (it reinstalls the manifest's stack), or put the
    recorded versions back with the commands shown.

    Source: /etc/gptoss/manifest.json written by the deploy (docs/design.md).
    """
    manifest = fact_obj(snap, "manifest")
    recorded = manifest.get("versions")
    if not isinstance(recorded, dict) or not recorded:
        raise NotApplicable("the manifest records no versions")
    drift = []
    if recorded.get("vllm") and snap.has("vllm.install"):
        have = fact_obj(snap, "vllm.install").get("version")
        if not _same(have, recorded["vllm"]):
            drift.append({"name": "vllm", "manifest": recorded["vllm"], "installed": have, "fact": "vllm.install"})
    if recorded.get("torch") and snap.has("torch.build"):
        want = str(recorded["torch"]) + str(recorded.get("torch_local") or "")
        have = fact_obj(snap, "torch.build").get("version")
        # torch_local "" means PyPI's default build: compare the public version only
        if not _same(have, want, local=bool(recorded.get("torch_local"))):
            drift.append({"name": "torch", "manifest": want, "installed": have, "fact": "torch.build"})
    triton_dist = recorded.get("triton_dist")
    if triton_dist and recorded.get("triton") and snap.has("venv.distributions"):
        have = installed_version(snap, triton_dist)
        # pytorch-triton carries a +git<sha> local label the manifest does not record
        if not _same(have, recorded["triton"], local=False):
            drift.append({"name": triton_dist, "manifest": recorded["triton"], "installed": have, "fact": "venv.distributions"})
    shadow = _torch_shadows_base(snap, manifest)
    if not drift and shadow is None:
        return
    stack = kb.stacks.get(manifest.get("stack")) if manifest.get("stack") else None
    commands = [] if not drift else stack_install_commands(snap, stack, "--reinstall") if stack else [
        uv_pip(snap, "install", *(f"{d['name']}=={d['manifest']}" for d in drift))
    ]
    if shadow is not None:
        drift.append(shadow)
        # the venv's own torch hides the base's: removing it lets the base's show through again
        commands.append(uv_pip(snap, "uninstall", "torch"))
    yield Finding(
        id="manifest-drift",
        severity="warning",
        title=f"{len(drift)} package(s) differ from the manifest ({manifest.get('stack', 'unknown stack')}): "
        + ", ".join(f"{d['name']} {d['installed'] or 'missing'} (manifest {d['manifest']})" for d in drift),
        evidence=evidence(snap, ["manifest", *sorted({d["fact"] for d in drift})], drift=drift, stack=manifest.get("stack")),
        fix=Fix(
            text="Re-run the deploy for this host, or reinstall the manifest's stack:",
            commands=commands,
        ),
        links=[DESIGN, *(stack.links if stack else [])],
    )


def _torch_shadows_base(snap, manifest: dict) -> dict | None:
    """A drift entry when the manifest layers the venv on a base Python's torch but the torch
    the collector found lives in the stack venv itself (pure). Judged by the venv's own paths,
    not by the base's, so a base whose site-packages the probe and the collector spell
    differently (lib64, dist-packages) is no false alarm."""
    base = manifest.get("base_python")
    torch_path = fact_obj(snap, "torch.build").get("path")
    if not isinstance(base, dict) or not isinstance(torch_path, str) or not torch_path:
        return None
    venvs = {str(p).rstrip("/") for p in (manifest.get("venv"), manifest.get("current"), fact_obj(snap, "venv").get("path"))
             if isinstance(p, str) and p}
    if not any(torch_path.startswith(v + "/") for v in venvs):
        return None
    sites = [str(p) for p in base.get("site_packages") or [] if isinstance(p, str) and p]
    return {"name": "torch location", "manifest": f"the base Python's ({base.get('path')}): {', '.join(sites) or '?'}",
            "installed": torch_path, "fact": "torch.build"}


@check(
    "tool-server-needs-gpt-oss",
    severity="error",
    title="`--tool-server demo` without the gpt-oss package",
    category="serve",
    needs=("service.serve", "venv.distributions"),
    links=[GUIDE + "#tool-use"],
)
def tool_server_needs_gpt_oss(snap, kb):
    """The service runs `vllm serve --tool-server demo` but the venv lacks the `gpt-oss` package.

    Why: the demo tool server imports the gpt-oss reference library's browser and Python tools;
    without it the server fails at start-up (or the tools silently vanish, by version).

    Fix: install gpt-oss into the serving venv (Python 3.12 per the package).

    Source: the gpt-oss vLLM guide, Tool Use ("uv pip install gpt-oss", "vllm serve ...
    --tool-server demo").
    """
    from ._util import flag_value

    tool_server = flag_value(snap, "--tool-server")
    if not tool_server or "demo" not in str(tool_server).split(","):
        return
    if installed_version(snap, "gpt-oss"):
        return
    yield Finding(
        id="tool-server-needs-gpt-oss",
        severity="error",
        title="`--tool-server demo` is set but the gpt-oss package is not installed",
        evidence=evidence(snap, ["service.serve", "venv.distributions"], tool_server=tool_server),
        fix=Fix(text="Install the gpt-oss tool package into the serving venv.", commands=[uv_pip(snap, "install", "gpt-oss")]),
        links=[GUIDE + "#tool-use"],
    )


PYTHON_BACKEND = "PYTHON_EXECUTION_BACKEND"
GPT_OSS_UV_PR = "https://github.com/openai/gpt-oss/pull/156"


@check(
    "python-tool-backend-ignored",
    severity="warning",
    title="PYTHON_EXECUTION_BACKEND is a value the installed gpt-oss does not read: its Python tool runs in docker",
    category="serve",
    needs=("service.serve", "venv.distributions"),
    links=[GPT_OSS_UV_PR, GUIDE + "#tool-use"],
)
def python_tool_backend_ignored(snap, kb):
    """The service runs `--tool-server demo` with PYTHON_EXECUTION_BACKEND set to a value the
    installed gpt-oss package ignores, so the Python tool falls back to docker.

    Why: the August 2025 guide said `PYTHON_EXECUTION_BACKEND=UV`, but no gpt-oss release reads
    "UV": 0.0.1-0.0.4 only know docker, 0.0.5 added `dangerously_use_uv` (an exact match;
    anything else is docker) and 0.0.9 `dangerously_use_local_jupyter`. Where vLLM runs in a
    container, or the service's user cannot reach the docker socket, every Python tool call then
    fails. Which value each gpt-oss release reads is knowledge data (lifecycle rows
    "PYTHON_EXECUTION_BACKEND=<value>", package gpt-oss).

    Fix: set `PYTHON_EXECUTION_BACKEND=dangerously_use_uv` (gpt-oss >= 0.0.5; it runs the model's
    code on the serving host as the service's user) in the service's EnvironmentFile, upgrading
    gpt-oss if older; or remove the variable and give the service docker.

    Source: gpt-oss 0.0.1-0.0.9 wheels (gpt_oss/tools/python_docker/docker_tool.py);
    openai/gpt-oss#156; vllm-project/recipes#44 (the guide's fix).
    """
    from ._util import effective_env, env_file_hint, flag_value, restart_command  # noqa: PLC0415

    tool_server = flag_value(snap, "--tool-server")
    if not tool_server or "demo" not in str(tool_server).split(","):
        raise NotApplicable("no `--tool-server demo`: the gpt-oss Python tool is not used")
    gpt_oss = installed_version(snap, "gpt-oss")
    if not gpt_oss:
        raise NotApplicable("gpt-oss is not installed (see tool-server-needs-gpt-oss)")
    label, key, env = effective_env(snap)
    value = env.get(PYTHON_BACKEND)
    if value is None or value == "docker":
        return  # docker is what gpt-oss does anyway
    row = kb.env_vars.get(f"{PYTHON_BACKEND}={value}")
    status = kb.lifecycle_status(row, gpt_oss) if row is not None else "unknown"
    if status in ("valid", "deprecated"):
        return
    want = kb.env_vars.get(f"{PYTHON_BACKEND}=dangerously_use_uv")
    need = want.introduced if want is not None else "0.0.5"
    commands = []
    if version(gpt_oss) is not None and version(need) is not None and version(gpt_oss) < version(need):
        commands.append(uv_pip(snap, "install", f"gpt-oss>={need}"))
    if label == "service":
        path = env_file_hint(snap)
        commands += [f"sed -i -E '/^(export +)?{PYTHON_BACKEND}=/d' {shlex.quote(path)}",
                     f"echo {PYTHON_BACKEND}=dangerously_use_uv >> {shlex.quote(path)}",
                     restart_command(snap)]
    else:
        commands.append(f"export {PYTHON_BACKEND}=dangerously_use_uv")
    why = {"removed": "no gpt-oss release reads it", "not-yet": f"gpt-oss {gpt_oss} predates it",
           "unknown": "not a backend gpt-oss knows"}.get(status, status)
    yield Finding(
        id="python-tool-backend-ignored",
        severity="warning",
        title=f"{PYTHON_BACKEND}={value} ({label} environment) is ignored by gpt-oss {gpt_oss} ({why}): "
        "the Python tool runs in docker",
        evidence=evidence(snap, [key, "service.serve", "venv.distributions"], value=value, gpt_oss=gpt_oss, status=status,
                          replacement=getattr(row, "replacement", None), note=getattr(row, "note", None)),
        fix=Fix(
            text=f"Use {PYTHON_BACKEND}=dangerously_use_uv (gpt-oss >= {need}: the model's Python then runs on this host "
            "as the service's user), or remove the variable and give the service docker:",
            commands=commands,
        ),
        links=[GPT_OSS_UV_PR, *([row.source] if row is not None and row.source.startswith("http") else []), GUIDE + "#tool-use"],
    )


def _stack_args_or_auto(snap, kb, vllm: str) -> list[str]:
    """Install options of the stack of this vLLM version (not the manifest's: it may have drifted)."""
    stack = kb.stack_for_vllm(vllm)
    return stack_args(stack) if stack is not None else ["--torch-backend", "auto"]


# A recipe's `install_extras` name vLLM extras; this is the distribution each extra brings.
EXTRA_DISTS = {"flashinfer": "flashinfer-python"}


@check(
    "recipe-extras-missing",
    severity="error",
    title="The recipe's vLLM extra for this GPU is not installed",
    category="packages",
    needs=("vllm.install", "venv.distributions"),
    links=[GUIDE + "#b200"],
)
def recipe_extras_missing(snap, kb):
    """The recipe for this GPU family and vLLM asks for an install extra (`vllm[flashinfer]` on
    B200 before 0.11.1) whose distribution is not in the venv.

    Why: before FlashInfer became a hard dependency (vLLM 0.11.1) a plain `pip install vllm`
    left it out; on Blackwell the sink-capable attention (TRT-LLM through FlashInfer) and the
    FlashInfer MXFP4 MoE are then missing and vLLM warns "Please `pip install vllm[flashinfer]`"
    or fails choosing a backend. The extras come from the knowledge's recipe rows.

    Fix: reinstall vLLM with the extra, same version.

    Source: the gpt-oss vLLM guide for 0.10.1 (B200: `uv pip install vllm[flashinfer]==0.10.1
    --torch-backend=auto`); vllm-project/vllm#21959 (flashinfer moved to an extra).
    """
    vllm = vllm_version(snap)
    from ._util import gpu_families  # noqa: PLC0415 (keeps this module's imports about packages)

    families = {fam.name: fam for _, fam in gpu_families(snap, kb) if fam is not None}
    if not families:
        raise NotApplicable("no GPU of a known family")
    have = dists_by_name(snap)
    missing: dict[str, list[str]] = {}
    sources = []
    for fam in families.values():
        recipe = kb.recipe(fam.name, vllm)
        for extra in getattr(recipe, "install_extras", ()) or ():
            dist = EXTRA_DISTS.get(extra, extra)
            if canonical_name(dist) not in have:
                missing.setdefault(extra, []).append(fam.name)
                sources.extend(recipe.links)
    if not missing:
        return
    extras = ",".join(sorted(missing))
    yield Finding(
        id="recipe-extras-missing",
        severity="error",
        title=f"vLLM {vllm} on {', '.join(sorted({f for v in missing.values() for f in v}))} needs vllm[{extras}]; "
        + ", ".join(EXTRA_DISTS.get(e, e) for e in sorted(missing)) + " is not installed",
        evidence=evidence(snap, ["vllm.install", "venv.distributions", "nvidia.gpus"], vllm=vllm, missing_extras=missing),
        fix=Fix(
            text=f"Reinstall vLLM {vllm} with the [{extras}] extra.",
            commands=[uv_pip(snap, "install", f"vllm[{extras}]=={vllm}", *_stack_args_or_auto(snap, kb, vllm))],
        ),
        links=sorted(set(sources)) + [GUIDE + "#b200"],
    )


@check(
    "triton-version-mismatch",
    severity="error",
    title="Triton is not the version torch pins",
    category="packages",
    needs=("venv.distributions", "torch.build"),
    links=["https://github.com/vllm-project/vllm/issues/39664", "https://github.com/vllm-project/vllm/issues/3426"],
)
def triton_version_mismatch(snap, kb):
    """The Triton the stack pairs with torch (its distribution and version) is missing, or
    installed at another version.

    Why: each torch release pins one Triton (`torch 2.7.1` requires `triton==3.3.1`); another
    one breaks torch.compile ("cannot import name 'triton_key' from 'triton.compiler.compiler'")
    and vLLM's gpt-oss MoE kernels ("Failed to import Triton kernels. Please make sure your
    triton version is compatible", then a much slower fallback). It happens after a stray
    `pip install -U triton`, or when a nightly torch loses its pytorch-triton.

    Fix: install the stack's Triton at its version.

    Source: vllm-project/vllm#39664, #3426; pytorch/pytorch#123042; the stack rows' triton pins
    (from torch's METADATA `Requires-Dist: triton==...`).
    """
    if fact_obj(snap, "torch.build").get("hip"):
        raise NotApplicable("a ROCm build: the knowledge's stacks pin CUDA builds")
    stack, how = current_stack(snap, kb)
    if not stack.verified:
        raise NotApplicable(f"stack {stack.name}'s Triton pin was not read from the build's files")
    have = installed_version(snap, stack.triton_dist)
    want = version(stack.triton)
    if have is not None and version(have) is not None and want is not None and public(version(have)) == public(want):
        return
    others = [f"{d.get('name')} {d.get('version')}" for d in _triton_owners(snap) if canonical_name(str(d.get("name"))) != stack.triton_dist]
    pin = f"{stack.triton_dist}=={stack.triton}"
    yield Finding(
        id="triton-version-mismatch",
        severity="error",
        title=f"{stack.name} pairs torch {stack.torch} with {pin}; "
        + (f"{stack.triton_dist} {have} is installed" if have else f"{stack.triton_dist} is not installed")
        + (f" ({', '.join(others)} instead)" if others and not have else ""),
        evidence=evidence(snap, ["venv.distributions", "torch.build"], installed=have, wanted=pin, other_tritons=others or None,
                          stack_from=how),
        fix=Fix(
            text=f"Install {pin}" + (" (and see duplicate-triton for the other Triton)" if others else "") + ".",
            commands=[uv_pip(snap, "install", "--reinstall", pin, *stack_args(stack))],
        ),
        links=["https://github.com/vllm-project/vllm/issues/39664", *stack.links],
    )


@check(
    "site-stack-file-invalid",
    severity="warning",
    title="A site stack file the manifest lists is missing or invalid",
    category="packages",
    needs=("stacks.extra",),
    links=[DESIGN],
)
def site_stack_file_invalid(snap, kb):
    """A stack file of the site's own (manifest `extra_stack_files`, copied by the deploy to
    /etc/gptoss/stacks.d/) could not be read on the host, or the knowledge loader rejects it.

    Why: the doctor judges a host against the stack its manifest names; a site stack that does not
    load is left out, so a host deployed from it is judged without it (the checks that need the
    stack skip: "manifest stack ... is not in the knowledge").

    Fix: re-run the deploy for this host (it copies the files it validated on the controller), or
    correct the file as the loader's message says.

    Source: docs/design.md (on a deployed host); doctor/gptoss_doctor/knowledge/README.md (how a
    site adds a stack).
    """
    from ..knowledge import load  # noqa: PLC0415

    _, problems = knowledge_for(snap, load)
    if not problems:
        return
    stack = fact_obj(snap, "manifest").get("stack")
    lost = isinstance(stack, str) and stack not in kb.stacks
    yield Finding(
        id="site-stack-file-invalid",
        severity="warning",
        title=f"{len(problems)} site stack file(s) left out of the knowledge: " + ", ".join(p["path"] for p in problems)
        + (f"; the manifest's stack {stack!r} is unknown without them" if lost else ""),
        evidence=evidence(snap, ["stacks.extra", "manifest"], problems=problems, manifest_stack=stack),
        fix=Fix(
            text="Re-run the deploy for this host (it copies the site's stack files it validated), or fix each file "
            "as the message says; check it with:",
            commands=["gptoss-doctor --only site-stack-file-invalid"],
        ),
        links=[DESIGN],
    )
