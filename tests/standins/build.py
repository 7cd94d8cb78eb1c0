"""Builds the stand-in wheels (vLLM, torch, Triton, the pip CUDA toolkit) for the testbed's index.

STAND-INS: vLLM, CUDA torch and Triton need a GPU; these wheels carry their REAL names, versions
and dependency pins so real resolvers (uv) treat them as the real ones, while the code inside is a
small standard-library fake (see src/). What is valid in each vLLM version arrives as a VllmSpec,
made from the knowledge data by the testbed (gptoss_testbed.catalog): nothing here imports it.

Wheels are reproducible: fixed timestamps and sorted entries, so the same spec gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

SRC = Path(__file__).resolve().parent / "src"
_ZIP_DATE = (2025, 8, 5, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# A wheel
# ---------------------------------------------------------------------------------------------

def dist_filename_name(name: str) -> str:
    """The distribution name as wheel file names spell it (PEP 427 / binary distribution format)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_filename(name: str, version: str, tag: str = "py3-none-any") -> str:
    return f"{dist_filename_name(name)}-{version}-{tag}.whl"


def metadata_text(name: str, version: str, *, summary: str, requires: list[str],
                  requires_python: str | None) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", f"Summary: {summary}"]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {r}" for r in requires]
    return "\n".join(lines) + "\n\n" + summary + "\n"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(out_dir: Path, name: str, version: str, files: dict[str, bytes | tuple[bytes, int]], *,
                summary: str, requires: list[str] = (), requires_python: str | None = None,
                entry_points: dict[str, str] | None = None, tag: str = "py3-none-any") -> Path:
    """A real wheel: the files, then METADATA, WHEEL, entry_points.txt and RECORD in .dist-info."""
    dist_info = f"{dist_filename_name(name)}-{version}.dist-info"
    entries: dict[str, tuple[bytes, int]] = {
        path: (content if isinstance(content, tuple) else (content, 0o644)) for path, content in files.items()
    }
    entries[f"{dist_info}/METADATA"] = (metadata_text(name, version, summary=summary, requires=list(requires),
                                                      requires_python=requires_python).encode(), 0o644)
    entries[f"{dist_info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: gptoss-testbed-standins\nRoot-Is-Purelib: true\nTag: {tag}\n".encode(), 0o644)
    if entry_points:
        text = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(entry_points.items()))
        entries[f"{dist_info}/entry_points.txt"] = (text.encode(), 0o644)
    record_path = f"{dist_info}/RECORD"
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, (d, _m) in sorted(entries.items()))
    record += f"{record_path},,\n"
    entries[record_path] = (record.encode(), 0o644)

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel_filename(name, version, tag)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        # RECORD last, as installers expect; the rest sorted so the bytes are reproducible.
        for path in sorted(entries, key=lambda p: (p == record_path, p)):
            data, mode = entries[path]
            info = zipfile.ZipInfo(path, date_time=_ZIP_DATE)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    target.write_bytes(buf.getvalue())
    return target


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.py"))}


# ---------------------------------------------------------------------------------------------
# The stand-ins
# ---------------------------------------------------------------------------------------------

@dataclass
class VllmSpec:
    """One stand-in vLLM build: its real name/version/pins and what this version accepts."""

    version: str
    requires: list[str]
    requires_python: str
    flags: dict[str, str]  # "--port": "value" | "bool" | "list"
    aliases: dict[str, str] = field(default_factory=dict)  # "-tp": "--tensor-parallel-size"
    deprecated_flags: dict[str, str | None] = field(default_factory=dict)  # flag (or "flag value") -> replacement
    bad_values: dict[str, dict[str, str]] = field(default_factory=dict)  # flag -> {value: "deprecated"|"invalid"}
    env_vars: list[str] = field(default_factory=list)  # what this version's envs.py lists
    deprecated_env_vars: dict[str, str | None] = field(default_factory=dict)
    attention_backends: list[str] = field(default_factory=list)
    validate_environ: bool = False  # warns "Unknown vLLM environment variable detected"
    log_style: str = "new"  # "old": 0.10-era log lines; "new": "(APIServer pid=N) ..."
    registry_style: str = "enum"  # "enum": v1/attention/backends/registry.py; "platforms": _Backend
    broken: bool = False  # starts, never healthy
    torch_public: str = ""  # the torch this build was compiled against (public version)


