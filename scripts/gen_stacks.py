"""Derive the knowledge's stack rows from the vLLM releases themselves (maintainer command).

For every vLLM release on PyPI in a range it reads, from the x86_64 wheel (HTTP range requests,
never the whole wheel):
  - METADATA: Requires-Python and the exact pins of Requires-Dist (torch==X, flashinfer, ...);
  - vllm/_C.abi3.so: the "Cuda compilation tools, release X, VX.Y.Z" string nvcc left in it
    (the CUDA the wheel was built with) and the libcudart soname it links;
  - vllm/envs.py: the names of `environment_variables`;
  - the attention-backend registry: the backend enum's names;
  - whether `vllm download-kernels` exists (entrypoints/cli/download_kernels.py);
and from the wheel of the torch it pins: torch's Triton requirement and its PyPI build
(torch/version.py). It writes doctor/gptoss_doctor/knowledge/releases.toml: one `[[stack]]`
and one `[[release]]` row per vLLM release, each with its sources. Hand-written rows (eras'
notes, recipes, site stacks, builds that are not on PyPI) live in stacks.toml and are merged
at load (README.md says how).

    uv run --frozen python scripts/gen_stacks.py                    # 0.10.1 .. newest
    uv run --frozen python scripts/gen_stacks.py --only 0.34.0 --out /tmp/x.toml
    uv run --frozen python scripts/gen_stacks.py --only 0.11.2 --record tests/fixtures/releases
    uv run --frozen python scripts/gen_stacks.py --offline tests/fixtures/releases --out -

--record keeps the files each release was judged from (what the offline tests read);
--offline reads such a folder instead of the network.
"""

from __future__ import annotations

import argparse
import ast
import email.parser
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "doctor"))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gptoss_doctor.collect.venv import (  # noqa: E402  (one parser of envs.py and the registry)
    BACKEND_CLASSES,
    BACKEND_REGISTRIES,
    backend_names,
    env_var_names,
    module_constants,
)

KNOWLEDGE = ROOT / "doctor" / "gptoss_doctor" / "knowledge"
DEFAULT_OUT = KNOWLEDGE / "releases.toml"
FIRST = "0.10.1"  # the first release that serves gpt-oss

# "Cuda compilation tools, release 12.8, V12.8.93"; CUDA 13's compressed fatbins keep it as
# "release 13.0, V.88" (the repeated part back-referenced), so the tail is matched alone.
NVCC = rb"release (1\d\.\d), V(?:1\d\.\d)?\.(\d+)"
CUDART = rb"libcudart\.so\.(\d+)"
COMPILED = ("vllm/_C.abi3.so", "vllm/_C_stable_libtorch.abi3.so")
DOWNLOAD_KERNELS = "vllm/entrypoints/cli/download_kernels.py"
# The platform the stack rows are for: pins under other markers (aarch64, macOS) are left out.
TARGET_ENV = {**default_environment(), "platform_system": "Linux", "sys_platform": "linux",
              "platform_machine": "x86_64", "python_version": "3.12", "python_full_version": "3.12.0",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}


def interesting(name: str) -> bool:
    """The zip members the derivation looks at (and --record keeps the names of)."""
    return (name.endswith(".dist-info/METADATA") or name in COMPILED or name in BACKEND_REGISTRIES
            or name in ("vllm/envs.py", "torch/version.py", DOWNLOAD_KERNELS))


# --------------------------------------------------------------------------------------------
# Where the files come from: the wheel on PyPI, or a folder recorded from it
# --------------------------------------------------------------------------------------------


class Source(Protocol):
    label: str  # the wheel's file name

    def names(self) -> list[str]: ...
    def read(self, path: str) -> bytes: ...
    def scan(self, path: str, pattern: bytes, limit: int | None = None) -> bytes | None: ...


class WheelSource:
    """A wheel on PyPI, read with range requests."""

    def __init__(self, entry: dict) -> None:
        from _pypi import remote_zip  # noqa: PLC0415 - network only when asked

        self.label, self.url = entry["filename"], entry["url"]
        self.zip = remote_zip(self.url)
        self.bytes_scanned = 0

    def names(self) -> list[str]:
        return [n for n in self.zip.namelist() if interesting(n)]

    def read(self, path: str) -> bytes:
        return self.zip.read(path)

    def scan(self, path: str, pattern: bytes, limit: int | None = None) -> bytes | None:
        from _pypi import scan_member  # noqa: PLC0415

        found, seen = scan_member(self.zip, path, pattern, limit)
        self.bytes_scanned += seen
        return found


