"""Builds the index tree: stand-in wheels (tests/standins/build.py) and real wheels from PyPI.

The tree is CACHE_DIR/wheels/<digest>/<index-name>/*.whl (+ PEP 658 .metadata files), keyed by
the plan and the stand-ins' sources, so it is built once and a running index never sees a
half-written file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from . import paths
from .catalog import BINARY_PYTHONS, Plan
from .errors import TestbedError, run


def load_builder():
    """tests/standins/build.py, which lives beside the tests, not in this package."""
    path = paths.STANDINS_DIR / "build.py"
    if not path.exists():
        raise TestbedError(f"stand-in builder {path} not found; run gptoss-testbed from a checkout of the project")
    spec = importlib.util.spec_from_file_location("gptoss_standins_build", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tree_digest(p: Plan) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([[w.index, w.kind, w.args] for w in p.standins], sort_keys=True, default=str).encode())
    h.update(json.dumps(p.downloads, sort_keys=True).encode())
    h.update(json.dumps(BINARY_PYTHONS).encode())
    for f in sorted(paths.STANDINS_DIR.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(f.relative_to(paths.STANDINS_DIR).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _pip_command() -> list[str]:
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
            return [python, "-m", "pip"]
    uvx = shutil.which("uvx") or str(Path(sys.executable).with_name("uvx"))
    if Path(uvx).exists():
        return [uvx, "pip"]
    raise TestbedError("no pip to download the real wheels from PyPI: install python3-pip or uv, then rerun")


def download(requirements: tuple[str, ...], log=print) -> list[Path]:
    """Real wheels from PyPI, once: cached in PYPI_DOWNLOADS_DIR by file name. A wheel built for
    one CPython (cp311-cp311) is fetched for every one of BINARY_PYTHONS too."""
    dest = paths.PYPI_DOWNLOADS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    key = "\n".join(sorted(requirements)) + "\npythons=" + ",".join(BINARY_PYTHONS)
    marker = dest / ("." + hashlib.sha256(key.encode()).hexdigest()[:16])
    if not marker.exists():
        log(f"downloading {len(requirements)} wheels from PyPI (once): {' '.join(requirements)}")
        env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_NO_INDEX")}
        pip = [*_pip_command(), "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
        run([*pip, *requirements], "pip download from PyPI", timeout=600, env=env)
        per_python = [r for r in requirements if any(_is_per_python(w) for w in _find_download(dest, r))]
        for version in BINARY_PYTHONS if per_python else ():
            tag = "cp" + version.replace(".", "")
            run([*pip, "--python-version", version, "--implementation", "cp", "--abi", tag,
                 "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", *per_python],
                f"pip download from PyPI for CPython {version}", timeout=600, env=env)
        marker.write_text(key + "\n")
    return [whl for r in requirements for whl in _find_download(dest, r)]


def _is_per_python(wheel: Path) -> bool:
    from packaging.utils import parse_wheel_filename

    return any(t.abi.startswith("cp3") for t in parse_wheel_filename(wheel.name)[3])


def _find_download(dest: Path, requirement: str) -> list[Path]:
    """Every wheel of this name and version (one per CPython for a per-Python build)."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    name, _, version = requirement.partition("==")
    found = []
    for whl in sorted(dest.glob("*.whl")):
        wname, wversion, _b, _t = parse_wheel_filename(whl.name)
        if wname == canonicalize_name(name) and str(wversion) == version:
            found.append(whl)
    if not found:
        raise TestbedError(f"{requirement}: no wheel in {dest} after pip download; delete {dest} and rerun")
    return found


def write_core_metadata(wheel: Path) -> None:
    """PEP 658: the wheel's METADATA beside it, so resolvers need not download the wheel to resolve."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        wheel.with_name(wheel.name + ".metadata").write_bytes(zf.read(name))


def build_tree(p: Plan, log=print) -> Path:
    """The served tree for this plan, built if missing. Returns CACHE_DIR/wheels/<digest>."""
    root = paths.WHEELS_DIR / tree_digest(p)
    if (root / ".complete").exists():
        return root
    builder = load_builder()
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for w in p.standins:
        out = tmp / w.index
        a = w.args
        if w.kind == "vllm":
            builder.build_vllm(out, builder.VllmSpec(**a["spec"]))
        elif w.kind == "torch":
            builder.build_torch(out, a["version"], a["build"], a["cuda"], a["requires"])
        elif w.kind == "triton":
            builder.build_triton(out, a["dist"], a["version"])
        elif w.kind == "nvcc":
            builder.build_nvcc(out, a["dist"], a["version"], a["subdir"], with_nvcc=a["nvcc"])
        elif w.kind == "cuda-runtime":
            builder.build_cuda_runtime(out, a["dist"], a["version"], a["subdir"])
        else:  # pragma: no cover - the catalog only makes the kinds above
            raise TestbedError(f"unknown stand-in kind {w.kind!r}")
    for index, requirements in p.downloads.items():
        (tmp / index).mkdir(parents=True, exist_ok=True)
        for whl in download(requirements, log):
            os.link(whl, tmp / index / whl.name)
    for whl in tmp.rglob("*.whl"):
        write_core_metadata(whl)
    (tmp / ".complete").write_text(json.dumps({"stacks": p.stacks, "indexes": p.index_urls}, indent=1))
    if root.exists():  # another `up` finished first with the same digest: same bytes
        shutil.rmtree(tmp)
    else:
        tmp.rename(root)
    return root
