"""Model weights and tokenizer files: the HF cache, the offline tiktoken files, and an
optional pre-download (disk space checked first) so the service never downloads at start."""

from __future__ import annotations

import os
import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, deploy, operation
from pyinfra.facts.files import File

from . import config as C
from .host import TIKTOKEN_DIR
from .ops import PathsState

# openai_harmony loads these by name from TIKTOKEN_ENCODINGS_BASE instead of downloading.
TIKTOKEN_FILES = ("o200k_base.tiktoken", "cl100k_base.tiktoken")
# Fallback sizes (GiB on disk) when the knowledge has no model row.
WEIGHTS_GIB = {"20b": 13.8, "120b": 65.3}

_FETCH_PY = (
    "import sys,urllib.request;"
    "d=urllib.request.urlopen(sys.argv[1],timeout=120).read();"
    "open(sys.argv[2],'wb').write(d)"
)


@operation()
def tiktoken_files(url_base: str):
    """o200k_base / cl100k_base in TIKTOKEN_DIR, fetched on the host (or pushed from a
    file:// dir on the controller) when missing."""
    state = host.get_fact(PathsState, paths=tuple(f"{TIKTOKEN_DIR}/{f}" for f in TIKTOKEN_FILES), hashes=False)
    missing = [f for f in TIKTOKEN_FILES if not state.get(f"{TIKTOKEN_DIR}/{f}")]
    if not missing:
        host.noop("tiktoken files present")
        return
    for filename in missing:
        dest = f"{TIKTOKEN_DIR}/{filename}"
        src = url_base.rstrip("/") + "/" + filename
        tmp = f"{dest}.tmp"
        if src.startswith("file://"):
            local = src[len("file://"):]
            if not os.path.isfile(local):
                msg = f"gptoss: {local} missing on the controller; fix gptoss_tiktoken_url"
                yield StringCommand("echo", shlex.quote(msg), ">&2", "&&", "false")
                return
            yield FileUploadCommand(local, tmp)
        else:
            yield StringCommand("python3", "-c", shlex.quote(_FETCH_PY), shlex.quote(src), tmp)
        yield StringCommand(f"chmod 0644 {tmp} && mv -f {tmp} {dest}")


def weights_gib(cfg: C.HostConfig, kb) -> float:
    row = (getattr(kb, "models", {}) or {}).get(f"gpt-oss-{cfg.model_size}")
    gib = getattr(row, "weights_gib", None) if row is not None else None
    return float(gib or WEIGHTS_GIB[cfg.model_size])


@operation()
def predownload(cfg: C.HostConfig, need_gib: float):
    """snapshot_download as the service user into HF_HOME, after a free-space check."""
    marker = f"{cfg.hf_home}/.gptoss-downloaded-{cfg.model.replace('/', '--')}"
    if host.get_fact(File, path=marker):
        host.noop(f"{cfg.model} already in {cfg.hf_home}")
        return
    need_kb = int(need_gib * 1.1 * 1024 * 1024)
    yield StringCommand(
        f"avail=$(df -Pk {cfg.hf_home} | awk 'NR==2{{print $4}}'); "
        f"if [ \"$avail\" -lt {need_kb} ]; then echo \"gptoss: {cfg.hf_home} has $((avail/1048576)) GiB free, "
        f"{cfg.model} needs {need_gib * 1.1:.0f} GiB; fix: free space or set gptoss_hf_home to a larger disk\" >&2; exit 1; fi"
    )
    py = (
        "import sys; from huggingface_hub import snapshot_download; "
        "snapshot_download(sys.argv[1], allow_patterns=['*.json','*.safetensors','*.txt','*.model','*.tiktoken'])"
    )
    yield StringCommand(
        f"runuser -u {C.SERVICE_USER} -- env HF_HOME={shlex.quote(cfg.hf_home)} "
        f"{C.CURRENT}/bin/python -c {shlex.quote(py)} {shlex.quote(cfg.model)}"
    )
    yield StringCommand(f"runuser -u {C.SERVICE_USER} -- touch {shlex.quote(marker)}")


@deploy("gptoss model")
def apply(cfg: C.HostConfig, kb=None):
    """The HF cache dir itself is made by the host unit (with the other directories)."""
    changed = []
    if cfg.tiktoken_url:
        changed.append(tiktoken_files(name="tiktoken files (offline harmony vocab)", url_base=cfg.tiktoken_url))
    if cfg.predownload:
        changed.append(predownload(name=f"pre-download {cfg.model}", cfg=cfg, need_gib=weights_gib(cfg, kb)))
    return changed
