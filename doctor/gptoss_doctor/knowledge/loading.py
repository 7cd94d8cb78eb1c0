"""Reading and validating the data files into a `Knowledge` (cached)."""

from __future__ import annotations

import hashlib
import marshal
import re
import sys
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ..cache import cache_dir, write_atomic
from .queries import Knowledge
from .rows import (
    PYPI_INDEX_URL,
    DriverFloor,
    GpuFamily,
    Index,
    KnowledgeError,
    Lifecycle,
    MemoryFit,
    Model,
    Recipe,
    Release,
    SinkSupport,
    Stack,
)


def _toml():
    """tomllib (tomli on 3.10), imported on a cache miss only: with it come datetime and its
    regexes, about 5 ms of every doctor run that reads the rows from the cache."""
    if sys.version_info >= (3, 11):
        import tomllib  # noqa: PLC0415
    else:  # pragma: no cover - exercised on 3.10 hosts only
        import tomli as tomllib  # noqa: PLC0415
    return tomllib


def __getattr__(name: str) -> Any:
    if name == "tomllib":  # `loading.tomllib`, as before the import became lazy
        return _toml()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# packaging.requirements (with its marker parser) is imported where a requirement is validated:
# a load from the cache validates nothing and skips that import (about 25 ms).

DATA_DIR = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------
# Field validation: one small parser per field kind
# --------------------------------------------------------------------------------------------


class _Bad(Exception):
    """A field's value is wrong; the row walker adds file, row and field."""


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _Bad(f"must be a non-empty string, got {v!r}")
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad(f"must be a string, got {v!r}")
    return v


def _version(v: Any) -> str:
    _str(v)
    try:
        Version(v)
    except InvalidVersion:
        raise _Bad(f"{v!r} is not a version (PEP 440, e.g. 0.13.0 or 0.10.1+gptoss)") from None
    return v


def _specifier(v: Any) -> str:
    _str(v)
    try:
        SpecifierSet(v)
    except InvalidSpecifier:
        raise _Bad(f"{v!r} is not a version specifier (e.g. '>=0.10.2,<0.13')") from None
    return v


def _requirement(v: Any) -> str:
    from packaging.requirements import InvalidRequirement, Requirement  # noqa: PLC0415 - see the imports

    _str(v)
    try:
        Requirement(v)
    except InvalidRequirement as e:
        raise _Bad(f"{v!r} is not a requirement string ({e})") from None
    return v


_PIN = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+(; extra == "[A-Za-z0-9._-]+")?')


def _pin(v: Any) -> str:
    """`name==X` or `name[extra]==X; extra == "e"`, as the generator writes a release's pins (a
    regular expression: parsing ~700 pins with packaging would be half of a load)."""
    if not isinstance(v, str) or not _PIN.fullmatch(v):
        raise _Bad(f"{v!r} is not an exact pin like 'torch==2.14.0'")
    return v


def _cuda(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"\d+\.\d+", v):
        raise _Bad(f"{v!r} is not a CUDA version like '12.8'")
    return v


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise _Bad(f"must be a positive number, got {v!r}")
    return float(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise _Bad(f"must be a positive integer, got {v!r}")
    return v


def _fraction(v: Any) -> float:
    f = _number(v)
    if f > 1:
        raise _Bad(f"must be a fraction in (0, 1], got {v!r}")
    return f


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"must be true or false, got {v!r}")
    return v


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise _Bad(f"must be a list of strings, got {v!r}")
    return tuple(_str(x) for x in v)


def _regex_list(v: Any) -> tuple[str, ...]:
    pats = _str_list(v)
    for p in pats:
        try:
            re.compile(p)
        except re.error as e:
            raise _Bad(f"{p!r} is not a regular expression ({e})") from None
    return pats


def _version_list(v: Any) -> tuple[str, ...]:
    return tuple(_version(x) for x in _str_list(v))


def _env(v: Any) -> Mapping[str, str]:
    if not isinstance(v, dict):
        raise _Bad(f"must be a table of NAME = \"value\", got {v!r}")
    out = {}
    for k, val in v.items():
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", k):
            raise _Bad(f"{k!r} is not an environment variable name")
        if not isinstance(val, str):
            raise _Bad(f"{k}: value must be a string, got {val!r}")
        out[k] = val
    return out


