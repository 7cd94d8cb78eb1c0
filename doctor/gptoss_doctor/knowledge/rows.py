"""The knowledge's rows: one frozen record (records.frozen_record) per table of the data files, and version helpers.

Nothing here reads a file (loading.py) or answers a question across rows (queries.py).
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from ..records import field, frozen_record

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


def parse_version(text: str | Version) -> Version:
    """A version, or KnowledgeError naming the text: for callers outside the loader."""
    try:
        return _as_version(text)
    except InvalidVersion:
        raise KnowledgeError(f"{text!r} is not a version (PEP 440, e.g. 0.13.0 or 0.10.1+gptoss)") from None


def _as_version(v: str | Version) -> Version:
    return v if isinstance(v, Version) else Version(str(v).strip())



class _Sourced:
    """Rows carry `source`; `links` turns it into URLs for a finding's links."""

    source: str

    @property
    def links(self) -> list[str]:
        return source_links(self.source)


@frozen_record(kw_only=True)
class Index:
    """A package index by name, so a deploy can map each name to a site mirror."""

    name: str
    url: str


@frozen_record(kw_only=True)
class Stack(_Sourced):
    """What to install for one vLLM build: generated per PyPI release (releases.toml), or
    hand-written (stacks.toml) for builds that are not on PyPI (the launch pre-release, ROCm and
    cu129 wheels from vLLM's own index) and for a site's own stacks."""

    name: str
    vllm: str
    torch: str
    torch_local: str
    triton_dist: str
    triton: str
    python: str
    indexes: tuple[Index, ...]
    requirements: tuple[str, ...]
    era: str
    source: str
    cuda: str | None = None  # the CUDA vLLM and torch are built for; None for a ROCm stack
    min_driver: str | None = None  # lowest NVIDIA driver; None for a ROCm stack
    rocm: str | None = None  # the ROCm a ROCm stack is built for ("7.0")
    min_glibc: str | None = None  # lowest host glibc the wheels need, where narrower than manylinux's
    index_strategy: str | None = None
    prerelease: str | None = None
    torch_backend: str | None = None
    nvcc_requirement: str | None = None  # pip wheel with this CUDA's nvcc; None: no such wheel
    cuda_home_subdir: str | None = None  # where that wheel puts the toolkit, under site-packages
    notes: str = ""
    generated: bool = False  # its facts come from releases.toml (scripts/gen_stacks.py)
    verified: bool = True  # False: its torch/Triton pins were not read from the build's own files
    site_file: str | None = None  # the site's stack file it came from; None: shipped

    @property
    def vendor(self) -> str:
        return "amd" if self.rocm else "nvidia"

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
        """The PyTorch index a `cu<NNN>` / `rocm<X.Y>` torch_backend stands for, named so a deploy
        can mirror it (`pytorch-cu130` -> https://download.pytorch.org/whl/cu130); None for "auto"
        or unset."""
        if not self.torch_backend or not self.torch_backend.startswith(("cu", "rocm")):
            return None
        return Index(name=f"pytorch-{self.torch_backend}", url=f"{PYTORCH_INDEX_ROOT}/{self.torch_backend}")


@frozen_record(kw_only=True)
class Release(_Sourced):
    """What one vLLM release's own files say (generated: releases.toml)."""

    vllm: str
    wheel: str
    requires_python: str
    pins: tuple[str, ...]  # exact (==) Requires-Dist pins on Linux x86_64; an extra's keep its marker
    env_vars: frozenset[str]  # the VLLM_* names of vllm/envs.py
    attention_backends: tuple[str, ...]  # the backend enum's names
    download_kernels: bool  # `vllm download-kernels` exists
    source: str
    nvcc: str | None = None  # the nvcc that built its compiled library ("12.8.93")
    compiled_in: str | None = None  # that library
    cudart: str | None = None  # the libcudart soname major it links ("12")
    main_cuda: str | None = None  # envs.py's VLLM_MAIN_CUDA_VERSION default
    backend_registry: str | None = None

    @property
    def cuda(self) -> str | None:
        return ".".join(self.nvcc.split(".")[:2]) if self.nvcc else self.main_cuda

    def pin(self, name: str) -> str | None:
        """The exact version this release pins `name` to (no extra), else None."""
        prefix = name + "=="
        return next((p[len(prefix):] for p in self.pins if p.startswith(prefix) and ";" not in p), None)


@frozen_record(kw_only=True)
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


@frozen_record(kw_only=True)
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


@frozen_record(kw_only=True)
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


@frozen_record(kw_only=True)
class SinkSupport(_Sourced):
    """Where one attention backend serves gpt-oss's attention sinks, for one vLLM range."""

    backend: str
    vllm: str  # a specifier; the first row of the backend whose range holds the version wins
    archs: tuple[str, ...]  # GPU family archs (gpu_families.toml `arch`); "*": every arch; empty: none
    source: str
    note: str = ""

    def covers(self, vllm_version: str | Version) -> bool:
        return _covers(self.vllm, vllm_version)


@frozen_record(kw_only=True)
class DriverFloor(_Sourced):
    cuda: str
    min_driver: str
    source: str
    compat_min_driver: str | None = None  # minor-version-compatibility floor for the major
    note: str = ""


@frozen_record(kw_only=True)
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

    def kv_bytes_for_context(self, tokens: int, dtype_bytes: int = 2) -> int:
        """KV bytes for one sequence of `tokens`: sliding layers keep at most `sliding_window` tokens."""
        per_layer_token = 2 * self.num_kv_heads * self.head_dim * dtype_bytes
        full_layers = self.layers - self.sliding_layers
        return per_layer_token * (
            full_layers * tokens + self.sliding_layers * min(tokens, self.sliding_window)
        )


@frozen_record(kw_only=True)
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




def _release_of(v: Version) -> Version:
    """The release a build belongs to: local label, pre- and dev-release parts dropped."""
    return Version(v.base_version)
