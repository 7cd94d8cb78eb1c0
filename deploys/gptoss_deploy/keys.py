"""The config as a table: every `gptoss_*` data key once, with its parser, default, fix and the
text that documents it (the "Data keys" part of inventories/cluster.py is `doc_block()`, and a
test keeps the two equal).

Parsing is in table order: a key's parser sees the values parsed before it (`Context.parsed`),
the host's facts and the knowledge. `parse_data` is called by `config.validate` (the deploy's
keys) and `rollout.settings` (the upgrade's); any data key starting with `gptoss_` that is not
in the table stops the run with the nearest real key suggested, before anything changes.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import platform
import re
import stat
import textwrap
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Mapping
from urllib.parse import urlparse

from gptoss_doctor import service_manager
from gptoss_doctor.layout import DEFAULT_BIND, DEFAULT_HF_HOME, DEFAULT_PORT, STACKS_DIR

from . import airgap, host_checks, jit_cache, managed_python
from .fields import (bad, check_abs_path, check_bool, check_int, check_secret_file, check_str_list,
                     check_url, field, read_api_key)

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/"
MODELS = {"20b": "openai/gpt-oss-20b", "120b": "openai/gpt-oss-120b"}
# gpt-oss has 64 attention heads in both sizes; the knowledge's model table wins when it has one.
DEFAULT_HEADS = 64


@dataclass
class Context:
    """What a parser may read besides its own value."""

    host: str
    data: Mapping[str, Any]
    facts: Mapping[str, Any] = dc_field(default_factory=dict)
    kb: Any = None
    parsed: dict = dc_field(default_factory=dict)  # key name -> value, for the keys parsed so far
    installed: bool = False  # the stack is on the host already (an upgrade's rollback): nothing to install

    @property
    def stack(self) -> Any:
        return (getattr(self.kb, "stacks", {}) or {})[self.parsed["gptoss_stack"]]


@dataclass(frozen=True)
class Key:
    name: str
    doc: str  # what inventories/cluster.py says about it (one paragraph)
    parse: Callable[[Context, "Key", Any], Any]  # (context, this key, raw value or None) -> value
    default: Any = None  # what an unset key means (given to the parser)
    fix: str = ""  # the fix of a bad value, where the parser has one fix
    reader: str = "deploy"  # "deploy": deploys/gptoss.py and deploys/upgrade.py; "upgrade": upgrade.py only;
    # "balancer": the hosts of the gptoss_lb group (balancer.py)


# -- parsers of one key each (the generic ones are in fields.py) ---------------------------------


def _int(lo: int, hi: int):
    return lambda ctx, k, v: check_int(ctx.host, k.name, v, k.default, lo, hi, k.fix)


def _bool(ctx: Context, k: Key, v: Any) -> bool:
    return check_bool(ctx.host, k.name, v, k.default)


def _abs_path(ctx: Context, k: Key, v: Any) -> str:
    return check_abs_path(ctx.host, k.name, v, k.default)


def _str_list(ctx: Context, k: Key, v: Any) -> tuple[str, ...]:
    return check_str_list(ctx.host, k.name, v)


def _stack(ctx: Context, k: Key, v: Any) -> str:
    """A stack of the knowledge (its Python range is judged by the next row)."""
    stacks = getattr(ctx.kb, "stacks", {}) or {}
    if not v or v not in stacks:
        raise bad(ctx.host, k.name, v, "not a stack in the knowledge",
                  f"use one of {', '.join(stacks) or '(none loaded)'}, or add one with gptoss_extra_stack_files")
    return v


def _python_mirror(ctx: Context, k: Key, v: Any) -> managed_python.ManagedPython | None:
    """The stack venv's Python, both managed-Python keys judged together (managed_python.check):
    None where the host's python3 is in the stack's range, else uv's managed CPython. The venv's
    Python must then be in the range."""
    spec = str(field(ctx.stack, "python") or "")
    managed = managed_python.check(ctx.host, ctx.data, ctx.facts, spec)
    host_checks.check_python(ctx.host, managed_python.venv_facts(ctx.facts, managed), spec, ctx.parsed["gptoss_stack"])
    return managed


def _python_downloads_json(ctx: Context, k: Key, v: Any) -> str | None:
    managed = ctx.parsed["gptoss_python_mirror"]  # judged by managed_python.check with the mirror
    return managed.downloads_json if managed else None


def _extra_stack_files(ctx: Context, k: Key, v: Any) -> tuple[str, ...]:
    """Files on the controller (config.load_knowledge reads them before any other key is parsed)."""
    files = [] if not v else ([v] if isinstance(v, str) else list(v))
    for f in files:
        if not isinstance(f, str) or not os.path.isfile(os.path.expanduser(f)):
            raise bad(ctx.host, k.name, v, f"{f!r} is not a file on the controller", k.fix)
    return tuple(os.path.expanduser(f) for f in files)


def _gpu_family(ctx: Context, k: Key, v: Any) -> Any:
    """The knowledge's GPU family row: detected from the host's GPUs, or this key without GPUs."""
    return host_checks.detect_family(ctx.host, v, ctx.facts, ctx.kb)


def _install_driver(ctx: Context, k: Key, v: Any) -> bool:
    install = check_bool(ctx.host, k.name, v, k.default)
    vendor = field(ctx.parsed["gptoss_gpu_family"], "vendor") or "nvidia"
    host_checks.check_driver(ctx.host, vendor, ctx.facts, field(ctx.stack, "min_driver"), install)
    return install


def _model(ctx: Context, k: Key, v: Any) -> str:
    """The HF id served."""
    value = k.default if v is None else v
    if isinstance(value, str):
        short = value.lower().removeprefix("openai/").removeprefix("gpt-oss-")
        if short in MODELS:
            return MODELS[short]
    raise bad(ctx.host, k.name, v, "unknown model", k.fix)


def _tensor_parallel(ctx: Context, k: Key, v: Any) -> int:
    tp = check_int(ctx.host, k.name, v, k.default, 1, 1024, k.fix)
    row = ctx.kb.model(ctx.parsed["gptoss_model"]) if hasattr(ctx.kb, "model") else None
    heads = int(field(row, "num_attention_heads") or DEFAULT_HEADS) if row else DEFAULT_HEADS
    gpus = len(ctx.facts.get("gpus") or []) or None
    if heads % tp:
        divisors = [d for d in (1, 2, 4, 8, 16, 32, 64) if heads % d == 0 and d <= max(gpus or 8, 1)]
        raise bad(ctx.host, k.name, v, f"must divide the model's {heads} attention heads",
                  f"use one of {', '.join(map(str, divisors))}")
    if gpus is not None and tp > gpus:
        raise bad(ctx.host, k.name, v, f"larger than the {gpus} GPU(s) present", f"set it to at most {gpus}")
    return tp


def _fraction(ctx: Context, k: Key, v: Any) -> float:
    if v is None:
        return k.default
    try:
        u = float(v)
    except (TypeError, ValueError):
        raise bad(ctx.host, k.name, v, "not a number", k.fix) from None
    if isinstance(v, bool) or not 0.0 < u <= 1.0:
        raise bad(ctx.host, k.name, v, "must be in (0, 1]", k.fix)
    return u


def _max_model_len(ctx: Context, k: Key, v: Any) -> int | None:
    return None if v is None else check_int(ctx.host, k.name, v, 0, 256, 131072, k.fix)


def _ip(ctx: Context, k: Key, v: Any) -> str:
    if v is None:
        return k.default
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise bad(ctx.host, k.name, v, "not an IP address", k.fix) from None


def _api_key_file(ctx: Context, k: Key, v: Any) -> str:
    if not v or not isinstance(v, str):
        raise bad(ctx.host, k.name, v, "the service needs an API key", k.fix)
    path = os.path.expanduser(v)
    try:
        st = os.stat(path)
    except OSError as e:
        raise bad(ctx.host, k.name, v, f"cannot read it ({e.strerror})", "point it at an existing file") from None
    if st.st_mode & stat.S_IROTH:
        raise bad(ctx.host, k.name, v, "the key file is world-readable", f"chmod 600 {path}")
    try:
        text = read_api_key(path)
    except OSError as e:
        raise bad(ctx.host, k.name, v, f"cannot read it ({e.strerror})", "make it readable by the deploying user") from None
    if not text:
        raise bad(ctx.host, k.name, v, "the key file is empty", "write the API key into it")
    if any(c.isspace() for c in text):
        raise bad(ctx.host, k.name, v, "the key contains whitespace", "keep one key on one line")
    return path


def _mirrors(ctx: Context, k: Key, v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise bad(ctx.host, k.name, v, "not a mapping", k.fix)
    out = {}
    # A site's mirror map covers every stack it serves, so names of other stacks' indexes are fine.
    for name, url in v.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", name):
            known = ", ".join(n for n, _ in stack_indexes(ctx.stack))
            raise bad(ctx.host, k.name, v, f"index name {name!r} is not a name", f"use index names such as {known}")
        out[name] = check_url(ctx.host, k.name, url, f"give index {name!r} an http(s) URL").rstrip("/")
    return out


def _uv_source(ctx: Context, k: Key, v: Any) -> str:
    if v == "index":
        return "index"
    if v is None or v == "controller":
        controller, host_arch = platform.machine(), ctx.facts.get("arch")
        if host_arch and host_arch != controller:
            raise bad(ctx.host, k.name, v, f"the controller's uv is {controller}, the host is {host_arch}",
                      f"set gptoss_uv_source to a URL of uv-{host_arch}-unknown-linux-gnu.tar.gz")
        return "controller"
    return check_url(ctx.host, k.name, v, k.fix)


def _cuda_home(ctx: Context, k: Key, v: Any) -> tuple[str | None, str]:
    """(CUDA_HOME, how): see host_checks.choose_cuda_home."""
    vendor = field(ctx.parsed["gptoss_gpu_family"], "vendor") or "nvidia"
    name = ctx.parsed["gptoss_stack"]
    facts = managed_python.venv_facts(ctx.facts, ctx.parsed["gptoss_python_mirror"])  # the venv's Python
    return host_checks.choose_cuda_home(ctx.host, v, vendor, ctx.stack, f"{STACKS_DIR}/{name}", facts)


def _hf_endpoint(ctx: Context, k: Key, v: Any) -> str:
    """http(s) only (a file:// URL is no Hub API), no trailing slash (huggingface_hub appends /api/...)."""
    if v is None:
        return k.default
    parsed = urlparse(v) if isinstance(v, str) else None
    if parsed is None or parsed.scheme not in ("http", "https"):
        raise bad(ctx.host, k.name, v, "not an http(s):// URL", k.fix)
    if not parsed.netloc:
        raise bad(ctx.host, k.name, v, "URL has no host", k.fix)
    if parsed.query or parsed.fragment:
        raise bad(ctx.host, k.name, v, "has a query or fragment", k.fix)
    return v.rstrip("/")


def _hf_token_file(ctx: Context, k: Key, v: Any) -> str | None:
    return check_secret_file(ctx.host, k.name, v, "Hugging Face token")


def _tiktoken_url(ctx: Context, k: Key, v: Any) -> str:
    value = ctx.data.get(k.name, k.default)  # set to None or "" explicitly: skip
    return "" if not value else check_url(ctx.host, k.name, value, k.fix)


def _tool_servers(ctx: Context, k: Key, v: Any) -> tuple[str, ...]:
    if not v:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)):
        raise bad(ctx.host, k.name, v, "not a list", k.fix)
    out = []
    for item in items:
        if item == "demo" or (isinstance(item, str) and re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", item)):
            out.append(item)
        else:
            raise bad(ctx.host, k.name, v, f"{item!r} is neither 'demo' nor host:port", "list MCP servers as 'host:port'")
    # "demo" last: its --tool-server entry follows the MCP servers'
    return tuple(t for t in out if t != "demo") + (("demo",) if "demo" in out else ())


def _wheelhouse(ctx: Context, k: Key, v: Any) -> airgap.Airgap:
    """The three air-gap keys judged together (airgap.check): the wheelhouse, --no-deps, the base Python."""
    stack = ctx.stack
    versions = {n: field(stack, n) for n in ("torch", "torch_local")}
    # an installed stack (the rollback) needs no wheels: the wheelhouse may hold the new stack's only
    requirements = () if ctx.installed else tuple(field(stack, "requirements") or ())
    return airgap.check(ctx.host, ctx.data, ctx.facts, ctx.parsed["gptoss_stack"], versions,
                        str(field(stack, "python") or ""), requirements)


def _no_deps(ctx: Context, k: Key, v: Any) -> bool:
    return ctx.parsed["gptoss_wheelhouse"].no_deps  # judged by airgap.check with the wheelhouse


def _base_python(ctx: Context, k: Key, v: Any) -> str | None:
    return ctx.parsed["gptoss_wheelhouse"].base_python  # judged by airgap.check with the wheelhouse


def _service_manager(ctx: Context, k: Key, v: Any) -> str:
    init = ctx.facts.get("init")  # the InitSystem fact: "systemd" | "none"; unknown without it
    try:
        return service_manager.choose(v, None if init is None else init == "systemd")
    except service_manager.ManagerChoiceError as e:
        raise bad(ctx.host, k.name, v, e.problem, e.fix) from None


def _model_path(ctx: Context, k: Key, v: Any) -> str | None:
    if v is None:
        return None
    path = check_abs_path(ctx.host, k.name, v, k.fix)
    if ctx.parsed["gptoss_predownload"]:  # a local folder is served: a download into the HF cache would be dead weight
        raise bad(ctx.host, "gptoss_predownload", True, "a local model folder (gptoss_model_path) is served, so nothing "
                  "is downloaded", "drop gptoss_predownload, or drop gptoss_model_path to serve from the HF cache")
    return path


def _jit_cache(ctx: Context, k: Key, v: Any) -> Any:
    return jit_cache.check(ctx.host, v)


def _batch(ctx: Context, k: Key, v: Any) -> str:
    s = k.default if v is None else str(v).strip()
    m = re.fullmatch(r"(\d+)(%?)", s)
    if isinstance(v, bool) or not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(1)) > 100):
        raise bad(ctx.host, k.name, v, "not a host count or a percentage", k.fix)
    return s