def _envs_py(names: list[str]) -> str:
    rows = "".join(f'    "{n}":\n    lambda: os.getenv("{n}", None),\n' for n in sorted(names))
    return ('"""STAND-IN for vLLM\'s envs.py: the environment variables this vLLM version knows."""\n\n'
            "import os\nfrom typing import Any, Callable\n\n"
            f"environment_variables: dict[str, Callable[[], Any]] = {{\n{rows}}}\n\n\n"
            "def __getattr__(name: str):\n"
            "    if name in environment_variables:\n"
            "        return environment_variables[name]()\n"
            '    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")\n')


def _registry_py(spec: VllmSpec) -> tuple[str, str]:
    """The attention-backend registry file, where this era's vLLM keeps it (the doctor reads it as text)."""
    if spec.registry_style == "platforms":
        members = "".join(f"    {n} = enum.auto()\n" for n in spec.attention_backends)
        return ("vllm/platforms/interface.py",
                '"""STAND-IN for vLLM\'s platforms/interface.py: the attention backends this version knows."""\n\n'
                f"import enum\n\n\nclass _Backend(enum.Enum):\n{members}")
    members = "".join(f'    {n} = "vllm.standin.{n.lower()}"\n' for n in spec.attention_backends)
    return ("vllm/v1/attention/backends/registry.py",
            '"""STAND-IN for vLLM\'s attention backend registry: the backends this version knows."""\n\n'
            f"from enum import Enum\n\n\nclass AttentionBackendEnum(Enum):\n{members}")


# Where vLLM kept its API-key check, and which path prefixes it guarded, by release (read from the
# released wheels; vllm-project/vllm PRs #42064/#42594 added /v2 and /inference in 0.22.0):
# (first release of the era, module file, prefixes). The stand-in's check is written in that shape
# at that place, so the doctor, which reads the installed source, reads it as it reads the real one.
AUTH_ERAS = (
    ((0, 0), "vllm/entrypoints/openai/api_server.py", ("/v1",)),
    ((0, 16), "vllm/entrypoints/openai/server_utils.py", ("/v1",)),
    ((0, 22), "vllm/entrypoints/openai/server_utils.py", ("/v1", "/v2", "/inference")),
    ((0, 23), "vllm/entrypoints/serve/utils/server_utils.py", ("/v1", "/v2", "/inference")),
    ((0, 27), "vllm/entrypoints/serve/utils/server_utils.py", ("/v1", "/v2", "/inference", "/cohere")),
    ((0, 29), "vllm/entrypoints/serve/middleware/authenticate.py", ("/v1", "/v2", "/inference", "/cohere")),
)


def auth_era(version: str) -> tuple[str, tuple[str, ...]]:
    """(module file, guarded prefixes) of the API-key check of this vLLM version."""
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", version).groups())
    path, prefixes = AUTH_ERAS[0][1:]
    for first, era_path, era_prefixes in AUTH_ERAS:
        if (major, minor) >= first:
            path, prefixes = era_path, era_prefixes
    return path, prefixes


