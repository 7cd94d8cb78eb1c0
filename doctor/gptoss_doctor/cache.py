"""Where the doctor keeps what it can compute once and reuse: the knowledge's validated rows
and the installed vLLM's HTTP surface. Each cached file is named and keyed by what it was made
from, holds plain data only (never code), and a file that does not match is ignored and rewritten."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path | None:
    """$GPTOSS_DOCTOR_CACHE, else $XDG_CACHE_HOME/gptoss-doctor, else ~/.cache/gptoss-doctor;
    None when GPTOSS_DOCTOR_CACHE is empty (no cache)."""
    env = os.environ.get("GPTOSS_DOCTOR_CACHE")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gptoss-doctor"


def write_atomic(path: Path, data: bytes) -> bool:
    """Write `data` to `path` through a temporary file and a rename (a reader never sees half a
    file); False when the folder cannot be written (a read-only home: the caller goes on uncached)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return True
    except (OSError, ValueError):
        return False


def read_json(path: Path | None, key: Any) -> Any:
    """The "value" stored in the JSON file at `path` when its "key" equals `key`; else None (no
    file, unreadable, not JSON, another key: a miss, never an error)."""
    if path is None:
        return None
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and doc.get("key") == key:
        return doc.get("value")
    return None


def write_json(path: Path | None, key: Any, value: Any) -> bool:
    if path is None:
        return False
    return write_atomic(path, json.dumps({"key": key, "value": value}, separators=(",", ":")).encode())
