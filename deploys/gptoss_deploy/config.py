"""One validated, frozen config per host, built before any host is changed.

`validate(name, data, facts, kb)` is pure: host data (a mapping of `gptoss_*` keys), the
read-only facts gathered from the host (see `facts.HostFacts`) and the knowledge go in; a
`HostConfig` or one `ConfigError` comes out. The error is one line naming the host, the key,
the value and the fix, because that is all the operator needs to act on it.

`ConfigError` subclasses pyinfra's `PyinfraError`: the pyinfra CLI prints such an error as
one line (`--> pyinfra error in ...: message`) and exits 1, and since deploy code runs for
every host in the prepare phase, before any operation executes, one bad host stops the run
before anything changes anywhere.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import re
import stat
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

from pyinfra.api.exceptions import PyinfraError

ROOT = "/opt/gptoss"
STACKS_DIR = f"{ROOT}/stacks"
CURRENT = f"{ROOT}/current"
BIN_DIR = f"{ROOT}/bin"
DOCTOR_DIR = f"{ROOT}/doctor"
ETC = "/etc/gptoss"
ENV_FILE = f"{ETC}/gptoss.env"
KEY_FILE = f"{ETC}/api-key"
MANIFEST = f"{ETC}/manifest.json"
STATE_DIR = "/var/lib/gptoss"
UNIT = "gptoss-vllm.service"
SERVICE_USER = "gptoss"
MARKER = ".gptoss-complete"
STACKS_D = f"{ETC}/stacks.d"  # the site's extra stack files, so the doctor on the host knows them

DEFAULT_PORT = 8000
DEFAULT_BIND = "127.0.0.1"
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
DEFAULT_HF_HOME = f"{STATE_DIR}/hf"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
HF_TOKEN_FILE = "token"  # in HF_HOME: where huggingface_hub (and so vLLM) reads a token by default
DEFAULT_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/"
DEFAULT_PYPI = "https://pypi.org/simple"
DEFAULT_HEALTH_TIMEOUT_S = 900
MODELS = {"20b": "openai/gpt-oss-20b", "120b": "openai/gpt-oss-120b"}
# gpt-oss has 64 attention heads in both sizes; the knowledge's model table wins when it has one.
DEFAULT_HEADS = 64
SUPPORTED_OS = ("debian", "ubuntu")

# Every data key this deploy reads; anything else starting with gptoss_ is a typo.
KEYS = (
    "gptoss_stack",
    "gptoss_extra_stack_files",
    "gptoss_gpu_family",
    "gptoss_model",
    "gptoss_tensor_parallel_size",
    "gptoss_gpu_memory_utilization",
    "gptoss_max_model_len",
    "gptoss_port",
    "gptoss_bind_address",
    "gptoss_api_key_file",
    "gptoss_index_mirrors",
    "gptoss_uv_source",
    "gptoss_cuda_home",
    "gptoss_hf_home",
    "gptoss_predownload",
    "gptoss_hf_endpoint",
    "gptoss_hf_token_file",
    "gptoss_tiktoken_url",
    "gptoss_tool_servers",
    "gptoss_extra_serve_args",
    "gptoss_install_driver",
    "gptoss_health_timeout_s",
    "gptoss_doctor_gate",
    # air-gapped installs (airgap.py), hosts without systemd (supervisor.py), a local model folder
    "gptoss_wheelhouse",
    "gptoss_wheelhouse_no_deps",
    "gptoss_base_python",
    "gptoss_service_manager",
    "gptoss_model_path",
    "gptoss_jit_cache",  # jit_cache.py: JIT caches carried from a warmed host
    "gptoss_python_mirror",  # managed_python.py: uv's CPython where the host's python3 misses the stack's range
    "gptoss_python_downloads_json",
)


class ConfigError(PyinfraError):
    """Bad inventory data: one line, host + key + value + fix."""


@dataclass(frozen=True)
class Index:
    name: str
    url: str  # after mirrors


@dataclass(frozen=True)
class HostConfig:
    host: str
    stack: str
    vllm: str
    stack_versions: dict  # what the knowledge says this stack installs (for the manifest)
    family: str
    vendor: str  # "nvidia" | "amd"
    model: str  # the HF id served
    model_size: str  # "20b" | "120b"
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int | None
    port: int
    bind_address: str
    api_key_file: str  # on the controller
    indexes: tuple[Index, ...]  # the stack's indexes, mirrors applied; first is the default
    index_strategy: str | None
    prerelease: str | None
    torch_backend: str | None
    requirements: tuple[str, ...]
    nvcc_requirement: str | None
    cuda_home: str | None  # the path the service and the install use; None on ROCm
    cuda_home_source: str  # "pip" | "system" | "path" | "rocm"
    python: str  # path of the interpreter the venv is built from
    python_spec: str
    uv_source: str  # "controller" or a URL of a uv release tarball
    pypi_url: str  # where the doctor's dependencies come from
    hf_home: str
    predownload: bool
    tiktoken_url: str  # "" = skip
    tool_servers: tuple[str, ...]
    extra_serve_args: tuple[str, ...]
    env: dict  # recipe env (+ deploy env), written to the EnvironmentFile
    serve_flags: tuple[str, ...]  # recipe flags
    recipe_source: str
    install_driver: bool
    min_driver: str | None
    health_timeout_s: int
    doctor_gate: bool
    nvswitch_count: int
    driver_version: str | None
    gpu_count: int
    gpus: tuple = ()  # as detected: [{"name", "compute_cap", "persistence_mode", ...}]
    missing_packages: tuple[str, ...] = ()
    extra_stack_files: tuple[str, ...] = ()  # on the controller; copied to STACKS_D for the doctor
    warnings: tuple[str, ...] = field(default=())
    airgap: Any = None  # airgap.Airgap: wheelhouse / base Python, or None (indexes, today's behaviour)
    service_manager: str = "systemd"  # or "supervisor" (gptoss-supervise runs the same unit)
    model_path: str | None = None  # a model folder on the host, served under the HF id
    hf_endpoint: str = DEFAULT_HF_ENDPOINT  # the Hugging Face Hub or a mirror of it (HF_ENDPOINT)
    hf_token_file: str | None = None  # on the controller; copied to HF_HOME/token (0600, service user)
    jit_cache: Any = None  # jit_cache.JitCache: an archive of a warmed host's JIT caches, or None
    managed_python: Any = None  # managed_python.ManagedPython: the stack venv's uv-managed CPython, or None

    @property
    def venv(self) -> str:
        return f"{STACKS_DIR}/{self.stack}"

    @property
    def stack_marker(self) -> str:
        return f"{self.venv}/{MARKER}"

    def serve_argv(self) -> list[str]:
        """The service's argv: the venv of `current`, never the key (that is in the env)."""
        argv = [
            f"{CURRENT}/bin/vllm",
            "serve",
            self.model_path or self.model,
            "--host",
            self.bind_address,
            "--port",
            str(self.port),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:g}",
        ]
        if self.model_path:
            argv += ["--served-model-name", self.model]
        if self.max_model_len:
            argv += ["--max-model-len", str(self.max_model_len)]
        argv += list(self.serve_flags)
        if self.tool_servers:
            argv += ["--tool-server", ",".join(self.tool_servers)]
        argv += list(self.extra_serve_args)
        return argv