class DirSource:
    """A folder written by --record: names.txt, files/<member>, scans.json, wheel.txt."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.label = (folder / "wheel.txt").read_text().strip()
        scans = folder / "scans.json"  # absent for a torch wheel: nothing is scanned there
        self._scans = json.loads(scans.read_text()) if scans.is_file() else {}

    def names(self) -> list[str]:
        return (self.folder / "names.txt").read_text().split()

    def read(self, path: str) -> bytes:
        return (self.folder / "files" / path).read_bytes()

    def scan(self, path: str, pattern: bytes, limit: int | None = None) -> bytes | None:
        hit = self._scans.get(f"{path} {pattern.decode()}")
        return hit.encode() if hit is not None else None


class Recorder:
    """Passes reads through to a source and keeps what was read under `folder`."""

    def __init__(self, inner: Source, folder: Path) -> None:
        self.inner, self.folder, self.label = inner, folder, inner.label
        self._scans: dict[str, str | None] = {}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "wheel.txt").write_text(inner.label + "\n")

    def names(self) -> list[str]:
        names = self.inner.names()
        (self.folder / "names.txt").write_text("\n".join(names) + "\n")
        return names

    def read(self, path: str) -> bytes:
        data = self.inner.read(path)
        out = self.folder / "files" / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(reduced(path, data, self.label))
        return data


MAIN_CUDA = r'"VLLM_MAIN_CUDA_VERSION"[^\n]*\n?[^\n]*?"(\d+\.\d+)"'


def reduced(path: str, data: bytes, label: str) -> bytes:
    """What --record keeps of a vLLM source file: only what the derivation reads of it (the env
    var names, VLLM_MAIN_CUDA_VERSION's default, the backend enum's names), in the same shape, so
    the project holds vLLM's facts, not its code. Other members (METADATA, version.py) as read."""
    if not path.endswith(".py") or not path.startswith("vllm/"):
        return data
    text = data.decode("utf-8", "replace")
    head = (f"# Reduced from {path} of {label} by scripts/gen_stacks.py --record: only what the\n"
            "# generator reads of it, in the same shape; the rest of the file is left out.\n")
    if path == "vllm/envs.py":
        cuda = re.search(MAIN_CUDA, text)
        rows = [f'    "{n}": "{cuda.group(1)}",' if cuda and n == "VLLM_MAIN_CUDA_VERSION" else f'    "{n}": None,'
                for n in env_var_names(text)]
        return (head + "environment_variables = {\n" + "".join(r + "\n" for r in rows) + "}\n").encode()
    if path in BACKEND_REGISTRIES:
        cls = next((n.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.ClassDef) and n.name in BACKEND_CLASSES), None)
        if cls:
            names = backend_names(text)
            return (head + f"class {cls}:\n" + "".join(f"    {n} = {i}\n" for i, n in enumerate(names, 1))).encode()
    return data

    def scan(self, path: str, pattern: bytes, limit: int | None = None) -> bytes | None:
        hit = self.inner.scan(path, pattern, limit)
        self._scans[f"{path} {pattern.decode()}"] = hit.decode() if hit is not None else None
        (self.folder / "scans.json").write_text(json.dumps(self._scans, indent=1, sort_keys=True) + "\n")
        return hit


# --------------------------------------------------------------------------------------------
# What a release says (pure: sources in, facts out)
# --------------------------------------------------------------------------------------------


@dataclass
class TorchFacts:
    version: str
    wheel: str
    triton_requirement: str | None  # as torch's METADATA writes it: "triton==3.5.0", "triton~=3.8.0"
    pypi_build: str | None  # torch/version.py of the PyPI wheel: "2.9.0+cu128"

    @property
    def triton(self) -> tuple[str, str] | None:
        """(distribution, version) of the Triton this torch installs."""
        if not self.triton_requirement:
            return None
        req = Requirement(self.triton_requirement)
        spec = next(iter(req.specifier), None)
        return (req.name, spec.version) if spec is not None else None


@dataclass
class ReleaseFacts:
    version: str
    wheel: str
    requires_python: str
    pins: list[str]
    nvcc: str | None  # "12.8.93": from the compiled library; None when it could not be read
    compiled_in: str | None
    cudart: str | None  # soname major of libcudart it links
    main_cuda: str | None  # envs.py's VLLM_MAIN_CUDA_VERSION default, where it has one
    env_vars: list[str]
    attention_backends: list[str]
    backend_registry: str | None
    download_kernels: bool
    problems: list[str] = field(default_factory=list)

    @property
    def torch(self) -> str | None:
        return next((p.split("==", 1)[1] for p in self.pins if p.startswith("torch==")), None)


