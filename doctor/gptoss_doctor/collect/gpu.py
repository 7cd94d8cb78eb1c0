"""GPU facts: NVIDIA (nvidia-smi CSV, /proc/driver/nvidia), NVSwitch and fabric manager, ROCm.

nvidia-smi's CSV query is its stable interface (the human table is not); NVML is not needed.
"""

from __future__ import annotations

import json
import re

from ..snapshot import absent, failed, value
from .env import CommandError, Env

GPU_QUERY = "index,name,uuid,compute_cap,memory.total,memory.used,persistence_mode,driver_version"
NVIDIA_SMI_QUERY = ["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"]
APPS_QUERY = ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory,gpu_uuid", "--format=csv,noheader,nounits"]
# Asked only when some GPU has this much in use: an idle GPU's driver holds well under it, so a
# box with nothing running pays for one nvidia-smi, not two.
APPS_ABOVE_MIB = 1024
PROC_DRIVER = "/proc/driver/nvidia/version"
_DRIVER_IN_PROC = re.compile(r"NVRM version:.*?\s(\d{3,}\.\d+(?:\.\d+)?)\s")
_CUDA_IN_HEADER = re.compile(r"CUDA Version:\s*(\d+\.\d+)")


def _mib(cell: str) -> int | None:
    return int(float(cell)) if re.match(r"^\d+(\.\d+)?$", cell) else None


def parse_gpu_csv(text: str) -> list[dict]:
    """Rows of the `--query-gpu` CSV (noheader, nounits) as GPU dicts."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 8:
            raise ValueError(f"nvidia-smi row has {len(cells)} fields, expected 8: {line!r}")
        # a name with a comma would shift the cells: the last six are fixed
        index, name, rest = cells[0], ", ".join(cells[1:-6]), cells[-6:]
        uuid, cc, mem, used, persistence, driver = rest
        gpus.append(
            {
                "index": int(index),
                "name": name,
                "uuid": uuid,
                "compute_cap": cc if cc not in ("[N/A]", "N/A") else None,
                "memory_mib": _mib(mem),
                "memory_used_mib": _mib(used),
                "persistence_mode": persistence,
                "driver_version": driver,
            }
        )
    return gpus


def parse_apps_csv(text: str) -> list[dict]:
    """Rows of `--query-compute-apps=pid,process_name,used_memory,gpu_uuid` (noheader, nounits)."""
    apps = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4 or not cells[0].isdigit():
            continue
        apps.append({"pid": int(cells[0]), "process_name": ", ".join(cells[1:-2]), "used_mib": _mib(cells[-2]),
                     "gpu_uuid": cells[-1]})
    return apps


def compute_apps(env: Env, gpus: list[dict]) -> dict:
    """Who holds GPU memory: nvidia-smi's compute apps, each marked as the service's or not."""
    if not any((g.get("memory_used_mib") or 0) >= APPS_ABOVE_MIB for g in gpus):
        return value([], f"{' '.join(NVIDIA_SMI_QUERY)}: under {APPS_ABOVE_MIB} MiB in use on every GPU")
    source = " ".join(APPS_QUERY)
    try:
        done = env.run(APPS_QUERY)
    except CommandError as e:
        return failed(str(e), source)
    if done.returncode != 0:
        return failed(f"nvidia-smi exited {done.returncode}: {done.tail()}", source)
    from .live import ServiceProcesses, describe  # noqa: PLC0415 - only when memory is in use

    service = ServiceProcesses(env)
    apps = []
    for app in parse_apps_csv(done.stdout):
        who = describe(env, app["pid"], service)
        apps.append({**app, "command": who["command"] or app["process_name"], "is_service": who["is_service"],
                     "why": who["why"]})
    return value(apps, source)


def driver_from_proc(text: str) -> str | None:
    m = _DRIVER_IN_PROC.search(text)
    return m.group(1) if m else None


def nvidia_gpus(env: Env) -> dict:
    facts: dict[str, dict] = {}
    proc_version = None
    if env.exists(PROC_DRIVER):
        proc_version = driver_from_proc(env.read_text(PROC_DRIVER))
        if proc_version:
            facts["nvidia.driver"] = value({"version": proc_version}, PROC_DRIVER)
    source = " ".join(NVIDIA_SMI_QUERY)
    if env.which("nvidia-smi") is None:
        why = "no nvidia-smi on PATH" + ("" if proc_version else f" and no {PROC_DRIVER}: no NVIDIA driver")
        facts["nvidia.gpus"] = facts["nvidia.compute_apps"] = absent(why)
        facts.setdefault("nvidia.driver", absent(why))
        return facts
    try:
        done = env.run(NVIDIA_SMI_QUERY)
    except CommandError as e:
        facts["nvidia.gpus"] = facts["nvidia.compute_apps"] = failed(str(e), source)
        facts.setdefault("nvidia.driver", failed(str(e), source))
        return facts
    if done.returncode != 0:
        error = f"nvidia-smi exited {done.returncode}: {done.tail()}"
        facts["nvidia.gpus"] = facts["nvidia.compute_apps"] = failed(error, source)
        facts.setdefault("nvidia.driver", failed(error, source))
        return facts
    gpus = parse_gpu_csv(done.stdout)
    facts["nvidia.gpus"] = value([{k: v for k, v in g.items() if k != "driver_version"} for g in gpus], source)
    facts["nvidia.compute_apps"] = compute_apps(env, gpus)
    if "nvidia.driver" not in facts:
        if gpus:
            facts["nvidia.driver"] = value({"version": gpus[0]["driver_version"]}, source)
        else:
            facts["nvidia.driver"] = absent("nvidia-smi lists no GPU", source)
    return facts


def nvidia_cuda_max(env: Env) -> dict:
    """The CUDA version the driver supports, from nvidia-smi's header (`CUDA Version: 13.0`)."""
    if env.which("nvidia-smi") is None:
        return {"nvidia.cuda_driver_max": absent("no nvidia-smi on PATH")}
    done = env.run(["nvidia-smi"])
    m = _CUDA_IN_HEADER.search(done.stdout)
    if done.returncode != 0 or not m:
        return {"nvidia.cuda_driver_max": failed(f"nvidia-smi exited {done.returncode}: {done.tail()}", "nvidia-smi")}
    return {"nvidia.cuda_driver_max": value(m.group(1), "nvidia-smi")}