def _auth_py(version: str) -> tuple[str, str]:
    """The API-key middleware file of this version's era: a path-prefix test, as vLLM writes it
    (a module-level GUARDED_PREFIX tuple from 0.22.0, a "/v1" literal before)."""
    path, prefixes = auth_era(version)
    if len(prefixes) > 1:
        constant, test = f"\n\nGUARDED_PREFIX = {prefixes!r}\n", "url_path.startswith(GUARDED_PREFIX)"
    else:
        constant, test = "", f"url_path.startswith({prefixes[0]!r})"
    text = (
        f'"""STAND-IN for vLLM\'s API-key middleware ({path} in this era): a path-prefix test, as in\n'
        'vLLM: requests under the guarded prefixes need the key, every other path passes without it."""\n\n'
        "import hashlib\nimport secrets\n"
        f"{constant}\n\n"
        "class AuthenticationMiddleware:\n"
        '    """Checks the Authorization Bearer token; skipped for OPTIONS and for paths outside the guard."""\n\n'
        "    def __init__(self, app, tokens: list[str]) -> None:\n"
        "        self.app = app\n"
        '        self.api_tokens = [hashlib.sha256(t.encode("utf-8")).digest() for t in tokens]\n\n'
        "    def verify_token(self, headers) -> bool:\n"
        '        scheme, _, param = (headers.get("Authorization") or "").partition(" ")\n'
        '        if scheme.lower() != "bearer":\n'
        "            return False\n"
        '        param_hash = hashlib.sha256(param.encode("utf-8")).digest()\n'
        "        match = False\n"
        "        for token_hash in self.api_tokens:\n"
        "            match |= secrets.compare_digest(param_hash, token_hash)\n"
        "        return match\n\n"
        "    def __call__(self, scope: dict):\n"
        '        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS":\n'
        "            return self.app(scope)\n"
        '        root_path = scope.get("root_path", "")\n'
        '        url_path = scope["path"].removeprefix(root_path)\n'
        f'        if {test} and not self.verify_token(scope["headers"]):\n'
        "            from vllm._standin_http import Response\n\n"
        '            return Response(401, {"error": "Unauthorized"})\n'
        "        return self.app(scope)\n"
    )
    return path, text


def _version_tuple(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.+]", version))


def vllm_files(spec: VllmSpec) -> dict[str, bytes]:
    files = {f"vllm/{k}": v for k, v in _tree(SRC / "vllm" / "vllm").items()}
    files["vllm/_version.py"] = (
        '"""STAND-IN for vLLM\'s _version.py."""\n'
        f"__version__ = version = {spec.version!r}\n__version_tuple__ = version_tuple = {_version_tuple(spec.version)!r}\n"
    ).encode()
    files["vllm/envs.py"] = _envs_py(spec.env_vars).encode()
    path, text = _registry_py(spec)
    for parent in Path(path).parents:
        if str(parent) not in (".", "vllm"):
            files.setdefault(f"{parent.as_posix()}/__init__.py", b"")
    files[path] = text.encode()
    auth_path, auth_text = _auth_py(spec.version)
    if auth_path in files:  # the era kept it in the module that also runs the server (api_server.py)
        auth_text += "\n\n" + files[auth_path].decode().split("\n", 1)[1]
    files[auth_path] = auth_text.encode()
    for parent in Path(auth_path).parents:
        if str(parent) not in (".", "vllm"):
            files.setdefault(f"{parent.as_posix()}/__init__.py", b"")
    data = {k: v for k, v in spec.__dict__.items() if k not in ("requires", "requires_python")}
    data["auth_module"] = auth_path[: -len(".py")].replace("/", ".")
    files["vllm/_standin.json"] = json.dumps(data, indent=1, sort_keys=True).encode()
    return files


def build_vllm(out_dir: Path, spec: VllmSpec) -> Path:
    return write_wheel(out_dir, "vllm", spec.version, vllm_files(spec), requires=spec.requires,
                       requires_python=spec.requires_python,
                       summary="STAND-IN for vLLM (gptoss testbed; the real one needs a GPU)",
                       entry_points={"vllm": "vllm.entrypoints.cli.main:main"})


def build_torch(out_dir: Path, version: str, build: str, cuda: str | None, requires: list[str]) -> Path:
    """`version` is the distribution version (with or without a local part); `build` what torch/version.py says."""
    files = _tree(SRC / "torch")
    files["torch/version.py"] = (
        '"""STAND-IN for torch/version.py."""\n'
        f"__version__ = {build!r}\ndebug = False\ncuda = {cuda!r}\ngit_version = 'standin'\nhip = None\nxpu = None\n"
    ).encode()
    return write_wheel(out_dir, "torch", version, files, requires=requires, requires_python=">=3.9",
                       summary="STAND-IN for PyTorch (gptoss testbed)")