def _metadata(src: Source, dist: str) -> email.message.Message:
    path = next((n for n in src.names() if n.endswith(".dist-info/METADATA")
                 and n.split("/")[0].split("-")[0].lower().replace("_", "-") == dist), None)
    if path is None:
        raise LookupError(f"{src.label}: no {dist} .dist-info/METADATA")
    return email.parser.Parser().parsestr(src.read(path).decode("utf-8", "replace"))


def _exact_pins(requires: list[str]) -> list[str]:
    """Requirements pinned with == that apply on Linux x86_64 (an extra's kept with its marker)."""
    out = []
    for text in requires:
        req = Requirement(text)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            continue
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", str(req.marker or ""))
        env = {**TARGET_ENV, "extra": extra.group(1) if extra else ""}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
        out.append(f"{name}=={specs[0].version}" + (f"; extra == \"{extra.group(1)}\"" if extra else ""))
    return sorted(set(out))


def _lower_bound_first(spec: str) -> str:
    """'<3.13,>=3.9' as '>=3.9,<3.13' (how the knowledge writes ranges)."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return ",".join(sorted(parts, key=lambda p: not p.startswith(">")))


def read_release(version: str, src: Source) -> ReleaseFacts:
    names = set(src.names())
    meta = _metadata(src, "vllm")
    problems: list[str] = []
    compiled = next((c for c in COMPILED if c in names), None)
    nvcc = cudart = None
    if compiled is None:
        problems.append(f"no compiled library ({' / '.join(COMPILED)})")
    else:
        cudart_hit = src.scan(compiled, CUDART, limit=16 << 20)
        cudart = re.fullmatch(CUDART, cudart_hit).group(1).decode() if cudart_hit else None
        hit = src.scan(compiled, NVCC)
        if hit:
            m = re.fullmatch(NVCC, hit)
            nvcc = f"{m.group(1).decode()}.{m.group(2).decode()}"
        else:
            problems.append(f"no nvcc version string in {compiled}")
    envs = src.read("vllm/envs.py").decode("utf-8", "replace") if "vllm/envs.py" in names else ""
    main_cuda = re.search(MAIN_CUDA, envs)
    registry = next((r for r in BACKEND_REGISTRIES if r in names), None)
    backends = backend_names(src.read(registry).decode("utf-8", "replace")) if registry else []
    return ReleaseFacts(
        version=version,
        wheel=src.label,
        requires_python=_lower_bound_first(str(meta["Requires-Python"] or "")),
        pins=_exact_pins(meta.get_all("Requires-Dist") or []),
        nvcc=nvcc,
        compiled_in=compiled,
        cudart=cudart,
        main_cuda=main_cuda.group(1) if main_cuda else None,
        env_vars=env_var_names(envs) if envs else [],
        attention_backends=sorted(backends),
        backend_registry=registry,
        download_kernels=DOWNLOAD_KERNELS in names,
        problems=problems,
    )


def read_torch(version: str, src: Source) -> TorchFacts:
    meta = _metadata(src, "torch")
    triton = None
    for text in meta.get_all("Requires-Dist") or []:
        req = Requirement(text)
        if req.name in ("triton", "pytorch-triton") and (req.marker is None or req.marker.evaluate({**TARGET_ENV, "extra": ""})):
            triton = f"{req.name}{req.specifier}"
    build = None
    if "torch/version.py" in src.names():
        build = module_constants(src.read("torch/version.py").decode("utf-8", "replace")).get("__version__")
    return TorchFacts(version=version, wheel=src.label, triton_requirement=triton, pypi_build=build)


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


def _cu(cuda: str) -> str:
    return "cu" + cuda.replace(".", "")


def stack_row(r: ReleaseFacts, t: TorchFacts | None, driver_floors: dict[str, str], why: str = "") -> dict:
    """The `[[stack]]` row of one release. The torch build is the one for the CUDA the vLLM wheel
    was compiled with (not PyPI's torch build when that differs: 2.7.1 on PyPI is cu126)."""
    v = r.version
    page = f"https://pypi.org/project/vllm/{v}/"
    if r.nvcc:
        cuda = ".".join(r.nvcc.split(".")[:2])
        cuda_src = f"{r.compiled_in}: nvcc 'release {cuda}, V{r.nvcc}'"
    elif r.main_cuda:
        cuda = r.main_cuda
        cuda_src = f"{r.compiled_in or 'the compiled library'} not read: CUDA from vllm/envs.py VLLM_MAIN_CUDA_VERSION default {cuda}"
    elif t is not None and t.pypi_build and "+cu" in t.pypi_build:
        local = t.pypi_build.split("+cu")[1]
        cuda = f"{local[:-1]}.{local[-1]}"
        cuda_src = f"the compiled library not read: CUDA of the pinned torch's PyPI build {t.pypi_build}"
    else:
        raise LookupError(f"vllm {v}: no CUDA version (compiled library, envs.py and torch all unread)")
    if r.torch is None:
        raise LookupError(f"vllm {v}: METADATA pins no torch==")
    triton = t.triton if t is not None else None
    if triton is None:
        raise LookupError(f"vllm {v}: torch {r.torch}'s Triton requirement was not read" + (f" ({why})" if why else ""))
    row = {
        "name": f"vllm-{v}",
        "era": f"vLLM {v}: torch {r.torch}, CUDA {cuda}, Triton {triton[1]}",
        "vllm": v,
        "torch": r.torch,
        "torch_local": "+" + _cu(cuda),
        "triton_dist": triton[0],
        "triton": triton[1],
        "cuda": cuda,
        "python": r.requires_python,
        "min_driver": driver_floors[cuda],
        "indexes": [{"name": "pypi", "url": "https://pypi.org/simple"}],
        "torch_backend": _cu(cuda),
        "requirements": [f"vllm=={v}"],
    }
    if cuda.startswith("13."):  # the pip toolkit with nvcc exists for CUDA 13 only (stacks.toml header)
        row["nvcc_requirement"] = f"nvidia-cuda-nvcc=={cuda}.*"
        row["cuda_home_subdir"] = "nvidia/cu13"
    row["source"] = (
        f"{page} ({r.wheel}: METADATA Requires-Python {r.requires_python}, torch=={r.torch}; {cuda_src}); "
        f"https://pypi.org/project/torch/{r.torch}/ ({t.wheel}: METADATA {t.triton_requirement}"
        + (f", torch/version.py {t.pypi_build}" if t.pypi_build else "") + ")"
    )
    return row


def release_rows(releases: list[ReleaseFacts]) -> list[dict]:
    """`[[release]]` rows, oldest first: the first lists every env var, later rows what changed."""
    rows, prev = [], None
    for r in sorted(releases, key=lambda r: Version(r.version)):
        row: dict = {"vllm": r.version, "wheel": r.wheel, "requires_python": r.requires_python, "pins": r.pins}
        for k in ("nvcc", "compiled_in", "cudart", "main_cuda", "backend_registry"):
            if getattr(r, k):
                row[k] = getattr(r, k)
        if prev is None:
            row["env_vars"] = r.env_vars
        else:
            row["env_vars_added"] = sorted(set(r.env_vars) - set(prev.env_vars))
            row["env_vars_removed"] = sorted(set(prev.env_vars) - set(r.env_vars))
        row["attention_backends"] = r.attention_backends
        row["download_kernels"] = r.download_kernels
        tag = f"https://github.com/vllm-project/vllm/blob/v{r.version}"
        row["source"] = (f"https://pypi.org/project/vllm/{r.version}/ ({r.wheel}: METADATA, {r.compiled_in}); "
                         f"{tag}/vllm/envs.py" + (f"; {tag}/{r.backend_registry}" if r.backend_registry else ""))
        rows.append(row)
        prev = r
    return rows


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string of ASCII is a TOML basic string
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        if not v:
            return "[]"
        if sum(len(_toml_value(x)) for x in v) < 80:
            return "[" + ", ".join(_toml_value(x) for x in v) + "]"
        return "[\n" + "".join(f"  {_toml_value(x)},\n" for x in v) + "]"
    raise TypeError(v)


def render(stacks: list[dict], releases: list[dict], summary: str) -> str:
    lines = [
        "# GENERATED by scripts/gen_stacks.py from the vLLM and torch wheels on PyPI: do not edit.",
        "# Hand-written notes and eras go in stacks.toml (a [[stack]] row of the same name).",
        f"# {summary}",
        "",
    ]
    for table, rows in (("stack", stacks), ("release", releases)):
        for row in rows:
            lines.append(f"[[{table}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in row.items()]
            lines.append("")
    return "\n".join(lines)


def driver_floors() -> dict[str, str]:
    import tomllib  # noqa: PLC0415 - the maintainer runs Python >= 3.11

    with (KNOWLEDGE / "drivers.toml").open("rb") as f:
        return {r["cuda"]: r["min_driver"] for r in tomllib.load(f)["cuda"]}


def read_torches(releases: list[ReleaseFacts], torch_source) -> tuple[dict[str, TorchFacts], dict[str, str]]:
    """The facts of every torch the releases pin, and why a torch could not be read;
    `torch_source(version)` opens one."""
    torches, problems = {}, {}
    for t in sorted({r.torch for r in releases if r.torch}, key=Version):
        try:
            torches[t] = read_torch(t, torch_source(t))
        except (OSError, LookupError) as e:
            problems[t] = str(e)
    return torches, problems


def generate(releases: list[ReleaseFacts], torches: dict[str, TorchFacts], when: str,
             torch_problems: dict[str, str] | None = None) -> str:
    """The generated TOML for these releases (pure)."""
    floors = driver_floors()
    ordered = sorted(releases, key=lambda r: Version(r.version))
    why = torch_problems or {}
    stacks = [stack_row(r, torches.get(r.torch or ""), floors, why.get(r.torch or "", "")) for r in ordered]
    summary = f"{len(stacks)} releases ({stacks[0]['vllm']} .. {stacks[-1]['vllm']}), read {when}"
    return render(stacks, release_rows(ordered), summary)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gen_stacks.py", description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="start", default=FIRST, help=f"first vLLM release (default {FIRST})")
    ap.add_argument("--to", dest="end", help="last vLLM release (default: the newest on PyPI)")
    ap.add_argument("--only", nargs="*", help="just these releases")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="where to write the TOML ('-': stdout)")
    ap.add_argument("--record", type=Path, help="also keep the files read, under DIR/vllm-<v> and DIR/torch-<v>")
    ap.add_argument("--offline", type=Path, help="read a folder written by --record instead of PyPI")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.offline:
        folders = {p.name.removeprefix("vllm-"): p for p in sorted(args.offline.glob("vllm-*"))}
        if args.only:
            folders = {v: p for v, p in folders.items() if v in args.only}
        if not folders:
            print(f"gen_stacks: {args.offline}: no vllm-<version> folders (write them with --record)", file=sys.stderr)
            return 2
        sources: dict[str, Source] = {v: DirSource(p) for v, p in folders.items()}

        def torch_source(t: str) -> Source:
            folder = args.offline / f"torch-{t}"
            if not folder.is_dir():
                raise LookupError(f"{folder.name}/ was not recorded")
            return DirSource(folder)
        when = f"from the recorded folder {args.offline.name}/"
    else:
        from _pypi import release_wheels  # noqa: PLC0415

        try:
            wheels = release_wheels("vllm", r"manylinux\w*_x86_64\.whl$")
            torch_wheels = release_wheels("torch", r"-cp312-cp312-manylinux\w*_x86_64\.whl$")
        except OSError as e:
            print(f"gen_stacks: cannot read PyPI's index ({e}); run where https://pypi.org is reachable", file=sys.stderr)
            return 2
        versions = args.only or [v for v in wheels if Version(v) >= Version(args.start)
                                 and (args.end is None or Version(v) <= Version(args.end))]
        missing = [v for v in versions if v not in wheels]
        if missing:
            print(f"gen_stacks: no x86_64 wheel on PyPI for vllm {', '.join(missing)}", file=sys.stderr)
            return 2

        def open_wheel(entry: dict, folder: str) -> Source:
            src = WheelSource(entry)
            return Recorder(src, args.record / folder) if args.record else src

        def torch_source(t: str) -> Source:
            if t not in torch_wheels:
                raise LookupError(f"no cp312 x86_64 wheel of torch {t} on PyPI")
            return open_wheel(torch_wheels[t], f"torch-{t}")

        sources = {}
        when = f"from PyPI on {time.strftime('%Y-%m-%d')}"
    try:
        if args.offline:
            releases = [read_release(v, s) for v, s in sources.items()]
        else:
            def one(v: str) -> ReleaseFacts:
                sources[v] = open_wheel(wheels[v], f"vllm-{v}")
                return read_release(v, sources[v])

            with ThreadPoolExecutor(max_workers=4) as pool:  # the compiled-library scans dominate
                releases = list(pool.map(one, versions))
        torches, torch_problems = read_torches(releases, torch_source)
        problems = [f"vllm {r.version}: {p}" for r in releases for p in r.problems]
        text = generate(releases, torches, when, torch_problems)
    except (OSError, LookupError) as e:
        print(f"gen_stacks: {e}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    scanned = sum(getattr(getattr(s, "inner", s), "bytes_scanned", 0) for s in sources.values())
    print(f"gen_stacks: {text.count(chr(10) + '[[stack]]')} stack rows -> {args.out}; "
          f"{scanned / 2**20:.0f} MiB of compiled libraries decompressed; {time.monotonic() - t0:.0f} s", file=sys.stderr)
    for p in problems:
        print(f"gen_stacks: not read: {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