def _indexes(v: Any) -> tuple[tuple[str, str], ...]:
    """((name, url), ...): plain data, so validated rows can be cached; `_build` makes `Index`es."""
    if not isinstance(v, list) or not v:
        raise _Bad(f"must be a non-empty list of {{name = ..., url = ...}}, got {v!r}")
    out: list[tuple[str, str]] = []
    for item in v:
        if not isinstance(item, dict) or set(item) != {"name", "url"}:
            raise _Bad(f"each index needs exactly name and url, got {item!r}")
        name, url = _str(item["name"]), _str(item["url"])
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name):
            raise _Bad(f"index name {name!r} must be lowercase kebab-case")
        if not url.startswith("https://"):
            raise _Bad(f"index {name}: url {url!r} must be https://")
        if name == "pypi" and url.rstrip("/") != PYPI_INDEX_URL:
            raise _Bad(f"the index named pypi must be {PYPI_INDEX_URL}, got {url!r}")
        if any(n == name for n, _ in out):
            raise _Bad(f"index name {name!r} appears twice")
        out.append((name, url))
    if not any(n == "pypi" for n, _ in out):
        raise _Bad("must include the default index {name = \"pypi\", url = \"https://pypi.org/simple\"}")
    return tuple(out)


def _choice(*choices: Any) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        if v not in choices:
            raise _Bad(f"{v!r} is not one of {', '.join(repr(c) for c in choices)}")
        return v

    return parse


def _source(v: Any) -> str:
    s = _str(v)
    if len(s) < 8:
        raise _Bad(f"{s!r} is too short to find again: give a URL or e.g. 'vllm 0.33.0 wheel METADATA'")
    return s


# Table name -> (row class, {field: (parser, required)}). `None` means optional (TOML has no null).
_Spec = dict[str, tuple[Callable[[Any], Any], bool]]

