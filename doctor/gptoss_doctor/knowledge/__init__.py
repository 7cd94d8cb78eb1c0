"""The knowledge: what is true about vLLM x gpt-oss, as validated TOML data.

Read by the doctor's checks and by the deploys. Every row of every file carries a `source`.
`load()` parses and validates all files once (cached); a bad file raises `KnowledgeError`
with "<file>: <row>: <field>: <problem>", never a traceback from deep inside.

Versions are compared with `packaging`. A local version such as `0.10.1+gptoss` is a build
of its public version (0.10.1) for range checks; where a build differed from the public
release (the launch-day `+gptoss` wheel had pre-release names), a lifecycle row says so with
`only_in` (the name existed in exactly these builds) or `not_in` (the name was missing from
these builds). See README.md for every field.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 hosts only
    import tomli as tomllib

DATA_DIR = Path(__file__).resolve().parent

__all__ = [
    "DATA_DIR",
    "DriverFloor",
    "GpuFamily",
    "Index",
    "Knowledge",
    "KnowledgeError",
    "Lifecycle",
    "MemoryFit",
    "Model",
    "SinkSupport",
    "Recipe",
    "Stack",
    "load",
    "parse_version",
    "source_links",
]


class KnowledgeError(ValueError):
    """A knowledge file (or a lookup in it) is wrong; the message names file, row and field."""


# --------------------------------------------------------------------------------------------
# The rows
# --------------------------------------------------------------------------------------------

PYPI_INDEX_URL = "https://pypi.org/simple"
PYTORCH_INDEX_ROOT = "https://download.pytorch.org/whl"
RECIPES_REPO = "https://github.com/vllm-project/recipes"

_URL = re.compile(r"https?://[^\s;,)'\"]+")
_RECIPES_REF = re.compile(r"recipes@([0-9a-f]{7,40})(?:\s+((?:[\w.-]+/)+[\w.-]+\.(?:md|yaml|jsx)))?")
_VLLM_REF = re.compile(r"\bvllm#(\d+)")


def source_links(source: str) -> list[str]:
    """Clickable links in a `source` text: URLs as written, `recipes@<sha> <path>` as a GitHub blob
    (or commit) URL, `vllm#<n>` as a vLLM pull request / issue URL. Order kept, duplicates dropped."""
    found: list[tuple[int, str]] = [(m.start(), m.group(0).rstrip(".")) for m in _URL.finditer(source)]
    for m in _RECIPES_REF.finditer(source):
        sha, path = m.group(1), m.group(2)
        found.append((m.start(), f"{RECIPES_REPO}/blob/{sha}/{path}" if path else f"{RECIPES_REPO}/commit/{sha}"))
    for m in _VLLM_REF.finditer(source):
        found.append((m.start(), f"https://github.com/vllm-project/vllm/pull/{m.group(1)}"))
    return list(dict.fromkeys(link for _, link in sorted(found)))


class _Sourced:
    """Rows carry `source`; `links` turns it into URLs for a finding's links."""

    source: str

    @property
    def links(self) -> list[str]:
        return source_links(self.source)


@dataclass(frozen=True, kw_only=True)
class Index:
    """A package index by name, so a deploy can map each name to a site mirror."""

    name: str
    url: str


