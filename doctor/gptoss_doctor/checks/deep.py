"""Checks of the --deep probe: what broke when the target venv really imported torch and used the GPU."""

from __future__ import annotations

from ..findings import Fix, check, found
from ._util import NotApplicable, current_stack, evidence, fact_obj, host_daemon_command, stack_install_commands, uv_pip

STEPS = ("torch_import", "cuda_init", "matmul", "triton_kernel")

# What to do when a step fails: it names the layer at fault (packages, driver, GPU, compiler).
STEP_FIX = {
    "torch_import": "torch does not import: reinstall it from the stack's index (a missing libcudart/libcublas means the "
    "nvidia-* wheels do not match torch's CUDA).",
    "cuda_init": "torch sees no usable GPU: check the driver (driver-too-old), the fabric manager on NVSwitch boxes, "
    "CUDA_VISIBLE_DEVICES, and that torch's arch list covers this GPU.",
    "matmul": "A CUDA kernel failed on the GPU: look for Xid errors in the kernel log and the GPU's health.",
    "triton_kernel": "Triton could not compile or run a kernel: it needs a C compiler (gcc) for its launcher, one Triton "
    "distribution (duplicate-triton) and a working CUDA toolkit for ptxas.",
}
STEP_COMMANDS = {
    "cuda_init": ["nvidia-smi"],  # and the fabric manager's status, for the box's init (below)
    "matmul": ["dmesg -T | grep -i xid", "nvidia-smi -q -d ECC,PERFORMANCE"],
    "triton_kernel": ["gcc --version || apt-get install -y gcc"],
}


@check(
    "deep-probe-failed",
    severity="error",
    title="The --deep probe failed: torch import, CUDA init, a matmul or a Triton kernel",
    category="deep",
    needs=("deep",),
    links=["https://docs.pytorch.org/docs/stable/notes/cuda.html", "https://github.com/triton-lang/triton/issues"],
)
def deep_probe_failed(snap, kb):
    """A step of `gptoss-doctor --deep` failed in the target venv's own Python: importing torch,
    initialising CUDA (including torch's arch list not covering the GPU), a small matmul, or
    compiling and running a tiny Triton kernel.

    Why: the default checks read files; the deep probe is the ground truth that the stack runs.
    Its first failing step names the layer at fault; later steps depend on it and are not
    reported separately.

    Fix: by step: reinstall torch (import), fix driver / fabric manager / visibility (CUDA init),
    look at the GPU's health (matmul), give Triton a C compiler and one Triton (kernel).

    Source: the probe's own output (error line and frame); PyTorch CUDA notes; Triton needs a C
    compiler at run time (its launcher is built on first use).
    """
    deep = fact_obj(snap, "deep")
    failed = [(s, deep[s]) for s in STEPS if isinstance(deep.get(s), dict) and deep[s].get("ok") is False]
    if not failed:
        return
    step, row = failed[0]
    text, commands = step_fix(snap, kb, step, str(row.get("error") or ""))
    yield found(
        title=f"--deep: {step} failed: {str(row.get('error') or 'no error text').strip().splitlines()[-1][:200]}",
        evidence=evidence(snap, ["deep"], step=step, error=row.get("error"), seconds=row.get("seconds"),
                          detail=row.get("detail"), python=deep.get("python")),
        fix=Fix(text=text, commands=commands),
    )


CPU_TORCH = ("Torch not compiled with CUDA enabled", "torch.cuda is not available in this build", "no CUDA build")


def _reinstall_torch(snap, kb) -> list[str]:
    try:
        stack, _ = current_stack(snap, kb)
        return stack_install_commands(snap, stack, "--reinstall-package", "torch")
    except NotApplicable:
        return [uv_pip(snap, "install", "--reinstall-package", "torch", "--torch-backend", "auto", "torch")]


def step_fix(snap, kb, step: str, error: str) -> tuple[str, list[str]]:
    """(fix text, commands) for the step that failed and how: a time limit is not a broken torch,
    a CPU-only torch is not a driver fault."""
    if error.startswith("timed out"):
        limit = error.split("after", 1)[-1].split()[0] if "after" in error else "the limit"
        return (f"The probe did not finish in {limit} s, during {step}: nothing is known broken. A first CUDA init or "
                "Triton compile can take minutes on a cold cache; give it longer, and if it hangs again at the same "
                "step, look at that layer (driver and GPU for cuda_init/matmul, the compiler for triton_kernel).",
                ["gptoss-doctor --deep --deep-timeout 600"])
    torch = fact_obj(snap, "torch.build")
    if step in ("cuda_init", "torch_import") and (any(m in error for m in CPU_TORCH) or (
            step == "cuda_init" and snap.has("torch.build") and not torch.get("cuda") and not torch.get("hip"))):
        return ("torch is a CPU-only build: install the CUDA build of the stack's torch into the same venv.",
                _reinstall_torch(snap, kb))
    commands = list(STEP_COMMANDS.get(step, []))
    if step == "cuda_init":
        commands.append(host_daemon_command(snap, "nvidia-fabricmanager", "status"))
    if step == "torch_import":
        commands = _reinstall_torch(snap, kb)
    if error.startswith("the probe died"):
        return (f"The probe's Python died during {step} (a crash, not an exception): " + STEP_FIX[step], commands)
    return STEP_FIX[step], commands