def _command(ctx: Context, k: Key, v: Any) -> str | None:
    if v is not None and (not isinstance(v, str) or not v.strip()):
        raise bad(ctx.host, k.name, v, "not a command line", k.fix)
    return v.strip() if v else None


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def _front(ctx: Context, k: Key, v: Any) -> bool:
    """"auto": a front exactly where the service answers beyond loopback."""
    if v is None or v == "auto":
        return not is_loopback(ctx.parsed["gptoss_bind_address"])
    return check_bool(ctx.host, k.name, v, False)


def _vllm_address(ctx: Context, k: Key, v: Any) -> str:
    address = _ip(ctx, k, v)
    if ctx.parsed["gptoss_front"] and address in ("0.0.0.0", "::"):
        raise bad(ctx.host, k.name, v, "vLLM would answer on every address, around its front", k.fix)
    return address


def _vllm_port(ctx: Context, k: Key, v: Any) -> int:
    port = check_int(ctx.host, k.name, v, ctx.parsed["gptoss_port"] + 1, 1, 65535, k.fix)
    same_address = ctx.parsed["gptoss_vllm_address"] in (ctx.parsed["gptoss_bind_address"], "0.0.0.0", "::") \
        or ctx.parsed["gptoss_bind_address"] in ("0.0.0.0", "::")
    if ctx.parsed["gptoss_front"] and port == ctx.parsed["gptoss_port"] and same_address:
        raise bad(ctx.host, k.name, v, f"the front listens on port {port} there", "pick another port for vLLM, e.g. 8001")
    return port