@dataclass(frozen=True, kw_only=True)
class Stack(_Sourced):
    name: str
    vllm: str
    torch: str
    torch_local: str
    triton_dist: str
    triton: str
    cuda: str
    python: str
    min_driver: str
    indexes: tuple[Index, ...]
    index_strategy: str | None = None
    prerelease: str | None = None
    torch_backend: str | None = None
    requirements: tuple[str, ...]
    era: str
    source: str
    nvcc_requirement: str | None = None  # pip wheel with this CUDA's nvcc; None: no such wheel
    cuda_home_subdir: str | None = None  # where that wheel puts the toolkit, under site-packages
    notes: str = ""
    site_file: str | None = None  # the site's stack file it came from; None: shipped (stacks.toml)

    @property
    def vllm_version(self) -> Version:
        return Version(self.vllm)

    @property
    def torch_build(self) -> str:
        """The full torch version a correct install reports in torch/version.py."""
        return self.torch + self.torch_local

    def index(self, name: str) -> Index | None:
        return next((i for i in self.indexes if i.name == name), None)

    @property
    def torch_backend_index(self) -> Index | None:
        """The PyTorch index a `cu<NNN>` torch_backend stands for, named so a deploy can mirror it
        (`pytorch-cu130` -> https://download.pytorch.org/whl/cu130); None for "auto" or unset."""
        if not self.torch_backend or not self.torch_backend.startswith("cu"):
            return None
        return Index(name=f"pytorch-{self.torch_backend}", url=f"{PYTORCH_INDEX_ROOT}/{self.torch_backend}")


@dataclass(frozen=True, kw_only=True)
class GpuFamily(_Sourced):
    name: str
    vendor: str
    arch: str
    memory_gib: float
    name_patterns: tuple[str, ...]
    source: str
    compute_capability: str | None = None
    gfx: str | None = None
    notes: str = ""

    def matches_name(self, gpu_name: str) -> bool:
        return any(re.search(p, gpu_name, re.IGNORECASE) for p in self.name_patterns)


@dataclass(frozen=True, kw_only=True)
class Recipe(_Sourced):
    """What the recipe prescribes for one family in one vLLM range (first matching row wins)."""

    families: tuple[str, ...]
    vllm: str  # a specifier, e.g. ">=0.10.1,<0.10.2" or "==0.10.1+gptoss"
    source: str
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    serve_flags: tuple[str, ...] = ()
    notes: str = ""
    install_extras: tuple[str, ...] = ()  # extras of the vllm requirement, e.g. vllm[flashinfer]
    image: str | None = None  # the container image the row was written for, when not a PyPI release

    def covers(self, vllm_version: str | Version) -> bool:
        """True if the version, or the release it belongs to (0.14.0rc2.dev5 -> 0.14.0), is in range."""
        return _covers(self.vllm, vllm_version)


def _covers(specifier: str, vllm_version: str | Version) -> bool:
    """True if the version, or the release it belongs to (0.14.0rc2.dev5 -> 0.14.0), is in range."""
    v = _as_version(vllm_version)
    spec = SpecifierSet(specifier)
    if spec.contains(v, prereleases=True):
        return True
    release = Version(v.base_version + (f"+{v.local}" if v.local else ""))
    return spec.contains(release, prereleases=True)


@dataclass(frozen=True, kw_only=True)
class Lifecycle(_Sourced):
    name: str
    kind: str  # "env_var" | "attention_backend" | "flag"
    source: str
    introduced: str | None = None
    deprecated: str | None = None
    removed: str | None = None
    replacement: str | None = None
    note: str = ""
    only_in: tuple[str, ...] = ()  # exact builds that had it (e.g. "0.10.1+gptoss"); nothing else did
    not_in: tuple[str, ...] = ()  # exact builds inside [introduced, removed) that lacked it
    upstream: bool = True  # False: never in upstream vLLM (AMD fork images, other tools' variables)
    default_since: str | None = None  # a flag that became the default from this release
    vendor: str | None = None  # "nvidia" | "amd" when the name only matters on one platform
    package: str = "vllm"  # whose versions introduced/removed count in ("gpt-oss": the tool package)


@dataclass(frozen=True, kw_only=True)
class SinkSupport(_Sourced):
    """Where one attention backend serves gpt-oss's attention sinks, for one vLLM range."""

    backend: str
    vllm: str  # a specifier; the first row of the backend whose range holds the version wins
    archs: tuple[str, ...]  # GPU family archs (gpu_families.toml `arch`); "*": every arch; empty: none
    source: str
    note: str = ""

    def covers(self, vllm_version: str | Version) -> bool:
        return _covers(self.vllm, vllm_version)