def nvswitch(env: Env) -> dict:
    proc_dir = env.path("/proc/driver/nvidia-nvswitch/devices")
    if proc_dir.is_dir():
        count = sum(1 for _ in proc_dir.iterdir())
        return {"nvidia.nvswitch": value({"count": count}, "/proc/driver/nvidia-nvswitch/devices")}
    dev = env.path("/dev")
    count = sum(1 for p in dev.glob("nvidia-nvswitch*") if p.name[len("nvidia-nvswitch") :].isdigit()) if dev.is_dir() else 0
    return {"nvidia.nvswitch": value({"count": count}, "/dev/nvidia-nvswitch*")}


def _process_running(env: Env, comm: str) -> bool:
    """A process named `comm` in the box's /proc (where no systemd can be asked)."""
    proc = env.path("/proc")
    if not proc.is_dir():
        return False
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == comm[:15]:  # the kernel keeps 15 characters
                    return True
            except OSError:
                continue
    return False


def fabric_manager(env: Env) -> dict:
    binary = env.which("nv-fabricmanager") or next(
        (p for p in ("/usr/bin/nv-fabricmanager", "/usr/sbin/nv-fabricmanager") if env.exists(p)), None
    )
    if binary is None:
        return {"nvidia.fabric_manager": value({"installed": False, "active": None, "version": None}, "PATH")}
    version = None
    done = env.run([binary, "--version"])
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", done.stdout + done.stderr)
    if m:
        version = m.group(1)
    active = None  # unknown without systemd, unless its process is seen
    if env.path("/run/systemd/system").is_dir() and env.which("systemctl"):
        state = env.run(["systemctl", "is-active", "nvidia-fabricmanager"]).stdout.strip()
        active = state == "active"
    elif _process_running(env, "nv-fabricmanager"):
        active = True  # started by hand or by a container's entrypoint
    return {"nvidia.fabric_manager": value({"installed": True, "active": active, "version": version}, binary)}