def _networks(ctx: Context, k: Key, v: Any) -> tuple[str, ...]:
    items = [] if v is None else ([v] if isinstance(v, str) else v)
    if not isinstance(items, (list, tuple)):
        raise bad(ctx.host, k.name, v, "not a list", k.fix)
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            raise bad(ctx.host, k.name, v, f"{item!r} is not an address or network", k.fix) from None
    return tuple(out)


def _tls_cert(ctx: Context, k: Key, v: Any) -> str | None:
    """A PEM file on the controller with the certificate (chain) and its private key, not world-readable."""
    if v is None or v == "":
        return None
    path = os.path.expanduser(str(v))
    try:
        st, text = os.stat(path), open(path, encoding="utf-8", errors="replace").read()
    except OSError as e:
        raise bad(ctx.host, k.name, v, f"cannot read it ({e.strerror})", k.fix) from None
    if st.st_mode & stat.S_IROTH:
        raise bad(ctx.host, k.name, v, "the file holds a private key and is world-readable", f"chmod 600 {path}")
    if "BEGIN CERTIFICATE" not in text or "PRIVATE KEY-----" not in text:
        raise bad(ctx.host, k.name, v, "not a PEM file with both a certificate and its private key", k.fix)
    return path


def stack_indexes(stack: Any) -> list[tuple[str, str]]:
    """(name, url) pairs of a stack row's indexes, the default index ("pypi") first."""
    out = []
    for i, ix in enumerate(field(stack, "indexes") or []):
        if isinstance(ix, str):
            out.append(("pypi" if "pypi.org" in ix else f"index{i}", ix))
        else:
            out.append((field(ix, "name"), field(ix, "url")))
    if not any(n == "pypi" for n, _ in out):
        out.insert(0, ("pypi", "https://pypi.org/simple"))
    out.sort(key=lambda p: p[0] != "pypi")
    return out


