"""Questions asked of the loaded knowledge: `Knowledge` and its lookups."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping

from packaging.version import Version

from ..records import field, frozen_record
from .rows import (
    DriverFloor,
    GpuFamily,
    KnowledgeError,
    Lifecycle,
    MemoryFit,
    Model,
    Recipe,
    Release,
    SinkSupport,
    Stack,
    _release_of,
    parse_version,
)

# --------------------------------------------------------------------------------------------
# The knowledge
# --------------------------------------------------------------------------------------------

@frozen_record(kw_only=True)
class Knowledge:
    stacks: Mapping[str, Stack]
    releases: Mapping[str, Release]
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
        """The stacks shipped with the doctor (releases.toml and stacks.toml, oldest first), without
        a site's own: what the doctor may recommend to anyone."""
        return MappingProxyType({n: s for n, s in self.stacks.items() if s.site_file is None})

    @property
    def latest_stack(self) -> Stack:
        """Today's shipped stack: the newest PyPI release's; never a site's extra stack (see
        `site_stacks`) nor a build of vLLM's own indexes (cu129, ROCm)."""
        return [s for s in self.shipped_stacks.values() if not s.vllm_version.local][-1]

    @property
    def site_stacks(self) -> Mapping[str, Stack]:
        """The stacks loaded from a site's extra stack files, by name."""
        return MappingProxyType({n: s for n, s in self.stacks.items() if s.site_file is not None})

    def stack_for_vllm(self, vllm_version: str | Version) -> Stack | None:
        """The stack of this vLLM build: the exact version (local label included), else a stack of
        the same release and the same kind of build (`+rocm700` -> a ROCm stack, `+cu129` -> a
        CUDA 12.9 one, no label -> the PyPI build), else None."""
        v = parse_version(vllm_version)
        exact = [s for s in self.stacks.values() if s.vllm_version == v]
        if exact:
            return exact[0]
        same = [s for s in self.stacks.values() if Version(s.vllm_version.public) == Version(v.public)]
        kind = _build_kind(v.local)
        if kind is None:
            match = [s for s in same if not s.vllm_version.local]
        elif kind == "rocm":
            match = [s for s in same if s.rocm]
        else:  # +cu129: vLLM's build for that CUDA, else the PyPI build when it is that CUDA
            match = [s for s in same if _build_kind(s.vllm_version.local) == kind]
            match = match or [s for s in same if not s.vllm_version.local and s.torch_local == f"+{kind}"]
        return match[0] if match else None

    def release(self, vllm_version: str | Version) -> Release | None:
        """What the release files of this vLLM say (a local build counts as its public release,
        0.20.2+cu129 -> 0.20.2); None when the knowledge has no row for it (a newer release)."""
        v = parse_version(vllm_version)
        return self.releases.get(str(Version(v.public)))

    @property
    def newest_release(self) -> Release:
        return list(self.releases.values())[-1]

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


def _build_kind(local: str | None) -> str | None:
    """What a local version label says about the build: "rocm", "cu129", other labels as they are."""
    if not local:
        return None
    if local.startswith("rocm"):
        return "rocm"
    m = re.match(r"cu\d{3}", local)
    return m.group(0) if m else local


def _major_minor(cuda: str) -> str:
    parts = str(cuda).strip().split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else str(cuda)