def rocm_version(env: Env) -> dict:
    path = "/opt/rocm/.info/version"
    if not env.exists(path):
        return {"rocm.version": absent("no ROCm (/opt/rocm/.info/version)", path)}
    m = re.search(r"\d+\.\d+(?:\.\d+)?", env.read_text(path))
    if not m:
        return {"rocm.version": failed(f"no version in {path}", path)}
    return {"rocm.version": value(m.group(0), path)}


def _first_int(obj) -> int | None:
    m = re.search(r"\d+", json.dumps(obj))
    return int(m.group(0)) if m else None


def parse_amd_smi(text: str) -> list[dict]:
    """`amd-smi static --asic --vram --json`: a list of {gpu, asic: {market_name, target_graphics_version}, vram}."""
    data = json.loads(text)
    rows = data if isinstance(data, list) else data.get("gpu_data", [data])
    gpus = []
    for i, row in enumerate(rows):
        asic = row.get("asic", {}) if isinstance(row, dict) else {}
        vram = (row.get("vram") or {}).get("size") if isinstance(row, dict) else None
        mem = None
        if isinstance(vram, dict):
            mem = _first_int(vram.get("value"))
            if mem is not None and str(vram.get("unit", "MB")).upper() in ("GB", "GIB"):
                mem *= 1024
        gfx = re.search(r"gfx[0-9a-f]+", json.dumps(row))
        gpus.append(
            {
                "index": row.get("gpu", i) if isinstance(row, dict) else i,
                "name": asic.get("market_name"),
                "gfx": gfx.group(0) if gfx else None,
                "memory_mib": mem,
            }
        )
    return gpus


def parse_rocm_smi(text: str) -> list[dict]:
    """`rocm-smi --showproductname --showmeminfo vram --json`: {"card0": {...}, ...}."""
    data = json.loads(text)
    gpus = []
    for key, row in data.items():
        if not key.startswith("card") or not isinstance(row, dict):
            continue
        gfx = re.search(r"gfx[0-9a-f]+", json.dumps(row))
        total = next((v for k, v in row.items() if "VRAM Total Memory" in k), None)
        gpus.append(
            {
                "index": int(key[4:]) if key[4:].isdigit() else len(gpus),
                "name": row.get("Card Series") or row.get("Card series") or row.get("Card Model"),
                "gfx": gfx.group(0) if gfx else None,
                "memory_mib": int(total) // (1 << 20) if str(total or "").isdigit() else None,
            }
        )
    return gpus


def rocm_gpus(env: Env) -> dict:
    tools = [
        ("amd-smi", ["static", "--asic", "--vram", "--json"], parse_amd_smi),
        ("rocm-smi", ["--showproductname", "--showmeminfo", "vram", "--json"], parse_rocm_smi),
    ]
    errors = []
    for name, args, parse in tools:
        exe = env.which(name) or (f"/opt/rocm/bin/{name}" if env.exists(f"/opt/rocm/bin/{name}") else None)
        if exe is None:
            continue
        source = " ".join([name, *args])
        try:
            done = env.run([exe, *args])
            if done.returncode != 0:
                errors.append(f"{name} exited {done.returncode}: {done.tail(200)}")
                continue
            return {"rocm.gpus": value(parse(done.stdout), source)}
        except (CommandError, ValueError) as e:
            errors.append(f"{name}: {e}")
    if errors:
        return {"rocm.gpus": failed("; ".join(errors))}
    return {"rocm.gpus": absent("no amd-smi or rocm-smi")}


COLLECTORS = [
    (nvidia_gpus, ("nvidia.gpus", "nvidia.driver", "nvidia.compute_apps")),
    (nvidia_cuda_max, ("nvidia.cuda_driver_max",)),
    (nvswitch, ("nvidia.nvswitch",)),
    (fabric_manager, ("nvidia.fabric_manager",)),
    (rocm_version, ("rocm.version",)),
    (rocm_gpus, ("rocm.gpus",)),
]