def _pattern(rx: str, example: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or not re.fullmatch(rx, v):
            raise _Bad(f"{v!r} does not look like {example}")
        return v

    return parse


_STACK: _Spec = {
    "name": (_str, True),
    "vllm": (_version, True),
    "torch": (_version, True),
    "torch_local": (_pattern(r"(\+(cu\d{3}|rocm\d+\.\d+(\.\d+)?))?", "'+cu130', '+rocm7.0' or ''"), True),
    "triton_dist": (_choice("triton", "pytorch-triton", "pytorch-triton-rocm"), True),
    "triton": (_version, True),
    "cuda": (_cuda, False),
    "rocm": (_cuda, False),
    "min_glibc": (_cuda, False),
    "python": (_specifier, True),
    "min_driver": (_version, False),
    "indexes": (_indexes, True),
    "index_strategy": (_choice("first-index", "unsafe-first-match", "unsafe-best-match"), False),
    "prerelease": (_choice("allow", "if-necessary-or-explicit", "if-necessary", "explicit", "disallow"), False),
    "torch_backend": (_pattern(r"auto|cu\d{3}|rocm\d+\.\d+", "'cu130', 'rocm7.0' or 'auto'"), False),
    "requirements": (lambda v: tuple(_requirement(x) for x in _str_list(v)), True),
    "nvcc_requirement": (_requirement, False),
    "cuda_home_subdir": (_str, False),
    "era": (_str, True),
    "verified": (_bool, False),
    "notes": (_text, False),
    "source": (_source, True),
}
# A stacks.toml row named like a generated stack adds to it: these keys only (the facts stay
# what the release files say; `source` is appended).
_OVERLAY_KEYS = ("name", "era", "notes", "source")

_RELEASE: _Spec = {
    "vllm": (_version, True),
    "wheel": (_str, True),
    "requires_python": (_specifier, True),
    "pins": (lambda v: tuple(_pin(x) for x in _str_list(v)) if v else (), True),
    "nvcc": (_version, False),
    "compiled_in": (_str, False),
    "cudart": (_str, False),
    "main_cuda": (_cuda, False),
    "env_vars": (lambda v: _str_list(v) if v else (), False),
    "env_vars_added": (lambda v: _str_list(v) if v else (), False),
    "env_vars_removed": (lambda v: _str_list(v) if v else (), False),
    "attention_backends": (lambda v: _str_list(v) if v else (), True),
    "backend_registry": (_str, False),
    "download_kernels": (_bool, True),
    "source": (_source, True),
}

_FAMILY: _Spec = {
    "name": (_str, True),
    "vendor": (_choice("nvidia", "amd"), True),
    "arch": (_str, True),
    "compute_capability": (lambda v: _cuda(v), False),
    "gfx": (lambda v: v if isinstance(v, str) and re.fullmatch(r"gfx[0-9a-f]+", v) else _raise(
        f"{v!r} is not a gfx target like 'gfx942'"), False),
    "memory_gib": (_number, True),
    "name_patterns": (_regex_list, True),
    "notes": (_text, False),
    "source": (_source, True),
}

_RECIPE: _Spec = {
    "families": (_str_list, True),
    "vllm": (_specifier, True),
    "env": (_env, False),
    "serve_flags": (_str_list, False),
    "install_extras": (_str_list, False),
    "image": (_str, False),
    "notes": (_text, False),
    "source": (_source, True),
}

_LIFECYCLE: _Spec = {
    "name": (_str, True),
    "introduced": (_version, False),
    "deprecated": (_version, False),
    "removed": (_version, False),
    "replacement": (_str, False),
    "only_in": (_version_list, False),
    "not_in": (_version_list, False),
    "upstream": (_bool, False),
    "default_since": (_version, False),
    "vendor": (_choice("nvidia", "amd"), False),
    "package": (_choice("vllm", "gpt-oss"), False),
    "note": (_text, False),
    "source": (_source, True),
}

_SINKS: _Spec = {
    "backend": (_str, True),
    "vllm": (_specifier, True),
    "archs": (lambda v: tuple(v) if isinstance(v, list) and not v else _str_list(v), True),
    "note": (_text, False),
    "source": (_source, True),
}

_DRIVER: _Spec = {
    "cuda": (_cuda, True),
    "min_driver": (_version, True),
    "compat_min_driver": (_version, False),
    "note": (_text, False),
    "source": (_source, True),
}

_MODEL: _Spec = {
    "name": (_str, True),
    "hf_id": (_str, True),
    "params_b": (_number, True),
    "active_params_b": (_number, True),
    "weights_gib": (_number, True),
    "weights_gib_max": (_number, False),
    "num_attention_heads": (_int, True),
    "num_kv_heads": (_int, True),
    "head_dim": (_int, True),
    "layers": (_int, True),
    "hidden_size": (_int, True),
    "vocab_size": (_int, True),
    "num_experts": (_int, True),
    "experts_per_token": (_int, True),
    "sliding_window": (_int, True),
    "sliding_layers": (_int, True),
    "max_model_len": (_int, True),
    "notes": (_text, False),
    "source": (_source, True),
}

_FIT: _Spec = {
    "model": (_str, True),
    "family": (_str, True),
    "tensor_parallel_size": (_int, True),
    "gpu_memory_utilization_min": (_fraction, False),
    "gpu_memory_utilization_below": (_fraction, False),
    "max_num_batched_tokens_max": (_int, False),
    "serve_flags": (_str_list, False),
    "note": (_text, False),
    "source": (_source, True),
}


def _raise(msg: str) -> Any:
    raise _Bad(msg)


# file -> {table: spec}; each table is an array of tables ([[table]]) in the file.
_FILES: dict[str, dict[str, _Spec]] = {
    "releases.toml": {"stack": _STACK, "release": _RELEASE},
    "stacks.toml": {"stack": _STACK},
    "gpu_families.toml": {"family": _FAMILY},
    "recipes.toml": {"recipe": _RECIPE},
    "lifecycle.toml": {"env_var": _LIFECYCLE, "attention_backend": _LIFECYCLE, "flag": _LIFECYCLE},
    "drivers.toml": {"cuda": _DRIVER},
    "models.toml": {"model": _MODEL, "memory_fit": _FIT},
    "attention_sinks.toml": {"sinks": _SINKS},
}


def _row_label(table: str, i: int, row: Mapping[str, Any]) -> str:
    for key in ("name", "cuda", "model", "backend"):
        if isinstance(row.get(key), str):
            extra = f" {row['family']} tp{row.get('tensor_parallel_size')}" if table == "memory_fit" else (
                f" vllm {row.get('vllm')}" if table == "sinks" else "")
            return f"{table} {row[key]!r}{extra}"
    if table == "recipe" and isinstance(row.get("families"), list):
        return f"recipe #{i + 1} ({'/'.join(map(str, row['families']))} vllm {row.get('vllm')})"
    return f"{table} #{i + 1}"


def _parse_rows(fname: str, table: str, rows: Any, spec: _Spec) -> list[dict[str, Any]]:
    if not isinstance(rows, list):
        raise KnowledgeError(f"{fname}: {table}: must be an array of tables ([[{table}]])")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise KnowledgeError(f"{fname}: {table} #{i + 1}: must be a table ([[{table}]] with key = value lines)")
        label = _row_label(table, i, row)
        unknown = sorted(set(row) - set(spec))
        if unknown:
            raise KnowledgeError(
                f"{fname}: {label}: {unknown[0]}: unknown key (known: {', '.join(spec)})"
            )
        parsed: dict[str, Any] = {}
        for key, (parse, required) in spec.items():
            if key not in row:
                if required:
                    what = "a URL or reference it came from" if key == "source" else "a value"
                    raise KnowledgeError(f"{fname}: {label}: {key}: missing (every row needs {what})")
                continue
            try:
                parsed[key] = parse(row[key])
            except _Bad as e:
                raise KnowledgeError(f"{fname}: {label}: {key}: {e}") from None
        parsed["_label"] = label
        out.append(parsed)
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    tomllib = _toml()
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise KnowledgeError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise KnowledgeError(f"{path.name}: not valid TOML ({e})") from None


def _read_toml_text(text: str, display: str) -> dict[str, Any]:
    tomllib = _toml()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KnowledgeError(f"{display}: not valid TOML ({e})") from None


def _read_file(path: Path | None, tables: dict[str, _Spec], display: str | None = None,
               text: str | None = None) -> dict[str, list[dict]]:
    """The validated rows of a file, or of `text` (then `display` names where it came from)."""
    fname = display or path.name
    doc = _read_toml(path) if text is None else _read_toml_text(text, fname)
    unknown = sorted(set(doc) - set(tables))
    if unknown:
        raise KnowledgeError(
            f"{fname}: {unknown[0]}: unknown table (this file holds [[{']], [['.join(tables)}]])"
        )
    return {t: _parse_rows(fname, t, doc.get(t, []), spec) for t, spec in tables.items()}


def _build(cls: type, parsed: dict[str, Any]) -> Any:
    kwargs = {k: (MappingProxyType(v) if isinstance(v, dict) else v) for k, v in parsed.items() if not k.startswith("_")}
    if cls is Stack:
        kwargs["indexes"] = tuple(Index(name=n, url=u) for n, u in kwargs["indexes"])
    return cls(**kwargs)


def _unique(fname: str, table: str, rows: Iterable[dict], key: str = "name") -> None:
    seen: set[str] = set()
    for r in rows:
        if r[key] in seen:
            raise KnowledgeError(f"{fname}: {r['_label']}: {key}: duplicate {table} {r[key]!r}")
        seen.add(r[key])


# --------------------------------------------------------------------------------------------
# Cross-row checks
# --------------------------------------------------------------------------------------------

_STACK_NAME = re.compile(r"vllm-\d+(\.\d+)*(-[a-z0-9]+)?")


def _check_stack(fname: str, r: dict, drivers: Mapping[str, str]) -> None:
    """`drivers`: {CUDA: its minimum driver} (drivers.toml)."""
    from packaging.requirements import Requirement  # noqa: PLC0415 - see the imports

    label = r["_label"]

    def bad(fieldname: str, problem: str) -> KnowledgeError:
        return KnowledgeError(f"{fname}: {label}: {fieldname}: {problem}")

    if not _STACK_NAME.fullmatch(r["name"]):
        raise bad("name", f"{r['name']!r} must look like vllm-<version>[-<tag>], e.g. vllm-0.13.0")
    vllm_reqs = [Requirement(x) for x in r["requirements"] if Requirement(x).name == "vllm"]
    if len(vllm_reqs) != 1:
        raise bad("requirements", "must name vllm exactly once")
    if not vllm_reqs[0].specifier.contains(Version(r["vllm"]), prereleases=True):
        raise bad("requirements", f"{vllm_reqs[0]} does not select vllm {r['vllm']}")
    if ("cuda" in r) == ("rocm" in r):
        raise bad("cuda", "a stack is built for one of cuda (NVIDIA) or rocm (AMD): give exactly one")
    if "rocm" in r:
        if "min_driver" in r or "nvcc_requirement" in r:
            raise bad("min_driver", "min_driver and nvcc_requirement are for CUDA stacks; a ROCm stack has neither")
        expect_local = "+rocm" + r["rocm"]
        if r["torch_local"] not in ("", expect_local):
            raise bad("torch_local", f"{r['torch_local']!r} does not match rocm {r['rocm']} (expected {expect_local!r})")
    else:
        if r["cuda"] not in drivers:
            raise bad("cuda", f"{r['cuda']!r} has no row in drivers.toml (known: {', '.join(drivers)})")
        if "min_driver" not in r:
            raise bad("min_driver", "missing (every CUDA stack needs a value)")
        floor = drivers[r["cuda"]]
        if Version(r["min_driver"]) < Version(floor):
            raise bad("min_driver", f"{r['min_driver']} is below CUDA {r['cuda']}'s minimum {floor} (drivers.toml)")
        expect_local = "+cu" + r["cuda"].replace(".", "")
        if r["torch_local"] not in ("", expect_local):
            raise bad("torch_local", f"{r['torch_local']!r} does not match cuda {r['cuda']} (expected {expect_local!r})")
    if r.get("index_strategy") is None and len(r["indexes"]) > 1:
        raise bad("index_strategy", "several indexes need an index_strategy (uv's default stops at the first index)")
    if ("nvcc_requirement" in r) != ("cuda_home_subdir" in r):
        raise bad("cuda_home_subdir", "nvcc_requirement and cuda_home_subdir go together (both or neither)")
    if "nvcc_requirement" in r:
        spec = Requirement(r["nvcc_requirement"]).specifier
        major, minor = (int(x) for x in r["cuda"].split("."))
        if not spec.contains(f"{major}.{minor}.0", prereleases=True) or spec.contains(f"{major}.{minor + 1}.0", prereleases=True):
            raise bad("nvcc_requirement", f"{r['nvcc_requirement']} does not pin CUDA {r['cuda']} (e.g. nvidia-cuda-nvcc=={r['cuda']}.*)")
    if r.get("cuda_home_subdir", "").startswith("/"):
        raise bad("cuda_home_subdir", "must be relative to site-packages, e.g. nvidia/cu13")


def _check_recipe(fname: str, r: dict, families: dict[str, GpuFamily]) -> None:
    for fam in r["families"]:
        if fam not in families:
            raise KnowledgeError(
                f"{fname}: {r['_label']}: families: unknown family {fam!r} "
                f"(gpu_families.toml has: {', '.join(families)})"
            )


def _check_lifecycle(fname: str, r: dict) -> None:
    order = [(k, r.get(k)) for k in ("introduced", "deprecated", "removed") if r.get(k)]
    for (a, va), (b, vb) in zip(order, order[1:]):
        if Version(va) > Version(vb):
            raise KnowledgeError(f"{fname}: {r['_label']}: {b}: {vb} is before {a} {va}")
    if r.get("deprecated") and r.get("removed") and Version(r["deprecated"]) == Version(r["removed"]):
        raise KnowledgeError(f"{fname}: {r['_label']}: deprecated: same as removed; leave deprecated out")


def _check_fit(fname: str, r: dict, models: dict[str, Model], families: dict[str, GpuFamily]) -> None:
    if r["model"] not in models:
        raise KnowledgeError(f"{fname}: {r['_label']}: model: unknown model {r['model']!r} (known: {', '.join(models)})")
    if r["family"] not in families:
        raise KnowledgeError(
            f"{fname}: {r['_label']}: family: unknown family {r['family']!r} (gpu_families.toml has: {', '.join(families)})"
        )


def _check_sinks(fname: str, r: dict, backends: Mapping[str, Lifecycle], archs: set[str]) -> None:
    if r["backend"] not in backends:
        raise KnowledgeError(f"{fname}: {r['_label']}: backend: {r['backend']!r} has no [[attention_backend]] row in lifecycle.toml")
    for a in r["archs"]:
        if a != "*" and a not in archs:
            raise KnowledgeError(f"{fname}: {r['_label']}: archs: unknown arch {a!r} (gpu_families.toml has: {', '.join(sorted(archs))}, or \"*\")")


def _check_model(fname: str, r: dict) -> None:
    if r.get("weights_gib_max", r["weights_gib"]) < r["weights_gib"]:
        raise KnowledgeError(f"{fname}: {r['_label']}: weights_gib_max: below weights_gib ({r['weights_gib']})")
    if r["sliding_layers"] > r["layers"]:
        raise KnowledgeError(f"{fname}: {r['_label']}: sliding_layers: more than layers ({r['layers']})")
    if r["num_attention_heads"] % r["num_kv_heads"]:
        raise KnowledgeError(f"{fname}: {r['_label']}: num_kv_heads: does not divide num_attention_heads")


def _load_stacks(path: Path | None, drivers: Mapping[str, str], display: str | None = None,
                 text: str | None = None, doc: dict | None = None,
                 generated: Mapping[str, dict] | None = None) -> tuple[list[dict], list[dict]]:
    """(full stack rows, overlay rows) of a stack file. A row named like a generated stack is an
    overlay (era, notes, source only); any other row must be a whole stack."""
    fname = display or path.name
    if doc is None:
        doc = _read_toml(path) if text is None else _read_toml_text(text, fname)
    unknown = sorted(set(doc) - {"stack"})
    if unknown:
        raise KnowledgeError(f"{fname}: {unknown[0]}: unknown table (this file holds [[stack]])")
    raw = doc.get("stack", [])
    if not isinstance(raw, list):
        raise KnowledgeError(f"{fname}: stack: must be an array of tables ([[stack]])")
    generated = generated or {}
    is_overlay = [isinstance(r, dict) and r.get("name") in generated for r in raw]
    overlay_spec = {k: (_STACK[k][0], k != "notes") for k in _OVERLAY_KEYS}
    rows = _parse_rows(fname, "stack", [r for r, o in zip(raw, is_overlay) if not o], _STACK)
    overlays = _parse_rows(fname, "stack", [r for r, o in zip(raw, is_overlay) if o], overlay_spec)
    for r in rows:
        _check_stack(fname, r, drivers)
        if display is not None:
            r["site_file"] = display
    return rows, overlays


def _merge_overlays(fname: str, generated: dict[str, dict], overlays: list[dict]) -> None:
    _unique(fname, "stack", overlays)
    for o in overlays:
        row = generated[o["name"]]
        row["era"] = o["era"]
        row["source"] = f"{row['source']}; {o['source']}"
        if "notes" in o:
            row["notes"] = o["notes"]


def _order_stacks(fname: str, rows: list[dict]) -> dict[str, Stack]:
    _unique(fname, "stack", rows)
    # Oldest first; a local build (0.10.1+gptoss, 0.20.2+cu129) sorts before its public release.
    ordered = sorted(rows, key=lambda r: (Version(Version(r["vllm"]).public), not Version(r["vllm"]).local))
    return {r["name"]: _build(Stack, r) for r in ordered}


def _release_rows(rows: list[dict]) -> list[dict]:
    """The `[[release]]` rows, oldest first, each with its whole env var set (the file lists them
    in full for the first release and as changes after it)."""
    out, current = [], set()
    for r in sorted(rows, key=lambda r: Version(r["vllm"])):
        if "env_vars" in r:
            current = set(r["env_vars"])
        current = (current | set(r.get("env_vars_added", ()))) - set(r.get("env_vars_removed", ()))
        row = {k: v for k, v in r.items() if k not in ("env_vars", "env_vars_added", "env_vars_removed")}
        out.append({**row, "env_vars": tuple(sorted(current))})
    return out


# The data files the shipped knowledge is read from (signatures.toml is the log scanner's).
DATA_FILES = ("drivers.toml", "releases.toml", "stacks.toml", "gpu_families.toml", "recipes.toml",
              "lifecycle.toml", "models.toml", "attention_sinks.toml")


def _validate(data_dir: Path, docs: Mapping[str, dict]) -> dict[str, Any]:
    """Every row of the data files, parsed and cross-checked, as plain data (dicts, tuples,
    strings: what the cache can hold); KnowledgeError for the first problem."""
    docs = dict(docs)

    def read(fname: str) -> dict[str, list[dict]]:
        tables = _FILES[fname]
        if fname not in docs:
            docs[fname] = _read_toml(data_dir / fname)
        doc = docs[fname]
        unknown = sorted(set(doc) - set(tables))
        if unknown:
            raise KnowledgeError(f"{fname}: {unknown[0]}: unknown table (this file holds [[{']], [['.join(tables)}]])")
        return {t: _parse_rows(fname, t, doc.get(t, []), spec) for t, spec in tables.items()}

    drivers = read("drivers.toml")["cuda"]
    _unique("drivers.toml", "cuda", drivers, key="cuda")
    floors = {r["cuda"]: r["min_driver"] for r in drivers}

    generated = read("releases.toml")
    for r in generated["stack"]:
        _check_stack("releases.toml", r, floors)
        r["generated"] = True
    _unique("releases.toml", "stack", generated["stack"])
    _unique("releases.toml", "release", generated["release"], key="vllm")
    generated_stacks = {r["name"]: r for r in generated["stack"]}
    if "stacks.toml" not in docs:
        docs["stacks.toml"] = _read_toml(data_dir / "stacks.toml")
    hand_rows, overlays = _load_stacks(data_dir / "stacks.toml", floors, doc=docs["stacks.toml"], generated=generated_stacks)
    _merge_overlays("stacks.toml", generated_stacks, overlays)
    stacks = [*generated_stacks.values(), *hand_rows]
    _unique("stacks.toml", "stack", stacks)

    families = read("gpu_families.toml")["family"]
    _unique("gpu_families.toml", "family", families)
    for r in families:
        has_cc, has_gfx = "compute_capability" in r, "gfx" in r
        want = "compute_capability" if r["vendor"] == "nvidia" else "gfx"
        if (r["vendor"] == "nvidia") != has_cc or has_cc == has_gfx:
            raise KnowledgeError(f"gpu_families.toml: {r['_label']}: {want}: {r['vendor']} families need {want} (and only it)")
    family_names = {r["name"]: r for r in families}

    recipes = read("recipes.toml")["recipe"]
    for r in recipes:
        _check_recipe("recipes.toml", r, family_names)

    lifecycles = read("lifecycle.toml")
    for table, rows in lifecycles.items():
        _unique("lifecycle.toml", table, rows)
        for r in rows:
            _check_lifecycle("lifecycle.toml", r)
            r["kind"] = table

    model_tables = read("models.toml")
    _unique("models.toml", "model", model_tables["model"])
    for r in model_tables["model"]:
        _check_model("models.toml", r)
    model_names = {r["name"]: r for r in model_tables["model"]}
    for r in model_tables["memory_fit"]:
        _check_fit("models.toml", r, model_names, family_names)

    sinks = read("attention_sinks.toml")["sinks"]
    backends = {r["name"]: r for r in lifecycles["attention_backend"]}
    archs = {r["arch"] for r in families}
    for r in sinks:
        _check_sinks("attention_sinks.toml", r, backends, archs)

    return {"drivers": drivers, "stacks": stacks, "releases": _release_rows(generated["release"]),
            "families": families, "recipes": recipes, "lifecycles": lifecycles, "models": model_tables["model"],
            "fits": model_tables["memory_fit"], "sinks": sinks}


def _assemble(valid: Mapping[str, Any], extra_stack_files: Iterable[str | Path] = (),
              extra_stack_texts: Mapping[str, str] | None = None) -> Knowledge:
    """The `Knowledge` of validated rows, plus a site's stack files (validated here)."""
    drivers = {r["cuda"]: _build(DriverFloor, r) for r in valid["drivers"]}
    floors = {c: d.min_driver for c, d in drivers.items()}
    stack_rows = list(valid["stacks"])
    extras = [(str(Path(p)), Path(p), None) for p in extra_stack_files]
    extras += [(str(name), None, text) for name, text in (extra_stack_texts or {}).items()]
    for display, path, text in extras:
        extra_rows, _ = _load_stacks(path, floors, display=display, text=text)
        for r in extra_rows:
            if any(r["name"] == s["name"] for s in stack_rows):
                raise KnowledgeError(f"{display}: {r['_label']}: name: duplicate stack {r['name']!r} (already defined)")
        stack_rows += extra_rows
    releases = {r["vllm"]: _build(Release, {**r, "env_vars": frozenset(r["env_vars"])}) for r in valid["releases"]}
    # Read-only views: the default Knowledge is cached and shared by every check.
    return Knowledge(
        stacks=MappingProxyType(_order_stacks("stacks.toml", stack_rows)),
        releases=MappingProxyType(releases),
        gpu_families=MappingProxyType({r["name"]: _build(GpuFamily, r) for r in valid["families"]}),
        recipes=tuple(_build(Recipe, r) for r in valid["recipes"]),
        env_vars=MappingProxyType({r["name"]: _build(Lifecycle, r) for r in valid["lifecycles"]["env_var"]}),
        attention_backends=MappingProxyType({r["name"]: _build(Lifecycle, r) for r in valid["lifecycles"]["attention_backend"]}),
        flags=MappingProxyType({r["name"]: _build(Lifecycle, r) for r in valid["lifecycles"]["flag"]}),
        drivers=MappingProxyType(drivers),
        models=MappingProxyType({r["name"]: _build(Model, r) for r in valid["models"]}),
        memory_fits=tuple(_build(MemoryFit, r) for r in valid["fits"]),
        attention_sinks=tuple(_build(SinkSupport, r) for r in valid["sinks"]),
    )


def load_from(data_dir: Path, extra_stack_files: Iterable[str | Path] = (),
              extra_stack_texts: Mapping[str, str] | None = None, docs: Mapping[str, dict] | None = None) -> Knowledge:
    """Load and validate every file in `data_dir` (tests point this at a broken copy), plus a
    site's stack files: by path, or as {where it came from: TOML text} (a snapshot's copy).
    `docs` holds files already parsed ({file name: TOML document}), read from disk otherwise."""
    return _assemble(_validate(Path(data_dir), docs or {}), extra_stack_files, extra_stack_texts)


# --------------------------------------------------------------------------------------------
# The validated rows, cached by the hashes of the files
# --------------------------------------------------------------------------------------------
# Parsing and validating is most of a load (the generated releases.toml is the largest file), so
# the validated rows are kept in a marshal file named by the SHA-256 of the data files and of the
# code that validates them (this file and rows.py): a changed file is a new name, never a stale
# read. Marshal holds plain data only (dicts, tuples, strings), so reading a tampered cache runs
# no code; an unreadable one is ignored and rewritten.

CACHE_VERSION = 2
_CODE = (Path(__file__), Path(__file__).with_name("rows.py"))


def _validated_rows(data_dir: Path) -> dict[str, Any]:
    """The validated rows of the data files in `data_dir`, from the cache when its key matches."""
    raw = {}
    for path in [*(data_dir / f for f in DATA_FILES), *_CODE]:
        try:
            raw[path.name] = path.read_bytes()
        except FileNotFoundError:
            raise KnowledgeError(f"{path}: no such file") from None
    digest = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in raw.values())).hexdigest()[:32]
    folder = cache_dir()
    cached = folder / f"knowledge-{CACHE_VERSION}-{digest}.marshal" if folder else None
    if cached is not None:
        try:
            valid = marshal.loads(cached.read_bytes())
            if isinstance(valid, dict) and "stacks" in valid:
                return valid
        except (OSError, ValueError, EOFError, TypeError):
            pass
    docs = {}
    tomllib = _toml()
    for fname in DATA_FILES:
        try:
            docs[fname] = tomllib.loads(raw[fname].decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise KnowledgeError(f"{fname}: not valid TOML ({e})") from None
    valid = _validate(data_dir, docs)
    if cached is not None and write_atomic(cached, marshal.dumps(valid)):  # a read-only home: load without it
        for old in cached.parent.glob("knowledge-*.marshal"):  # older data's rows: never read again
            if old != cached:
                try:
                    old.unlink(missing_ok=True)
                except OSError:
                    pass
    return valid


@lru_cache(maxsize=1)
def _load_default() -> Knowledge:
    return _assemble(_validated_rows(DATA_DIR))


def load(extra_stack_files: Iterable[str | Path] = (), extra_stack_texts: Mapping[str, str] | None = None) -> Knowledge:
    """The shipped knowledge (cached), plus a site's own stacks from `extra_stack_files` (paths)
    or `extra_stack_texts` ({the file's path on its host: its TOML text}, as a snapshot records them)."""
    # one path given bare is one file, not a sequence of characters
    extra = (extra_stack_files,) if isinstance(extra_stack_files, (str, Path)) else tuple(extra_stack_files)
    if not extra and not extra_stack_texts:
        return _load_default()
    return _assemble(_validated_rows(DATA_DIR), extra, extra_stack_texts)
