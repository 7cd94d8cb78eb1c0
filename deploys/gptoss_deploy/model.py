"""Model weights and tokenizer files: the HF cache, the offline tiktoken files, and an
optional pre-download (disk space checked first) so the service never downloads at start."""

from __future__ import annotations

import json
import os
import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, deploy, operation
from pyinfra.facts.files import File
from pyinfra.operations import files

from gptoss_doctor.layout import HF_TOKEN_FILE, TIKTOKEN_DIR

from . import config as C
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


# Only what vLLM loads: the top-level config, tokenizer, chat template, generation config and
# the safetensors shards with their index. Never original/ (OpenAI's own checkpoint layout) or
# metal/ (Apple's): they triple the download (failure catalog #33 hf-download-all-weight-formats).
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken")
IGNORE_PATTERNS = ("original/*", "metal/*")
# Headroom over the bytes still missing: huggingface_hub writes each file as .incomplete first.
SPACE_MARGIN = 1.1


def weights_gib(cfg: C.HostConfig, kb) -> float:
    """What the model takes on disk per the knowledge (the fallback when the hub cannot tell)."""
    row = kb.model(cfg.model) if hasattr(kb, "model") else None
    gib = getattr(row, "weights_gib", None) if row is not None else None
    return float(gib or WEIGHTS_GIB[cfg.model_size])


def marker_path(cfg: C.HostConfig) -> str:
    """Written after a complete download only; its presence makes a re-run a no-op."""
    return f"{cfg.hf_home}/.gptoss-downloaded-{cfg.model.replace('/', '--')}"


# Runs on the host with the stack venv's Python as the service user. Collect (a dry run lists the
# files the patterns keep and which are not cached yet), judge (free space against what is still
# missing), then download; every failure is one line on stderr, never a traceback.
_PREDOWNLOAD_PY = r"""
import json, os, sys
host, model, hf_home, marker, fallback_gib, margin, allow, ignore = sys.argv[1:9]
allow, ignore, margin = json.loads(allow), json.loads(ignore), float(margin)
endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
GIB = 1024 ** 3

def fail(problem, fix):
    print(f"gptoss: host {host}: {problem}; fix: {fix}", file=sys.stderr)
    sys.exit(1)

def gib(n):
    return f"{n / GIB:.3g} GiB"

def why(e):
    e = e.__cause__ or e  # a dry run's DryRunError hides the HTTP error that caused it
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"

try:
    from huggingface_hub import snapshot_download
except ImportError as e:
    fail(f"the stack venv has no huggingface_hub ({e})", "install the stack again (vLLM depends on it)")
kw = dict(allow_patterns=allow, ignore_patterns=ignore)
try:
    plan = snapshot_download(model, dry_run=True, **kw)
    missing = [f for f in plan if f.will_download]
    need = sum(f.file_size or 0 for f in missing)
    what = f"{len(missing)} of {len(plan)} files still missing"
except TypeError:  # a huggingface_hub without dry_run: count the whole model, as the knowledge has it
    need, what = int(float(fallback_gib) * GIB), "the model's weights per the knowledge"
except Exception as e:
    fail(f"cannot list {model} at {endpoint} ({why(e)})",
         "check that gptoss_hf_endpoint is reachable from the host (and gptoss_hf_token_file for a gated repo)")
try:
    st = os.statvfs(hf_home)
except OSError as e:
    fail(f"cannot read the free space of {hf_home} ({e.strerror})", "create it, or set gptoss_hf_home to a directory")
free = st.f_bavail * st.f_frsize
if need and free < need * margin:
    fail(f"{hf_home} has {gib(free)} free, {model} needs {gib(need * margin)} ({what}, with {margin:g}x headroom)",
         "free space there, or set gptoss_hf_home to a larger disk")
try:
    folder = snapshot_download(model, **kw)
except Exception as e:
    fail(f"downloading {model} from {endpoint} failed ({why(e)})",
         "check the mirror and the free space, then run the deploy again (finished files are kept)")
tmp = marker + ".tmp"
with open(tmp, "w") as f:
    json.dump({"model": model, "snapshot": folder, "endpoint": endpoint}, f)
os.replace(tmp, marker)
print(f"{model}: {what}, now complete in {folder}")
"""


def predownload_env(cfg: C.HostConfig) -> dict[str, str]:
    """The download's environment: online (the service's env file says offline), the mirror."""
    return {
        "HF_HOME": cfg.hf_home,
        "HF_ENDPOINT": cfg.hf_endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HOME": C.STATE_DIR,
    }


def predownload_command(cfg: C.HostConfig, need_gib: float) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in predownload_env(cfg).items())
    args = (cfg.host, cfg.model, cfg.hf_home, marker_path(cfg), f"{need_gib:g}", f"{SPACE_MARGIN:g}",
            json.dumps(list(ALLOW_PATTERNS)), json.dumps(list(IGNORE_PATTERNS)))
    return (f"runuser -u {C.SERVICE_USER} -- env {env} {C.CURRENT}/bin/python -c {shlex.quote(_PREDOWNLOAD_PY)} "
            + " ".join(shlex.quote(a) for a in args))


@operation()
def predownload(cfg: C.HostConfig, need_gib: float):
    """The model's files vLLM loads, into HF_HOME as the service user, after a free-space check;
    the marker is written only once everything is there."""
    if host.get_fact(File, path=marker_path(cfg)):
        host.noop(f"{cfg.model} already in {cfg.hf_home}")
        return
    yield StringCommand(predownload_command(cfg, need_gib))


@deploy("gptoss model")
def apply(cfg: C.HostConfig, kb=None):
    """The HF cache dir itself is made by the host unit (with the other directories)."""
    changed = []
    if cfg.tiktoken_url:
        changed.append(tiktoken_files(name="tiktoken files (offline harmony vocab)", url_base=cfg.tiktoken_url))
    if cfg.hf_token_file:
        # Where huggingface_hub (the pre-download and vLLM) reads a token: never argv, env or logs.
        changed.append(files.put(
            name="Hugging Face token (HF_HOME/token, 0600)", src=cfg.hf_token_file,
            dest=f"{cfg.hf_home}/{HF_TOKEN_FILE}", user=C.SERVICE_USER, group=C.SERVICE_USER, mode="0600",
        ))
    if cfg.predownload:
        changed.append(predownload(name=f"pre-download {cfg.model}", cfg=cfg, need_gib=weights_gib(cfg, kb)))
    return changed