def build_triton(out_dir: Path, dist: str, version: str) -> Path:
    files = _tree(SRC / "triton")
    files["triton/_version.py"] = f'"""STAND-IN."""\n__version__ = {version.split("+")[0]!r}\n'.encode()
    return write_wheel(out_dir, dist, version, files, requires_python=">=3.9",
                       summary=f"STAND-IN for {dist} (gptoss testbed)")


NVCC_BUILDS = {  # release -> the `Built on` / `Build` lines the real nvcc of that release prints
    "12.8": ("Fri_Feb_21_20:23:50_PST_2025", "cuda_12.8.r12.8/compiler.35583870_0"),
    "12.9": ("Tue_May_27_02:21:03_PDT_2025", "cuda_12.9.r12.9/compiler.36037853_0"),
    "13.0": ("Wed_Aug_20_01:58:59_PM_PDT_2025", "cuda_13.0.r13.0/compiler.36424714_0"),
}


def nvcc_script(full_version: str) -> str:
    release = ".".join(full_version.split(".")[:2])
    built, build = NVCC_BUILDS.get(release, ("Mon_Jan_01_00:00:00_PST_2025", f"cuda_{release}.r{release}/compiler.0_0"))
    return ("#!/bin/sh\n# STAND-IN for nvcc (gptoss testbed): prints what the real `nvcc --version` prints.\n"
            'case "$1" in\n  --version|-V)\n    cat <<EOF\n'
            "nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corporation\n"
            f"Built on {built}\nCuda compilation tools, release {release}, V{full_version}\nBuild {build}\nEOF\n"
            "    exit 0;;\nesac\necho 'nvcc fatal   : stand-in nvcc compiles nothing (gptoss testbed)' >&2\nexit 1\n")


def build_cuda_runtime(out_dir: Path, dist: str, version: str, subdir: str) -> Path:
    """The CUDA runtime wheel a CUDA 13 torch depends on: it, not the nvcc wheel, puts
    `include/cuda.h` under the pip toolkit's folder (seen in the real nvidia-cuda-runtime 13.0.96)."""
    subdir = subdir.strip("/")
    major, minor = (int(x) for x in version.split(".")[:2])
    header = (f"/* STAND-IN for cuda.h (gptoss testbed), from {dist} {version}. */\n"
              f"#define CUDA_VERSION {major * 1000 + minor * 10}\n")
    files: dict[str, bytes | tuple[bytes, int]] = {f"{subdir}/include/cuda.h": header.encode(),
                                                   f"{subdir.split('/')[0]}/__init__.py": b""}
    return write_wheel(out_dir, dist, version, files, requires_python=">=3",
                       summary=f"STAND-IN for {dist} (gptoss testbed): include/cuda.h only")


def build_nvcc(out_dir: Path, dist: str, version: str, subdir: str, with_nvcc: bool = True) -> Path:
    """The pip-provided CUDA toolkit under `subdir` (what CUDA_HOME points at).

    with_nvcc=False copies the real CUDA 12 wheel (nvidia-cuda-nvcc-cu12), which ships ptxas only."""
    subdir = subdir.strip("/")
    ptxas = "#!/bin/sh\n# STAND-IN for ptxas (gptoss testbed).\necho 'ptxas: NVIDIA (R) Ptx optimizing assembler'\n"
    files: dict[str, bytes | tuple[bytes, int]] = {f"{subdir}/bin/ptxas": (ptxas.encode(), 0o755)}
    if with_nvcc:
        files[f"{subdir}/bin/nvcc"] = (nvcc_script(version).encode(), 0o755)
        files[f"{subdir}/version.json"] = json.dumps(
            {"cuda": {"name": "CUDA SDK", "version": version},
             "cuda_nvcc": {"name": "CUDA NVCC", "version": version}}, indent=3).encode()
    top = subdir.split("/")[0]
    files[f"{top}/__init__.py"] = b""
    return write_wheel(out_dir, dist, version, files, requires_python=">=3",
                       summary=f"STAND-IN for {dist} (gptoss testbed): {'nvcc --version' if with_nvcc else 'ptxas'} only")