@dataclass(frozen=True, kw_only=True)
class DriverFloor(_Sourced):
    cuda: str
    min_driver: str
    source: str
    compat_min_driver: str | None = None  # minor-version-compatibility floor for the major
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class Model(_Sourced):
    name: str
    hf_id: str
    params_b: float
    active_params_b: float
    weights_gib: float
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    layers: int
    hidden_size: int
    vocab_size: int
    num_experts: int
    experts_per_token: int
    sliding_window: int
    sliding_layers: int
    max_model_len: int
    source: str
    weights_gib_max: float | None = None  # the largest loaded size seen (older MoE kernels)
    notes: str = ""

    @property
    def full_layers(self) -> int:
        return self.layers - self.sliding_layers

    def kv_bytes_per_token_full_layers(self, dtype_bytes: int = 2) -> int:
        """What vLLM's KV cache needs per token: K and V of the full-attention layers only
        (sliding layers hold a fixed 128-token window per sequence)."""
        return 2 * self.full_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V for every layer: the worst case, as if no layer were sliding-window."""
        return 2 * self.layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def kv_bytes_for_context(self, tokens: int, dtype_bytes: int = 2) -> int:
        """KV bytes for one sequence of `tokens`: sliding layers keep at most `sliding_window` tokens."""
        per_layer_token = 2 * self.num_kv_heads * self.head_dim * dtype_bytes
        full_layers = self.layers - self.sliding_layers
        return per_layer_token * (
            full_layers * tokens + self.sliding_layers * min(tokens, self.sliding_window)
        )


@dataclass(frozen=True, kw_only=True)
class MemoryFit(_Sourced):
    """A known-good (or known-bad) memory setting for a model on a family at a TP size."""

    model: str
    family: str
    tensor_parallel_size: int
    source: str
    gpu_memory_utilization_min: float | None = None  # at least this, or it OOMs
    gpu_memory_utilization_below: float | None = None  # strictly below this, or it OOMs
    max_num_batched_tokens_max: int | None = None
    serve_flags: tuple[str, ...] = ()
    note: str = ""


# --------------------------------------------------------------------------------------------
# Field validation: one small parser per field kind
# --------------------------------------------------------------------------------------------


class _Bad(Exception):
    """A field's value is wrong; the row walker adds file, row and field."""


def parse_version(text: str | Version) -> Version:
    """A version, or KnowledgeError naming the text: for callers outside the loader."""
    try:
        return _as_version(text)
    except InvalidVersion:
        raise KnowledgeError(f"{text!r} is not a version (PEP 440, e.g. 0.13.0 or 0.10.1+gptoss)") from None


def _as_version(v: str | Version) -> Version:
    return v if isinstance(v, Version) else Version(str(v).strip())


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
    _str(v)
    try:
        Requirement(v)
    except InvalidRequirement as e:
        raise _Bad(f"{v!r} is not a requirement string ({e})") from None
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


def _indexes(v: Any) -> tuple[Index, ...]:
    if not isinstance(v, list) or not v:
        raise _Bad(f"must be a non-empty list of {{name = ..., url = ...}}, got {v!r}")
    out: list[Index] = []
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
        if any(i.name == name for i in out):
            raise _Bad(f"index name {name!r} appears twice")
        out.append(Index(name=name, url=url))
    if not any(i.name == "pypi" for i in out):
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

