"""gptoss-doctor --deep probe. Standalone: run by the TARGET venv's python, imports nothing of the doctor.

Prints one JSON line per step, as soon as the step ends, so the parent keeps what finished
before a hang or a crash:
    {"step": "torch_import", "ok": true, "seconds": 5.1, "error": null, "detail": {...}}
`ok` is null for a step that does not apply here (the Triton kernel without a GPU).
"""

import json
import sys
import time
import traceback
import warnings


def emit(step, ok, seconds, error=None, detail=None):
    row = {"step": step, "ok": ok, "seconds": round(seconds, 4), "error": error, "detail": detail}
    sys.stdout.write(json.dumps(row, default=str) + "\n")
    sys.stdout.flush()


def error_tail():
    # the exception line and the frame it came from: enough to search for, short enough to read
    return traceback.format_exc(limit=-2).strip()[-1200:]


def run_step(step, fn):
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok, error, detail = fn()
        if caught:
            detail = dict(detail or {})
            detail["warnings"] = [str(w.message)[:400] for w in caught[:5]]
    except Exception:  # noqa: BLE001 - every failure is the step's result
        ok, error, detail = False, error_tail(), None
    emit(step, ok, time.perf_counter() - started, error, detail)
    return ok


STATE = {}


def torch_import():
    import torch  # noqa: PLC0415

    STATE["torch"] = torch
    return True, None, {"version": torch.__version__, "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None)}


def cuda_init():
    torch = STATE["torch"]
    if not torch.cuda.is_available():
        build = "a CPU build" if torch.version.cuda is None and not getattr(torch.version, "hip", None) else "a GPU build"
        STATE["device"] = "cpu"
        return False, f"torch.cuda.is_available() is False (torch {torch.__version__} is {build})", {"device_count": 0}
    count = torch.cuda.device_count()
    devices = []
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        devices.append(
            {
                "index": i,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_mib": props.total_memory // (1 << 20),
                # ROCm's gfx target; on CUDA builds gcnArchName just repeats the name
                "gcn_arch": getattr(props, "gcnArchName", None) if getattr(torch.version, "hip", None) else None,
            }
        )
    arch_list = torch.cuda.get_arch_list()
    cap = devices[0]["capability"].replace(".", "")
    # a device runs the build when its exact SASS is in the list, or PTX of an older or equal arch is
    arch_ok = f"sm_{cap}" in arch_list or any(
        a.startswith("compute_") and a[len("compute_"):].rstrip("af").isdigit() and int(a[len("compute_"):].rstrip("af")) <= int(cap)
        for a in arch_list
    )
    if getattr(torch.version, "hip", None):
        arch_ok = True  # ROCm lists gfx targets, checked by gcn_arch instead
    STATE["device"] = "cuda:0"
    detail = {"device_count": count, "devices": devices, "arch_list": arch_list, "arch_ok": arch_ok}
    if not arch_ok:
        return False, f"sm_{cap} is not in torch's arch list {arch_list}", detail
    return True, None, detail


def matmul():
    torch = STATE["torch"]
    device = STATE.get("device", "cpu")
    a = torch.randn(1024, 1024, device=device, dtype=torch.float32)
    b = a @ a.T
    if device != "cpu":
        torch.cuda.synchronize()
    finite = bool(torch.isfinite(b).all().item())
    where = device if device != "cpu" else "cpu (no GPU: matmul ran on the CPU)"
    return finite, None if finite else "matmul produced non-finite values", {"device": where, "shape": [1024, 1024]}


def triton_kernel():
    torch = STATE["torch"]
    if STATE.get("device", "cpu") == "cpu":
        return None, "skipped: no GPU for a Triton kernel", None
    import triton  # noqa: PLC0415
    import triton.language as tl  # noqa: PLC0415

    @triton.jit
    def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)

    n = 4096
    x = torch.rand(n, device="cuda")
    y = torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    add_kernel[(triton.cdiv(n, 1024),)](x, y, out, n, BLOCK=1024)
    torch.cuda.synchronize()
    ok = bool(torch.allclose(out, x + y))
    return ok, None if ok else "vector add gave wrong results", {"triton": triton.__version__, "n": n}


def main():
    if not run_step("torch_import", torch_import):
        for step in ("cuda_init", "matmul", "triton_kernel"):
            emit(step, False, 0.0, "not run: torch did not import")
        return 0
    run_step("cuda_init", cuda_init)
    run_step("matmul", matmul)
    run_step("triton_kernel", triton_kernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