# -- the table (parse order) ---------------------------------------------------------------------

_LB_FIX = "set a shell command run on the controller, e.g. 'lbctl drain {host}', or leave it unset"

TABLE: tuple[Key, ...] = (
    Key("gptoss_stack",
        "REQUIRED. A stack name from the knowledge: every vLLM release (doctor/gptoss_doctor/knowledge/releases.toml, "
        "e.g. \"vllm-0.34.0\"), or a build of stacks.toml (\"vllm-0.34.0-cu129\", \"vllm-0.34.0-rocm\"): "
        "fixes vLLM, torch, Triton, CUDA, the package indexes, the uv index strategy / prerelease / torch backend. "
        "The stack venv runs on the host's python3 where it is in the stack's Python range, else on uv's "
        "managed CPython (gptoss_python_mirror).",
        _stack),
    Key("gptoss_python_mirror",
        "Where the host's python3 misses the stack's Python range (the launch stack needs 3.12; Debian 12 has "
        "3.11), the stack venv is built on uv's managed CPython in /opt/gptoss/python, downloaded from "
        "python-build-standalone's GitHub releases, or from this mirror of them (UV_PYTHON_INSTALL_MIRROR; "
        "http(s) or file://). Needed when air-gapped (gptoss_wheelhouse).",
        _python_mirror),
    Key("gptoss_python_downloads_json",
        "A downloads list in uv's format (UV_PYTHON_DOWNLOADS_JSON_URL) for a site's own CPython archives and "
        "their sha256.",
        _python_downloads_json),
    Key("gptoss_extra_stack_files",
        "Paths (on the controller) of extra stack TOML files: your own pinned stacks, same fields as stacks.toml.",
        _extra_stack_files, fix="list paths of stack TOML files"),
    Key("gptoss_gpu_family",
        "Detected from nvidia-smi / ROCm; set it only for hosts without GPUs (building an image), e.g. \"H100\". "
        "Must match if GPUs exist.",
        _gpu_family),
    Key("gptoss_install_driver",
        "False (default): an NVIDIA driver older than the stack needs stops the run with the fix. True: install the "
        "server driver branch (Ubuntu), then you reboot and run again.",
        _install_driver, default=False),
    Key("gptoss_model", "\"20b\" (default) or \"120b\" (openai/gpt-oss-20b / -120b).",
        _model, default="20b", fix="set gptoss_model to '20b' or '120b'"),
    Key("gptoss_tensor_parallel_size",
        "Default 1. Must divide the model's 64 attention heads and be at most the number of GPUs on the host.",
        _tensor_parallel, default=1, fix="set it to 1, 2, 4 or 8"),
    Key("gptoss_gpu_memory_utilization", "In (0, 1]; default 0.9 (keep < 0.95 for 120b at TP2 on H100).",
        _fraction, default=0.9, fix="set a fraction such as 0.9"),
    Key("gptoss_max_model_len", "Optional context cap (<= 131072).",
        _max_model_len, fix="use at most 131072 (gpt-oss's context)"),
    Key("gptoss_port", f"Default {DEFAULT_PORT}.", _int(1, 65535), default=DEFAULT_PORT, fix="use a TCP port such as 8000"),
    Key("gptoss_bind_address",
        f"Default {DEFAULT_BIND} (put an authenticating proxy in front); the host's own address or 0.0.0.0 to serve "
        "the network.",
        _ip, default=DEFAULT_BIND, fix="use 127.0.0.1 (behind a proxy), this host's address, or 0.0.0.0"),
    Key("gptoss_front",
        "\"auto\" (default: where gptoss_bind_address is not loopback), true or false. A front on the host "
        "(HAProxy from the distribution's packages) answers on gptoss_bind_address:gptoss_port with only "
        "/v1/chat/completions, /v1/completions, /v1/responses, /v1/models (with the key, checked by the front too), "
        "/health and /version; vLLM itself then listens on gptoss_vllm_address:gptoss_vllm_port. False leaves "
        "vLLM's own port facing the network, with routes its key check does not cover (the doctor says so).",
        _front, default="auto", fix="use 'auto', true or false"),
    Key("gptoss_vllm_address",
        "Where vLLM itself listens behind the front (default 127.0.0.1): loopback, or an address only the front "
        "and the balancer reach.",
        _vllm_address, default="127.0.0.1", fix="use 127.0.0.1, or an address only the front reaches"),
    Key("gptoss_vllm_port", "vLLM's own port behind the front (default gptoss_port + 1).",
        _vllm_port, fix="use a TCP port such as 8001"),
    Key("gptoss_metrics_allow",
        "Addresses or networks (CIDR) of the metrics scrapers: the front serves /metrics to them only "
        "(default: to nobody).",
        _networks, fix="list addresses or networks, e.g. ['10.0.5.0/24']"),
    Key("gptoss_api_key_file",
        "REQUIRED. A file ON THE CONTROLLER holding the API key (chmod 600; world-readable files are refused). It "
        "reaches the host as /etc/gptoss/api-key (0640 root:gptoss) and vLLM through an EnvironmentFile: never in "
        "argv, logs or world-readable files.",
        _api_key_file,
        fix="write the key to a file on the controller (chmod 600) and set gptoss_api_key_file to its path"),
    Key("gptoss_index_mirrors",
        "{index-name: url} for mirrors / air-gapped sites. Index names come from the stack (\"pypi\" is the default "
        "index; the doctor's own dependencies come from the \"pypi\" mirror too).",
        _mirrors, fix="set {index-name: url}, e.g. {'pypi': 'https://mirror/simple'}"),
    Key("gptoss_uv_source",
        "\"controller\" (default: push the controller's uv binary), \"index\" (the same uv version's wheel from the "
        "\"pypi\" index or its mirror) or a URL of a uv release tarball (uv-<arch>-unknown-linux-gnu.tar.gz); "
        "\"index\" or a URL when controller and host architectures differ.",
        _uv_source, default="controller",
        fix="use 'controller', 'index' (the uv wheel from the pypi mirror) or a URL of a uv release tarball"),
    Key("gptoss_cuda_home",
        "\"auto\" (default: the stack's pip CUDA toolkit inside its venv where it has one, else /usr/local/cuda if "
        "new enough), \"pip\", \"system\" (/usr/local/cuda, must be >= the stack's CUDA), \"none\" or a path. The "
        "same CUDA_HOME is used to install and to serve.",
        _cuda_home, default="auto"),
    Key("gptoss_hf_home", f"Hugging Face cache, default {DEFAULT_HF_HOME}.", _abs_path, default=DEFAULT_HF_HOME),
    Key("gptoss_predownload",
        "True: download the weights during the deploy (free space is checked first against what is still missing) "
        "and serve with HF_HUB_OFFLINE=1. Only what vLLM loads (config, tokenizer, chat template, safetensors): "
        "never original/ or metal/.",
        _bool, default=False),
    Key("gptoss_hf_endpoint",
        f"The Hugging Face Hub or a site mirror of it (http(s) URL), default {DEFAULT_HF_ENDPOINT}; given to the "
        "pre-download and to the service as HF_ENDPOINT.",
        _hf_endpoint, default=DEFAULT_HF_ENDPOINT,
        fix="use the base URL of the Hugging Face Hub or its mirror, e.g. https://hf-mirror.example.org"),
    Key("gptoss_hf_token_file",
        "A file on the controller (chmod 600) holding a Hugging Face token, for gated repos or mirrors; copied to "
        "<hf_home>/token (0600, service user), never in argv, env files or logs.",
        _hf_token_file),
    Key("gptoss_tiktoken_url",
        "Base URL (or file:// dir on the controller) holding o200k_base.tiktoken and cl100k_base.tiktoken; default "
        "OpenAI's public bucket; \"\" skips (then harmony downloads at first request).",
        _tiktoken_url, default=DEFAULT_TIKTOKEN_URL, fix="use the base URL holding o200k_base.tiktoken, or '' to skip"),
    Key("gptoss_tool_servers",
        "[\"demo\"] (installs gpt-oss, --tool-server demo) and/or MCP servers as \"host:port\"; each must be "
        "reachable from the host.",
        _tool_servers, fix="set a list of 'host:port' MCP servers or ['demo']"),
    Key("gptoss_extra_serve_args", "Extra `vllm serve` arguments, e.g. [\"--max-num-seqs\", \"128\"].", _str_list),
    Key("gptoss_health_timeout_s", "How long the health gate waits for /health (default 900 s).",
        _int(5, 7200), default=900, fix="use seconds, e.g. 900"),
    Key("gptoss_doctor_gate",
        "True (default): `gptoss-doctor` runs after the deploy and an error finding fails that host.",
        _bool, default=True),
    Key("gptoss_wheelhouse",
        "Air-gapped hosts: a directory of wheels ON THE HOST; the stack (and the doctor) install with uv --offline "
        "--no-index from it.",
        _wheelhouse),
    Key("gptoss_wheelhouse_no_deps",
        "True: install exactly the wheelhouse's wheels (--no-deps), for a curated closure; the doctor gate judges "
        "the result.",
        _no_deps, default=False),
    Key("gptoss_base_python",
        "An existing interpreter on the host whose torch build equals the stack's pin (vendor PyTorch images): the "
        "stack venv is layered on it (--system-site-packages). Checked before any change.",
        _base_python),
    Key("gptoss_service_manager",
        "\"auto\" (default: systemd where it runs), \"systemd\", or \"supervisor\" (gptoss-supervise runs the same "
        "unit file on hosts without systemd: containers, some GPU VMs).",
        _service_manager, default="auto"),
    Key("gptoss_model_path",
        "A model folder already on the host (absolute path), served under the HF id of gptoss_model; the service "
        "then runs offline.",
        _model_path, fix="/srv/models/gpt-oss-20b"),
    Key("gptoss_jit_cache",
        "A tar archive ON THE CONTROLLER of a warmed host's JIT caches (Triton, FlashInfer, CUDA, vLLM; same GPU "
        "model and stack), made there with `cd /var/lib/gptoss && tar -czf /tmp/jit.tgz $(ls -d .triton .cache "
        "cache .nv 2>/dev/null)`. Unpacked as the service user once per archive: the first start skips the kernel "
        "builds (208 s -> 60 s to ready on an H200 with --enforce-eager).",
        _jit_cache),
    # read by deploys/upgrade.py only; one inventory drives both
    Key("gptoss_upgrade_batch",
        "Upgrade: hosts restarted together after the canary, a count or a percentage of the fleet (default 1).",
        _batch, default="1", fix="use a count such as 2, or a percentage such as 25%", reader="upgrade"),
    Key("gptoss_keep_stacks",
        "Upgrade: stacks kept on each host, the new one and the rollback one first (default 2).",
        _int(1, 50), default=2, fix="keep at least 1 stack (2 keeps the previous one for rollback)", reader="upgrade"),
    Key("gptoss_lb_drain_cmd",
        "Upgrade: a shell command run on the controller to take a host out of the load balancer ({host} and "
        "{address} substituted); needs gptoss_lb_restore_cmd.",
        _command, fix=_LB_FIX, reader="upgrade"),
    Key("gptoss_lb_restore_cmd", "Upgrade: the command that puts the host back in (same substitutions).",
        _command, fix=_LB_FIX, reader="upgrade"),
    Key("gptoss_download_once",
        "Upgrade: True (default) fetches the new stack's wheels once on the controller and pushes them; False: "
        "every host fetches from its indexes itself.",
        _bool, default=True, reader="upgrade"),
    Key("gptoss_lb_drain_timeout_s",
        "Upgrade behind a gptoss_lb balancer: how long a drained host's requests in flight may take to finish "
        "before its restart (default 300 s).",
        _int(0, 7200), default=300, fix="use seconds, e.g. 300", reader="upgrade"),
    # read on the hosts of the gptoss_lb group (deploys/gptoss_deploy/balancer.py)
    Key("gptoss_lb_port", "Balancer hosts (group gptoss_lb): the one endpoint's port (default 8000).",
        _int(1, 65535), default=DEFAULT_PORT, fix="use a TCP port such as 8000 (443 with TLS)", reader="balancer"),
    Key("gptoss_lb_bind_address", "Balancer hosts: the address the endpoint listens on (default 0.0.0.0).",
        _ip, default="0.0.0.0", fix="use this host's address or 0.0.0.0", reader="balancer"),
    Key("gptoss_lb_tls_cert",
        "Balancer hosts: a PEM file ON THE CONTROLLER with the site's certificate (chain) and its private key "
        "(chmod 600); the endpoint then speaks TLS only. Copied to /etc/haproxy/gptoss.pem (0640 root:haproxy).",
        _tls_cert, fix="concatenate the certificate chain and its key into one PEM file (chmod 600)", reader="balancer"),
    Key("gptoss_lb_check_interval_ms",
        "Balancer hosts: how often each backend's /health is checked (default 1000 ms); one failed check takes "
        "it out of rotation.",
        _int(100, 60000), default=1000, fix="use milliseconds, e.g. 1000", reader="balancer"),
)
KEYS: dict[str, Key] = {k.name: k for k in TABLE}


