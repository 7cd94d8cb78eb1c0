"""The knowledge: what is true about vLLM x gpt-oss, as validated TOML data.

Read by the doctor's checks and by the deploys. Every row of every file carries a `source`.
`load()` parses and validates all files once (cached); a bad file raises `KnowledgeError`
with "<file>: <row>: <field>: <problem>", never a traceback from deep inside.

By concern: rows.py (one dataclass per table), loading.py (files -> validated rows ->
`Knowledge`, with a cache keyed by the files' hashes), queries.py (`Knowledge`'s lookups).
releases.toml is generated from the vLLM wheels by scripts/gen_stacks.py; README.md says
what each file and field means.
"""

from __future__ import annotations

from .loading import DATA_DIR, load, load_from
from .queries import Knowledge
from .rows import (
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
    parse_version,
    source_links,
)

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
    "Recipe",
    "Release",
    "SinkSupport",
    "Stack",
    "load",
    "load_from",
    "parse_version",
    "source_links",
]