# -- one-line errors ---------------------------------------------------------------------------


def bad(host: str, key: str, value: Any, problem: str, fix: str) -> ConfigError:
    shown = "<unset>" if value is None else repr(value)
    return ConfigError(f"host {host}: {key}={shown}: {problem}; fix: {fix}")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Knowledge rows may be dataclasses or dicts; read either."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


# -- small validators (pure) -------------------------------------------------------------------


def check_int(host: str, key: str, value: Any, default: int, lo: int, hi: int, fix: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise bad(host, key, value, "not an integer", fix)
    try:
        n = int(value)
    except ValueError:
        raise bad(host, key, value, "not an integer", fix) from None
    if not lo <= n <= hi:
        raise bad(host, key, value, f"out of range {lo}..{hi}", fix)
    return n


def check_bool(host: str, key: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise bad(host, key, value, "not a boolean", f"set {key} to True or False")


def check_url(host: str, key: str, value: Any, fix: str) -> str:
    if not isinstance(value, str) or urlparse(value).scheme not in ("http", "https", "file"):
        raise bad(host, key, value, "not an http(s):// or file:// URL", fix)
    if not urlparse(value).netloc and urlparse(value).scheme != "file":
        raise bad(host, key, value, "URL has no host", fix)
    return value


def check_hf_endpoint(host: str, value: Any) -> str:
    """The Hub or a mirror of it, for huggingface_hub's HF_ENDPOINT: http(s) only (a file:// URL
    is no Hub API), no trailing slash (huggingface_hub appends /api/... to it)."""
    key = "gptoss_hf_endpoint"
    if value is None:
        return DEFAULT_HF_ENDPOINT
    fix = "use the base URL of the Hugging Face Hub or its mirror, e.g. https://hf-mirror.example.org"
    parsed = urlparse(value) if isinstance(value, str) else None
    if parsed is None or parsed.scheme not in ("http", "https"):
        raise bad(host, key, value, "not an http(s):// URL", fix)
    if not parsed.netloc:
        raise bad(host, key, value, "URL has no host", fix)
    if parsed.query or parsed.fragment:
        raise bad(host, key, value, "has a query or fragment", fix)
    return value.rstrip("/")


def check_secret_file(host: str, key: str, value: Any, what: str) -> str | None:
    """An optional secret kept in a file on the controller: readable, not world-readable, one token."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad(host, key, value, "not a path", f"set {key} to the path of a file holding the {what}")
    path = os.path.expanduser(value)
    try:
        st = os.stat(path)
        text = read_api_key(path)
    except OSError as e:
        raise bad(host, key, value, f"cannot read it ({e.strerror})", "point it at an existing, readable file") from None
    if st.st_mode & stat.S_IROTH:
        raise bad(host, key, value, f"the {what} file is world-readable", f"chmod 600 {path}")
    if not text or any(c.isspace() for c in text):
        raise bad(host, key, value, f"the file must hold one {what} on one line", f"write only the {what} into {path}")
    return path


def check_model(host: str, value: Any) -> tuple[str, str]:
    key = "gptoss_model"
    v = "20b" if value is None else value
    if isinstance(v, str):
        short = v.lower().removeprefix("openai/").removeprefix("gpt-oss-")
        if short in MODELS:
            return short, MODELS[short]
    raise bad(host, key, value, "unknown model", "set gptoss_model to '20b' or '120b'")


def check_tp(host: str, value: Any, heads: int, gpus: int | None) -> int:
    key = "gptoss_tensor_parallel_size"
    tp = check_int(host, key, value, 1, 1, 1024, "set it to 1, 2, 4 or 8")
    if heads % tp:
        divisors = [d for d in (1, 2, 4, 8, 16, 32, 64) if heads % d == 0 and d <= max(gpus or 8, 1)]
        raise bad(
            host, key, value, f"must divide the model's {heads} attention heads",
            f"use one of {', '.join(map(str, divisors))}",
        )
    if gpus is not None and tp > gpus:
        raise bad(
            host, key, value, f"larger than the {gpus} GPU(s) present",
            f"set it to at most {gpus}",
        )
    return tp


def check_utilization(host: str, value: Any) -> float:
    key = "gptoss_gpu_memory_utilization"
    if value is None:
        return DEFAULT_GPU_MEMORY_UTILIZATION
    try:
        u = float(value)
    except (TypeError, ValueError):
        raise bad(host, key, value, "not a number", "set a fraction such as 0.9") from None
    if isinstance(value, bool) or not 0.0 < u <= 1.0:
        raise bad(host, key, value, "must be in (0, 1]", "set a fraction such as 0.9")
    return u


def check_bind(host: str, value: Any) -> str:
    key = "gptoss_bind_address"
    if value is None:
        return DEFAULT_BIND
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise bad(
            host, key, value, "not an IP address",
            "use 127.0.0.1 (behind a proxy), this host's address, or 0.0.0.0",
        ) from None


def check_api_key_file(host: str, value: Any) -> str:
    key = "gptoss_api_key_file"
    if not value or not isinstance(value, str):
        raise bad(
            host, key, value, "the service needs an API key",
            "write the key to a file on the controller (chmod 600) and set gptoss_api_key_file to its path",
        )
    path = os.path.expanduser(value)
    try:
        st = os.stat(path)
    except OSError as e:
        raise bad(host, key, value, f"cannot read it ({e.strerror})", "point it at an existing file") from None
    if st.st_mode & stat.S_IROTH:
        raise bad(host, key, value, "the key file is world-readable", f"chmod 600 {path}")
    try:
        text = read_api_key(path)
    except OSError as e:
        raise bad(host, key, value, f"cannot read it ({e.strerror})", "make it readable by the deploying user") from None
    if not text:
        raise bad(host, key, value, "the key file is empty", "write the API key into it")
    if any(c.isspace() for c in text):
        raise bad(host, key, value, "the key contains whitespace", "keep one key on one line")
    return path


def read_api_key(path: str) -> str:
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        return f.read().strip()


def check_mirrors(host: str, value: Any, known: Sequence[str]) -> dict[str, str]:
    key = "gptoss_index_mirrors"
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad(host, key, value, "not a mapping", "set {index-name: url}, e.g. {'pypi': 'https://mirror/simple'}")
    out = {}
    # A site's mirror map covers every stack it serves, so names of other stacks' indexes are fine.
    for name, url in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*", name):
            raise bad(host, key, value, f"index name {name!r} is not a name", f"use index names such as {', '.join(known)}")
        out[name] = check_url(host, key, url, f"give index {name!r} an http(s) URL").rstrip("/")
    return out


def torch_backend_index(backend: str | None, mirrors: Mapping[str, str]) -> str | None:
    """uv's --torch-backend=cu<NNN> always fetches from download.pytorch.org; where the site
    mirrors that index (named pytorch-cu<NNN>), the mirror is used as an index instead."""
    if backend and backend not in ("auto",):
        return mirrors.get(f"pytorch-{backend}")
    return None


def check_uv_source(host: str, value: Any, controller_arch: str, host_arch: str | None) -> str:
    key = "gptoss_uv_source"
    if value == "index":
        return "index"
    if value is None or value == "controller":
        if host_arch and host_arch != controller_arch:
            raise bad(
                host, key, value, f"the controller's uv is {controller_arch}, the host is {host_arch}",
                f"set gptoss_uv_source to a URL of uv-{host_arch}-unknown-linux-gnu.tar.gz",
            )
        return "controller"
    return check_url(host, key, value, "use 'controller', 'index' (the uv wheel from the pypi mirror) or a URL of a uv release tarball")


def check_abs_path(host: str, key: str, value: Any, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or not value.startswith("/") or ".." in value.split("/"):
        raise bad(host, key, value, "not an absolute path", f"use an absolute path such as {default}")
    return value.rstrip("/") or "/"


def check_tool_servers(host: str, value: Any) -> tuple[str, ...]:
    key = "gptoss_tool_servers"
    if not value:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise bad(host, key, value, "not a list", "set a list of 'host:port' MCP servers or ['demo']")
    out = []
    for item in items:
        if item == "demo" or (isinstance(item, str) and re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", item)):
            out.append(item)
        else:
            raise bad(host, key, value, f"{item!r} is neither 'demo' nor host:port", "list MCP servers as 'host:port'")
    return tuple(out)


def check_str_list(host: str, key: str, value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise bad(host, key, value, "not a list of strings", f"set {key} to a list like ['--max-num-seqs', '128']")
    if any(v.startswith("--api-key") for v in value):
        raise bad(host, key, value, "the API key never goes on the command line", "use gptoss_api_key_file")
    return tuple(value)


def sibling_keys() -> tuple[str, ...]:
    """Keys the upgrade (deploys/upgrade.py) reads: one inventory drives both, so they are fine here."""
    try:
        from . import rollout
    except ImportError:
        return ()
    return tuple(getattr(rollout, "KEYS", ()))


def check_unknown_keys(host: str, data: Mapping[str, Any]) -> None:
    known = KEYS + sibling_keys()
    for k in data:
        if k.startswith("gptoss_") and k not in known:
            close = [x for x in KEYS if x[7:10] == k[7:10]]
            raise bad(host, k, data[k], "unknown key", f"did you mean {close[0]}?" if close else f"use one of {', '.join(KEYS)}")


# -- facts-dependent checks --------------------------------------------------------------------


def check_os(host: str, facts: Mapping[str, Any]) -> None:
    os_id = facts.get("os_id") or "unknown"
    like = (facts.get("os_like") or "").split()
    if os_id not in SUPPORTED_OS and not any(x in SUPPORTED_OS for x in like):
        raise ConfigError(
            f"host {host}: operating system {os_id!r} ({facts.get('os_pretty') or '?'}) is unsupported: "
            f"this deploy uses apt; fix: use Debian or Ubuntu hosts, or leave this host out of the inventory"
        )


def detect_family(host: str, data_family: Any, facts: Mapping[str, Any], kb: Any) -> Any:
    """The GPU family: from the GPUs on the host, or `gptoss_gpu_family` where there are none."""
    key = "gptoss_gpu_family"
    families = getattr(kb, "gpu_families", {}) or {}
    names = ", ".join(families) or "none known"
    gpus = facts.get("gpus") or []
    detected = []
    for g in gpus:
        fam = kb.family_for_gpu(g.get("name", ""), compute_cap=g.get("compute_cap"), gfx=g.get("gfx"))
        if fam is None:
            raise ConfigError(
                f"host {host}: GPU {g.get('name') or g.get('gfx')!r} matches no GPU family in the knowledge; "
                f"fix: add it to the knowledge's GPU families, or set gptoss_gpu_family to one of {names}"
            )
        detected.append(fam)
    if detected:
        found = {_get(f, "name") for f in detected}
        if len(found) > 1:
            raise ConfigError(
                f"host {host}: mixed GPU families {sorted(found)}; fix: serve one family per host "
                f"(use CUDA_VISIBLE_DEVICES outside this deploy)"
            )
        fam = detected[0]
        if data_family is not None and data_family != _get(fam, "name"):
            raise bad(
                host, key, data_family, f"the host has {_get(fam, 'name')} GPUs",
                "remove gptoss_gpu_family (it is detected) or fix it",
            )
        return fam
    if data_family is None:
        raise bad(
            host, key, data_family, "no GPU found (no nvidia-smi, no ROCm devices)",
            f"install the GPU driver, or for an image build without GPUs set gptoss_gpu_family to one of {names}",
        )
    if data_family not in families:
        raise bad(host, key, data_family, "unknown GPU family", f"use one of {names}")
    return families[data_family]


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v or "")[:3])


def check_driver(host: str, vendor: str, facts: Mapping[str, Any], min_driver: str | None, install: bool) -> None:
    if vendor != "nvidia" or not min_driver:
        return
    drv = facts.get("driver_version")
    if not drv or install:
        return  # no GPU (image build) or we install it
    if _version_tuple(drv) < _version_tuple(min_driver):
        raise ConfigError(
            f"host {host}: NVIDIA driver {drv} is older than {min_driver}, which this stack needs; "
            f"fix: upgrade the driver to >= {min_driver} and reboot, or set gptoss_install_driver=True"
        )


def check_python(host: str, facts: Mapping[str, Any], spec: str, stack: str) -> str:
    from packaging.specifiers import SpecifierSet

    ver = facts.get("python_version")
    path = facts.get("python_path") or "/usr/bin/python3"
    if ver and spec and ver not in SpecifierSet(spec):
        raise ConfigError(
            f"host {host}: python3 {ver} ({path}) is outside stack {stack}'s Python range {spec}; "
            f"fix: install a python3 in that range as /usr/bin/python3, or pick a stack that supports {ver}"
        )
    return path


def choose_cuda_home(host: str, value: Any, vendor: str, stack: Any, venv: str, facts: Mapping[str, Any], py: str) -> tuple[str | None, str]:
    """(CUDA_HOME, how): "pip" (the stack's nvcc wheel in its venv), "system" (/usr/local/cuda,
    at least the stack's CUDA), a path, or (None, "none") when there is neither; the default
    "auto" takes the first that exists. The same path is used to install and to serve."""
    key = "gptoss_cuda_home"
    if vendor == "amd":
        return None, "rocm"
    need = _get(stack, "cuda") or ""
    sub = _get(stack, "cuda_home_subdir")
    has_pip = bool(_get(stack, "nvcc_requirement") and sub)
    have = facts.get("system_cuda_version")
    system_ok = bool(have) and (not need or _version_tuple(have) >= _version_tuple(need))
    choice = "auto" if value is None else value
    if choice == "auto":
        choice = "pip" if has_pip else "system" if system_ok else "none"
        if choice == "none":
            return None, "none"
    if choice == "pip":
        if not has_pip:
            raise bad(
                host, key, value, f"stack {_get(stack, 'name')} has no pip CUDA toolkit (CUDA {need} has no nvcc wheel)",
                f"install NVIDIA's toolkit (apt cuda-nvcc-{need.replace('.', '-')}) and set gptoss_cuda_home='system'",
            )
        pyver = ".".join((facts.get("python_version") or "").split(".")[:2])
        if not pyver:
            raise bad(host, key, value, "python3 not found on the host, so the venv layout is unknown",
                      "install python3 first (apt-get install python3)")
        return f"{venv}/lib/python{pyver}/site-packages/{sub.strip('/')}", "pip"
    if choice == "system":
        if not have:
            raise bad(host, key, value, "no CUDA toolkit at /usr/local/cuda", "install one, or use 'auto'")
        if not system_ok:
            raise bad(host, key, value, f"system CUDA {have} is older than the {need} this stack needs", "upgrade the toolkit or use 'auto'")
        return "/usr/local/cuda", "system"
    if choice == "none":
        return None, "none"
    return check_abs_path(host, key, value, "/usr/local/cuda"), "path"


# -- the whole host ----------------------------------------------------------------------------


def stack_indexes(stack: Any) -> list[tuple[str, str]]:
    """(name, url) pairs, the default index first."""
    out = []
    for i, ix in enumerate(_get(stack, "indexes") or []):
        if isinstance(ix, str):
            out.append(("pypi" if "pypi.org" in ix else f"index{i}", ix))
        else:
            out.append((_get(ix, "name"), _get(ix, "url")))
    if not any(n == "pypi" for n, _ in out):
        out.insert(0, ("pypi", DEFAULT_PYPI))
    out.sort(key=lambda p: p[0] != "pypi")
    return out


def validate(name: str, data: Mapping[str, Any], facts: Mapping[str, Any], kb: Any) -> HostConfig:
    check_unknown_keys(name, data)
    check_os(name, facts)

    stack_name = data.get("gptoss_stack")
    stacks = getattr(kb, "stacks", {}) or {}
    if not stack_name or stack_name not in stacks:
        raise bad(
            name, "gptoss_stack", stack_name, "not a stack in the knowledge",
            f"use one of {', '.join(stacks) or '(none loaded)'}, or add one with gptoss_extra_stack_files",
        )
    stack = stacks[stack_name]
    vllm = _get(stack, "vllm")

    family = detect_family(name, data.get("gptoss_gpu_family"), facts, kb)
    vendor = _get(family, "vendor") or "nvidia"
    install_driver = check_bool(name, "gptoss_install_driver", data.get("gptoss_install_driver"), False)
    min_driver = _get(stack, "min_driver")
    check_driver(name, vendor, facts, min_driver, install_driver)

    size, model = check_model(name, data.get("gptoss_model"))
    model_row = kb.model(model) if hasattr(kb, "model") else None
    heads = int(_get(model_row, "num_attention_heads") or DEFAULT_HEADS) if model_row else DEFAULT_HEADS
    gpus = facts.get("gpus") or []
    tp = check_tp(name, data.get("gptoss_tensor_parallel_size"), heads, len(gpus) if gpus else None)
    util = check_utilization(name, data.get("gptoss_gpu_memory_utilization"))
    max_len = data.get("gptoss_max_model_len")
    if max_len is not None:
        max_len = check_int(name, "gptoss_max_model_len", max_len, 0, 256, 131072, "use at most 131072 (gpt-oss's context)")
    port = check_int(name, "gptoss_port", data.get("gptoss_port"), DEFAULT_PORT, 1, 65535, "use a TCP port such as 8000")
    bind = check_bind(name, data.get("gptoss_bind_address"))
    key_file = check_api_key_file(name, data.get("gptoss_api_key_file"))

    indexes = stack_indexes(stack)
    mirrors = check_mirrors(name, data.get("gptoss_index_mirrors"), [n for n, _ in indexes])
    mapped = tuple(Index(n, mirrors.get(n, u)) for n, u in indexes)
    torch_backend, index_strategy = _get(stack, "torch_backend"), _get(stack, "index_strategy")
    backend_mirror = torch_backend_index(torch_backend, mirrors)
    if backend_mirror:
        # Best match across indexes picks the +cu<NNN> local build over PyPI's plain one, as
        # --torch-backend would, without uv reaching download.pytorch.org.
        mapped += (Index(f"pytorch-{torch_backend}", backend_mirror),)
        torch_backend, index_strategy = None, index_strategy or "unsafe-best-match"
    uv_source = check_uv_source(name, data.get("gptoss_uv_source"), platform.machine(), facts.get("arch"))

    py_spec = str(_get(stack, "python") or "")
    from . import managed_python as managed_python_mod

    managed = managed_python_mod.check(name, data, facts, py_spec)
    python = check_python(name, managed_python_mod.venv_facts(facts, managed), py_spec, stack_name)
    cuda_home, cuda_src = choose_cuda_home(
        name, data.get("gptoss_cuda_home"), vendor, stack, f"{STACKS_DIR}/{stack_name}",
        managed_python_mod.venv_facts(facts, managed), python
    )

    hf_home = check_abs_path(name, "gptoss_hf_home", data.get("gptoss_hf_home"), DEFAULT_HF_HOME)
    predownload = check_bool(name, "gptoss_predownload", data.get("gptoss_predownload"), False)
    hf_endpoint = check_hf_endpoint(name, data.get("gptoss_hf_endpoint"))
    hf_token_file = check_secret_file(name, "gptoss_hf_token_file", data.get("gptoss_hf_token_file"), "Hugging Face token")
    tik = data.get("gptoss_tiktoken_url", DEFAULT_TIKTOKEN_URL)
    tiktoken_url = "" if not tik else check_url(name, "gptoss_tiktoken_url", tik, "use the base URL holding o200k_base.tiktoken, or '' to skip")
    tools = check_tool_servers(name, data.get("gptoss_tool_servers"))
    extra = check_str_list(name, "gptoss_extra_serve_args", data.get("gptoss_extra_serve_args"))
    health_timeout = check_int(name, "gptoss_health_timeout_s", data.get("gptoss_health_timeout_s"), DEFAULT_HEALTH_TIMEOUT_S, 5, 7200, "use seconds, e.g. 900")
    gate = check_bool(name, "gptoss_doctor_gate", data.get("gptoss_doctor_gate"), True)

    from . import airgap as airgap_mod, jit_cache as jit_cache_mod, supervisor as supervisor_mod

    stack_versions = {k: _get(stack, k) for k in ("torch", "torch_local")}
    air = airgap_mod.check(name, data, facts, stack_name, stack_versions, py_spec, tuple(_get(stack, "requirements") or ()))
    if air.base_python:
        python = air.base_python
    jit_cache = jit_cache_mod.check(name, data.get("gptoss_jit_cache"))
    manager = supervisor_mod.check_manager(name, data.get("gptoss_service_manager"), facts.get("init"))
    model_path = None
    if data.get("gptoss_model_path") is not None:
        model_path = check_abs_path(name, "gptoss_model_path", data.get("gptoss_model_path"), "/srv/models/gpt-oss-20b")
        if predownload:  # a local folder is served: a download into the HF cache would be dead weight
            raise bad(name, "gptoss_predownload", True, "a local model folder (gptoss_model_path) is served, so nothing is "
                      "downloaded", "drop gptoss_predownload, or drop gptoss_model_path to serve from the HF cache")

    recipe = kb.recipe(_get(family, "name"), vllm)
    if recipe is None:
        raise bad(
            name, "gptoss_stack", stack_name, f"the knowledge has no recipe for {_get(family, 'name')} on vLLM {vllm}",
            "pick a stack the recipes cover for this GPU family, or add a recipe row",
        )
    env = dict(_get(recipe, "env") or {})
    # A local model folder needs no hub either: offline, so vLLM never waits on an unreachable hub.
    env.update(deploy_env(hf_home, cuda_home, vendor, tiktoken_url, predownload or model_path is not None))
    if hf_endpoint != DEFAULT_HF_ENDPOINT:  # the default stays implicit: today's env files do not change
        env["HF_ENDPOINT"] = hf_endpoint
    if air.base_python:
        env["PATH"] = with_base_bin(env.get("PATH"), os.path.dirname(air.base_python))
    requirements = with_extras(tuple(_get(stack, "requirements") or ()), tuple(_get(recipe, "install_extras") or ()))
    if "demo" in tools:
        requirements += ("gpt-oss",)

    versions = {
        k: _get(stack, k)
        for k in ("vllm", "torch", "torch_local", "triton_dist", "triton", "cuda", "era")
        if _get(stack, k) is not None
    }
    return HostConfig(
        host=name,
        stack=stack_name,
        vllm=vllm,
        stack_versions=versions,
        family=_get(family, "name"),
        vendor=vendor,
        model=model,
        model_size=size,
        tensor_parallel_size=tp,
        gpu_memory_utilization=util,
        max_model_len=max_len,
        port=port,
        bind_address=bind,
        api_key_file=key_file,
        indexes=mapped,
        index_strategy=index_strategy,
        prerelease=_get(stack, "prerelease"),
        torch_backend=torch_backend,
        requirements=requirements,
        nvcc_requirement=_get(stack, "nvcc_requirement") if cuda_src == "pip" else None,
        cuda_home=cuda_home,
        cuda_home_source=cuda_src,
        python=python,
        python_spec=py_spec,
        uv_source=uv_source,
        pypi_url=next(ix.url for ix in mapped if ix.name == "pypi"),
        hf_home=hf_home,
        predownload=predownload,
        tiktoken_url=tiktoken_url,
        tool_servers=tuple(t for t in tools if t != "demo") + (("demo",) if "demo" in tools else ()),
        extra_serve_args=extra,
        env=env,
        serve_flags=tuple(_get(recipe, "serve_flags") or ()),
        recipe_source=str(_get(recipe, "source") or ""),
        install_driver=install_driver,
        min_driver=min_driver,
        health_timeout_s=health_timeout,
        doctor_gate=gate,
        nvswitch_count=int(facts.get("nvswitch_count") or 0),
        driver_version=facts.get("driver_version"),
        gpu_count=len(gpus),
        gpus=tuple(gpus),
        missing_packages=airgap_mod.filter_missing_packages(name, tuple(facts.get("missing_packages") or ()), facts, air),
        extra_stack_files=extra_files(data.get("gptoss_extra_stack_files")),
        airgap=air if air.enabled else None,
        service_manager=manager,
        model_path=model_path,
        hf_endpoint=hf_endpoint,
        hf_token_file=hf_token_file,
        jit_cache=jit_cache,
        managed_python=managed,
    )


def with_extras(requirements: tuple[str, ...], extras: tuple[str, ...]) -> tuple[str, ...]:
    """vllm==X -> vllm[flashinfer]==X when the recipe asks for extras."""
    if not extras:
        return requirements
    out = []
    for r in requirements:
        m = re.match(r"^(vllm)(\[[^\]]*\])?(.*)$", r)
        if m:
            have = [e for e in (m.group(2) or "[]")[1:-1].split(",") if e]
            r = f"vllm[{','.join(dict.fromkeys(have + list(extras)))}]{m.group(3)}"
        out.append(r)
    return tuple(out)


def deploy_env(hf_home: str, cuda_home: str | None, vendor: str, tiktoken_url: str, offline: bool) -> dict[str, str]:
    """What the deploy itself puts in the service's environment, next to the recipe's."""
    env = {
        "HF_HOME": hf_home,
        "XDG_CACHE_HOME": f"{STATE_DIR}/cache",
        "VLLM_NO_USAGE_STATS": "1",
        "HOME": STATE_DIR,
    }
    if tiktoken_url:
        env["TIKTOKEN_ENCODINGS_BASE"] = f"{STATE_DIR}/tiktoken"
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if vendor == "amd":
        env["ROCM_PATH"] = "/opt/rocm"
    elif cuda_home:
        env["CUDA_HOME"] = cuda_home
        env["PATH"] = f"{cuda_home}/bin:{CURRENT}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
    return env


def with_base_bin(path: str | None, base_bin: str) -> str:
    """The service PATH with the base interpreter's bin (ninja, pip CUDA tools of a vendor image)
    right after the stack venv's own, as its site-packages come after the venv's."""
    parts = (path or f"{CURRENT}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin").split(":")
    if base_bin in parts:
        return ":".join(parts)
    at = parts.index(f"{CURRENT}/bin") + 1 if f"{CURRENT}/bin" in parts else 0
    return ":".join(parts[:at] + [base_bin] + parts[at:])


def extra_files(extra: Any) -> tuple[str, ...]:
    files = [] if not extra else ([extra] if isinstance(extra, str) else list(extra))
    return tuple(os.path.expanduser(f) for f in files if isinstance(f, str))


def load_knowledge(host: str, extra: Any) -> Any:
    """The knowledge, with the host's extra stack files; its own errors become one line."""
    from gptoss_doctor import knowledge

    key = "gptoss_extra_stack_files"
    files = [] if not extra else ([extra] if isinstance(extra, str) else list(extra))
    for f in files:
        if not isinstance(f, str) or not os.path.isfile(os.path.expanduser(f)):
            raise bad(host, key, extra, f"{f!r} is not a file on the controller", "list paths of stack TOML files")
    try:
        if files:
            return knowledge.load(extra_stack_files=tuple(os.path.expanduser(f) for f in files))
        return knowledge.load()
    except Exception as e:  # KnowledgeError names file, row and field
        raise ConfigError(f"host {host}: {key}={files!r}: knowledge data rejected: {e}; fix: correct that file") from None