def check_unknown_keys(host: str, data: Mapping[str, Any]) -> None:
    """A `gptoss_` key the table does not know is a typo: one line with the nearest real key."""
    for name in data:
        if name.startswith("gptoss_") and name not in KEYS:
            # compared without the prefix every key shares, which would make any two keys look alike
            close = difflib.get_close_matches(name[len("gptoss_"):], [k[len("gptoss_"):] for k in KEYS], n=1, cutoff=0.6)
            fix = f"did you mean gptoss_{close[0]}?" if close else "see the data keys in inventories/cluster.py"
            raise bad(host, name, data[name], "unknown key", fix)


def parse_data(ctx: Context, reader: str) -> dict[str, Any]:
    """Every key of `reader` ("deploy" or "upgrade"), parsed in table order into `ctx.parsed`."""
    check_unknown_keys(ctx.host, ctx.data)
    for key in TABLE:
        if key.reader == reader:
            ctx.parsed[key.name] = key.parse(ctx, key, ctx.data.get(key.name))
    return ctx.parsed


def doc_block(indent: int = 2, width: int = 100) -> str:
    """The "Data keys" text of inventories/cluster.py, generated from the table
    (`cd deploys && python -m gptoss_deploy.keys` prints it)."""
    col = indent + max(len(k.name) for k in TABLE) + 2
    lines = []
    for k in TABLE:
        text = textwrap.wrap(k.doc, width=width - col, break_on_hyphens=False)
        lines.append(" " * indent + k.name.ljust(col - indent) + text[0])
        lines += [" " * col + t for t in text[1:]]
    return "\n".join(lines)



if __name__ == "__main__":
    print(doc_block())