_STACK: _Spec = {
    "name": (_str, True),
    "vllm": (_version, True),
    "torch": (_version, True),
    "torch_local": (_choice("", "+cu126", "+cu128", "+cu129", "+cu130"), True),
    "triton_dist": (_choice("triton", "pytorch-triton"), True),
    "triton": (_version, True),
    "cuda": (_cuda, True),
    "python": (_specifier, True),
    "min_driver": (_version, True),
    "indexes": (_indexes, True),
    "index_strategy": (_choice("first-index", "unsafe-first-match", "unsafe-best-match"), False),
    "prerelease": (_choice("allow", "if-necessary-or-explicit", "if-necessary", "explicit", "disallow"), False),
    "torch_backend": (_choice("auto", "cu126", "cu128", "cu129", "cu130"), False),
    "requirements": (lambda v: tuple(_requirement(x) for x in _str_list(v)), True),
    "nvcc_requirement": (_requirement, False),
    "cuda_home_subdir": (_str, False),
    "era": (_str, True),
    "notes": (_text, False),
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
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise KnowledgeError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise KnowledgeError(f"{path.name}: not valid TOML ({e})") from None


def _read_toml_text(text: str, display: str) -> dict[str, Any]:
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


def _check_stack(fname: str, r: dict, drivers: dict[str, DriverFloor]) -> None:
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
    if r["cuda"] not in drivers:
        raise bad("cuda", f"{r['cuda']!r} has no row in drivers.toml (known: {', '.join(drivers)})")
    floor = drivers[r["cuda"]].min_driver
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


# --------------------------------------------------------------------------------------------
# The knowledge
# --------------------------------------------------------------------------------------------

STATUSES = ("valid", "deprecated", "removed", "not-yet")


@dataclass(frozen=True, kw_only=True)
class Knowledge:
    stacks: Mapping[str, Stack]
    gpu_families: Mapping[str, GpuFamily]
    recipes: tuple[Recipe, ...]
    env_vars: Mapping[str, Lifecycle]
    attention_backends: Mapping[str, Lifecycle]
    flags: Mapping[str, Lifecycle]
    drivers: Mapping[str, DriverFloor]
    models: Mapping[str, Model]
    memory_fits: tuple[MemoryFit, ...] = field(default=())
    attention_sinks: tuple[SinkSupport, ...] = field(default=())

    # -- stacks ---------------------------------------------------------------------------
    def stack(self, name: str) -> Stack:
        try:
            return self.stacks[name]
        except KeyError:
            raise KnowledgeError(f"unknown stack {name!r}; valid stacks: {', '.join(self.stacks)}") from None

    @property
    def shipped_stacks(self) -> Mapping[str, Stack]:
        """The stacks of stacks.toml (oldest first), without a site's own: what the doctor may
        recommend to anyone."""
        return MappingProxyType({n: s for n, s in self.stacks.items() if s.site_file is None})

    @property
    def latest_stack(self) -> Stack:
        """Today's shipped stack; never a site's extra stack (see `site_stacks`)."""
        return list(self.shipped_stacks.values())[-1]

    @property
    def site_stacks(self) -> Mapping[str, Stack]:
        """The stacks loaded from a site's extra stack files, by name."""
        return MappingProxyType({n: s for n, s in self.stacks.items() if s.site_file is not None})

    def stack_for_vllm(self, vllm_version: str | Version) -> Stack | None:
        """The stack whose vLLM equals this version (local version included), else None."""
        v = parse_version(vllm_version)
        exact = [s for s in self.stacks.values() if s.vllm_version == v]
        if exact:
            return exact[0]
        same_public = [s for s in self.stacks.values() if not s.vllm_version.local and
                       Version(s.vllm_version.public) == Version(v.public)]
        return same_public[0] if same_public else None

    def era_stack(self, vllm_version: str | Version) -> Stack | None:
        """The newest public-release stack at or below this version (a local build such as
        0.10.1+gptoss only answers for itself): the era the version belongs to. Eras are the
        shipped stacks; a site's stack answers only for its exact version."""
        v = parse_version(vllm_version)
        exact = [s for s in self.stacks.values() if s.vllm_version == v]
        if exact:
            return exact[0]
        older = [s for s in self.shipped_stacks.values() if not s.vllm_version.local and s.vllm_version <= v]
        return max(older, key=lambda s: s.vllm_version) if older else None

    # -- GPUs -----------------------------------------------------------------------------
    def family_for_gpu(self, name: str, compute_cap: str | None = None, gfx: str | None = None) -> GpuFamily | None:
        """The family whose name pattern matches; compute capability / gfx break ties or stand alone."""
        cc = _compute_cap(compute_cap)
        by_name = [f for f in self.gpu_families.values() if name and f.matches_name(name)]
        if cc is not None:
            by_name = [f for f in by_name if f.compute_capability in (None, cc)] or by_name
        if gfx is not None:
            by_name = [f for f in by_name if f.gfx in (None, gfx)] or by_name
        if by_name:
            return by_name[0]
        # Unknown product name: only a gfx target names one family on its own (MI300X and MI325X
        # share gfx942, so take the first listed); a compute capability alone is ambiguous.
        if gfx is not None:
            return next((f for f in self.gpu_families.values() if f.gfx == gfx), None)
        return None

    def family(self, name: str) -> GpuFamily:
        try:
            return self.gpu_families[name]
        except KeyError:
            raise KnowledgeError(
                f"unknown GPU family {name!r}; valid families: {', '.join(self.gpu_families)}"
            ) from None

    # -- recipes --------------------------------------------------------------------------
    def recipe(self, family_name: str, vllm_version: str | Version) -> Recipe | None:
        """The first recipe row naming this family whose vLLM range holds the version; None if none."""
        self.family(family_name)  # unknown family -> KnowledgeError
        v = parse_version(vllm_version)
        return next((r for r in self.recipes if family_name in r.families and r.covers(v)), None)

    # -- lifecycle ------------------------------------------------------------------------
    def lifecycle(self, name: str) -> Lifecycle | None:
        for table in (self.env_vars, self.attention_backends, self.flags):
            if name in table:
                return table[name]
        return None

    def lifecycle_status(self, lc: Lifecycle | str, vllm_version: str | Version) -> str:
        """"valid" | "deprecated" | "removed" | "not-yet" for this name on this vLLM (for a row of
        another `package`, such as gpt-oss, pass that package's installed version).

        `lc` is a row or a name (KnowledgeError when no table has it). A version counts as the
        release it belongs to (0.10.1+gptoss -> 0.10.1, 0.14.0rc2.dev5 -> 0.14.0); `only_in` /
        `not_in` name the exact builds that differed (the +gptoss wheel)."""
        if isinstance(lc, str):
            row = self.lifecycle(lc)
            if row is None:
                raise KnowledgeError(f"no lifecycle row for {lc!r} (lifecycle.toml: env_var, attention_backend, flag)")
            lc = row
        v = parse_version(vllm_version)
        release = _release_of(v)
        if not lc.upstream:
            return "removed"
        if lc.only_in:
            builds = [Version(b) for b in lc.only_in]
            if any(v == b for b in builds):
                return "valid"
            return "removed" if release >= min(_release_of(b) for b in builds) else "not-yet"
        if any(v == Version(b) for b in lc.not_in):
            return "not-yet"
        if lc.introduced and release < Version(lc.introduced):
            return "not-yet"
        if lc.removed and release >= Version(lc.removed):
            return "removed"
        if lc.deprecated and release >= Version(lc.deprecated):
            return "deprecated"
        return "valid"

    # -- attention sinks ------------------------------------------------------------------
    def sink_support(self, backend: str, vllm_version: str | Version) -> SinkSupport | None:
        """The row saying on which GPU archs `backend` serves attention sinks in this vLLM; None
        when the knowledge does not know (no row of that backend covers the version)."""
        v = parse_version(vllm_version)
        return next((r for r in self.attention_sinks if r.backend == backend and r.covers(v)), None)

    def serves_sinks(self, backend: str, vllm_version: str | Version, arch: str) -> bool | None:
        """Whether `backend` serves sinks on `arch` in this vLLM; None when unknown."""
        row = self.sink_support(backend, vllm_version)
        if row is None:
            return None
        return "*" in row.archs or arch in row.archs

    # -- drivers --------------------------------------------------------------------------
    def min_driver_for_cuda(self, cuda: str) -> str | None:
        row = self.drivers.get(_major_minor(cuda))
        return row.min_driver if row else None

    def max_cuda_for_driver(self, driver_version: str) -> str | None:
        """The newest CUDA (in drivers.toml) whose toolkit GA driver is <= this driver."""
        d = parse_version(driver_version)
        ok = [c for c, row in self.drivers.items() if Version(row.min_driver) <= d]
        return max(ok, key=lambda c: Version(c)) if ok else None

    # -- models ---------------------------------------------------------------------------
    def model(self, name_or_hf_id: str) -> Model | None:
        """By short name (gpt-oss-20b), HF id (openai/gpt-oss-20b) or a path ending in either."""
        key = name_or_hf_id.rstrip("/")
        for m in self.models.values():
            if key in (m.name, m.hf_id) or key.endswith("/" + m.name):
                return m
        return None

    def memory_fit(self, model: str, family: str, tensor_parallel_size: int) -> MemoryFit | None:
        return next(
            (f for f in self.memory_fits
             if f.model == model and f.family == family and f.tensor_parallel_size == tensor_parallel_size),
            None,
        )


def _compute_cap(cc: object) -> str | None:
    """'9.0' from '9.0', 9, 9.0, '9' or '(9, 0)'-like text; None when absent or unreadable."""
    if cc is None:
        return None
    m = re.match(r"\D*(\d+)(?:\D+(\d+))?", str(cc))
    return f"{int(m.group(1))}.{int(m.group(2) or 0)}" if m else None


def _release_of(v: Version) -> Version:
    """The release a build belongs to: local label, pre- and dev-release parts dropped."""
    return Version(v.base_version)


def _major_minor(cuda: str) -> str:
    parts = str(cuda).strip().split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else str(cuda)


def _load_stacks(path: Path | None, drivers: dict[str, DriverFloor], display: str | None = None,
                 text: str | None = None) -> list[dict]:
    rows = _read_file(path, {"stack": _STACK}, display, text)["stack"]
    fname = display or path.name
    for r in rows:
        _check_stack(fname, r, drivers)
        if display is not None:
            r["site_file"] = display
    return rows


def _order_stacks(fname: str, rows: list[dict]) -> dict[str, Stack]:
    _unique(fname, "stack", rows)
    # Oldest first; a local build (0.10.1+gptoss) sorts before its public release.
    ordered = sorted(rows, key=lambda r: (Version(Version(r["vllm"]).public), not Version(r["vllm"]).local))
    return {r["name"]: _build(Stack, r) for r in ordered}


def load_from(data_dir: Path, extra_stack_files: Iterable[str | Path] = (),
              extra_stack_texts: Mapping[str, str] | None = None) -> Knowledge:
    """Load and validate every file in `data_dir` (tests point this at a broken copy), plus a
    site's stack files: by path, or as {where it came from: TOML text} (a snapshot's copy)."""
    data_dir = Path(data_dir)
    drivers_rows = _read_file(data_dir / "drivers.toml", _FILES["drivers.toml"])["cuda"]
    _unique("drivers.toml", "cuda", drivers_rows, key="cuda")
    drivers = {r["cuda"]: _build(DriverFloor, r) for r in drivers_rows}

    stack_rows = _load_stacks(data_dir / "stacks.toml", drivers)
    extras = [(str(Path(p)), Path(p), None) for p in extra_stack_files]
    extras += [(str(name), None, text) for name, text in (extra_stack_texts or {}).items()]
    for display, path, text in extras:
        extra_rows = _load_stacks(path, drivers, display=display, text=text)
        for r in extra_rows:
            if any(r["name"] == s["name"] for s in stack_rows):
                raise KnowledgeError(f"{display}: {r['_label']}: name: duplicate stack {r['name']!r} (already defined)")
        stack_rows += extra_rows
    stacks = _order_stacks("stacks.toml", stack_rows)

    fam_rows = _read_file(data_dir / "gpu_families.toml", _FILES["gpu_families.toml"])["family"]
    _unique("gpu_families.toml", "family", fam_rows)
    for r in fam_rows:
        has_cc, has_gfx = "compute_capability" in r, "gfx" in r
        want = "compute_capability" if r["vendor"] == "nvidia" else "gfx"
        if (r["vendor"] == "nvidia") != has_cc or has_cc == has_gfx:
            raise KnowledgeError(f"gpu_families.toml: {r['_label']}: {want}: {r['vendor']} families need {want} (and only it)")
    families = {r["name"]: _build(GpuFamily, r) for r in fam_rows}

    recipe_rows = _read_file(data_dir / "recipes.toml", _FILES["recipes.toml"])["recipe"]
    for r in recipe_rows:
        _check_recipe("recipes.toml", r, families)
    recipes = tuple(_build(Recipe, r) for r in recipe_rows)

    lc_tables = _read_file(data_dir / "lifecycle.toml", _FILES["lifecycle.toml"])
    lifecycles: dict[str, dict[str, Lifecycle]] = {}
    for table, rows in lc_tables.items():
        _unique("lifecycle.toml", table, rows)
        for r in rows:
            _check_lifecycle("lifecycle.toml", r)
        lifecycles[table] = {r["name"]: _build(Lifecycle, {**r, "kind": table}) for r in rows}

    model_tables = _read_file(data_dir / "models.toml", _FILES["models.toml"])
    _unique("models.toml", "model", model_tables["model"])
    for r in model_tables["model"]:
        _check_model("models.toml", r)
    models = {r["name"]: _build(Model, r) for r in model_tables["model"]}
    for r in model_tables["memory_fit"]:
        _check_fit("models.toml", r, models, families)
    fits = tuple(_build(MemoryFit, r) for r in model_tables["memory_fit"])

    sink_rows = _read_file(data_dir / "attention_sinks.toml", _FILES["attention_sinks.toml"])["sinks"]
    archs = {f.arch for f in families.values()}
    for r in sink_rows:
        _check_sinks("attention_sinks.toml", r, lifecycles["attention_backend"], archs)
    sinks = tuple(_build(SinkSupport, r) for r in sink_rows)

    # Read-only views: the default Knowledge is cached and shared by every check.
    return Knowledge(
        stacks=MappingProxyType(stacks),
        gpu_families=MappingProxyType(families),
        recipes=recipes,
        env_vars=MappingProxyType(lifecycles["env_var"]),
        attention_backends=MappingProxyType(lifecycles["attention_backend"]),
        flags=MappingProxyType(lifecycles["flag"]),
        drivers=MappingProxyType(drivers),
        models=MappingProxyType(models),
        memory_fits=fits,
        attention_sinks=sinks,
    )


@lru_cache(maxsize=1)
def _load_default() -> Knowledge:
    return load_from(DATA_DIR)


def load(extra_stack_files: Iterable[str | Path] = (), extra_stack_texts: Mapping[str, str] | None = None) -> Knowledge:
    """The shipped knowledge (cached), plus a site's own stacks from `extra_stack_files` (paths)
    or `extra_stack_texts` ({the file's path on its host: its TOML text}, as a snapshot records them)."""
    # one path given bare is one file, not a sequence of characters
    extra = (extra_stack_files,) if isinstance(extra_stack_files, (str, Path)) else tuple(extra_stack_files)
    if not extra and not extra_stack_texts:
        return _load_default()
    return load_from(DATA_DIR, extra, extra_stack_texts)
