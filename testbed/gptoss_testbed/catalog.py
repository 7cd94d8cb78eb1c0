"""What the testbed's package index serves: a plan made from the knowledge data (pure, no I/O).

Index names are the knowledge's (`pypi`, `vllm-gptoss`, `pytorch-nightly-cu128`) plus the
PyTorch per-CUDA indexes a `torch_backend` stands for (`pytorch-cu128`, `pytorch-cu129`,
`pytorch-cu130`) and `testbed-broken`, the broken stack's own index. The layout copies the real
indexes where it matters to resolution:

- PyPI's torch has no local version (`2.14.0`); the PyTorch indexes' have it (`2.14.0+cu130`).
- The PyTorch indexes also mirror a few common packages at OLD versions (as download.pytorch.org
  does), which is why uv's default first-index strategy fails or picks differently there and the
  launch-day guide needed `--index-strategy unsafe-best-match`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from packaging.specifiers import SpecifierSet
from packaging.version import Version

BROKEN_STACK = "vllm-0.33.1-broken"
BROKEN_VLLM = "0.33.1.dev0+broken"
BROKEN_INDEX = "testbed-broken"
BROKEN_INDEX_URL = "https://testbed.invalid/broken/simple"  # a name only: the inventory maps it to the local index

PYTORCH_INDEX_URLS = {  # what uv's --torch-backend=cu<NNN> stands for
    "pytorch-cu126": "https://download.pytorch.org/whl/cu126",
    "pytorch-cu128": "https://download.pytorch.org/whl/cu128",
    "pytorch-cu129": "https://download.pytorch.org/whl/cu129",
    "pytorch-cu130": "https://download.pytorch.org/whl/cu130",
}

HF_HUB_VERSION = "2.4.0"
HF_HUB_DOWNLOADS = (
    f"huggingface-hub=={HF_HUB_VERSION}", "click==8.5.1", "fsspec==2026.9.0", "hf-xet==1.8.0",
    "httpx2==2.16.2", "httpcore2==2.16.2", "h11==0.16.0", "anyio==4.16.0", "idna==3.20",
    "truststore==0.10.5", "pyyaml==6.0.4", "tqdm==4.70.1",
)

# A real wheel built per CPython (pyyaml's cp311, cp312...) is fetched for each of these, so a
# stack for another Python than the controller's resolves too (the launch stack is 3.12 only).
BINARY_PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")

# Real wheels from PyPI, pinned so every testbed serves the same bytes.
# The doctor's dependencies (doctor/pyproject.toml, versions as in uv.lock), what the stand-ins
# depend on, and uv itself (hosts may install uv from the mirror).
PYPI_DOWNLOADS = (
    "rich==15.0.0", "packaging==26.4", "markdown-it-py==4.3.0", "mdurl==0.1.2", "pygments==2.21.0",
    "tomli==2.5.0", "typing-extensions==4.16.0", "filelock==3.18.0", "uv==0.13.9",
    # huggingface_hub (the model pre-download runs the stack venv's) and its dependencies as
    # `pip download huggingface-hub==2.4.0` resolves them for CPython 3.11 on x86_64 (the hosts'
    # Python): pyyaml is the cp311 build, hf-xet the abi3 one.
    *HF_HUB_DOWNLOADS,
)
# Old copies the PyTorch indexes mirror (real download.pytorch.org carries such old copies).
PYTORCH_MIRRORED = ("filelock==3.13.1", "typing-extensions==4.12.2")
# What every stand-in vLLM and torch requires besides torch/triton (subsets of the real pins).
# Real vLLM gets huggingface_hub through transformers; the stand-in has no transformers, so it
# requires huggingface_hub directly (the lower bound of transformers 4.55's pin), so a stack venv
# holds the real hub client the pre-download uses, as it would with real vLLM.
VLLM_COMMON_REQUIRES = ["filelock>=3.16.1", "typing_extensions>=4.10", "huggingface-hub>=0.34.0"]
TORCH_COMMON_REQUIRES = ["filelock", "typing-extensions>=4.10.0"]

# A CUDA 13 torch pulls in the CUDA runtime wheel, which puts include/cuda.h into the same
# nvidia/cu13 folder as the nvcc wheel (real torch 2.11.0+cu130 pins nvidia-cuda-runtime==13.0.96;
# later torch releases pin later 13.x runtimes, not recorded here).
CUDA_RUNTIME = {"13": ("nvidia-cuda-runtime", "13.0.96")}

# Requires-Python of the real vLLM wheels (matrix: 0.10.1.1 and 0.33.0 wheel METADATA); between
# them the stack row's own range. The stack's `python` field is a policy, not the wheel's pin.
VLLM_REQUIRES_PYTHON = {"0.10": ">=3.9,<3.13", "0.33": ">=3.11,<3.15"}

# The CUDA of PyPI's default torch wheel (torch/version.py `cuda`), where it differs from the
# stack's: PyPI torch 2.7.1 is the cu126 build (stacks.toml notes); later ones follow the stack.
PYPI_TORCH_CUDA = {"2.7.1": "12.6"}

# Where the log and registry shapes changed is between the two wheels read (0.10.1.1, 0.33.0);
# the exact release was not established, so the switch is placed at 0.11.0.
NEW_ERA_FROM = Version("0.11.0")
# vLLM warns "Unknown vLLM environment variable detected" from this release on (the brief's
# "0.13 era"; 0.33.0's validate_environ is read from the wheel).
VALIDATE_ENVIRON_FROM = Version("0.13.0")

NIGHTLY_TRITON_LOCAL = "+gitstandin"  # pytorch-triton 3.4.0+git<sha>: exact commit not recorded

NVCC_VERSIONS = {"12.8": "12.8.93", "12.9": "12.9.86", "13.0": "13.0.88"}

# Flags every vLLM of these eras takes (the ones a deploy passes); the knowledge's lifecycle rows
# override any of them, and recipe flags for the version are added.
BASE_FLAGS: dict[str, str] = {
    "--model": "value", "--host": "value", "--port": "value", "--api-key": "value",
    "--tensor-parallel-size": "value", "--pipeline-parallel-size": "value", "--data-parallel-size": "value",
    "--gpu-memory-utilization": "value", "--served-model-name": "list", "--max-model-len": "value",
    "--max-num-batched-tokens": "value", "--max-num-seqs": "value", "--download-dir": "value",
    "--dtype": "value", "--trust-remote-code": "bool", "--enforce-eager": "bool", "--seed": "value",
    "--kv-cache-dtype": "value", "--block-size": "value", "--tokenizer": "value", "--revision": "value",
    "--load-format": "value", "--generation-config": "value", "--enable-prefix-caching": "bool",
    "--no-enable-prefix-caching": "bool", "--compilation-config": "value", "--disable-log-stats": "bool",
    "--uvicorn-log-level": "value", "--config": "value", "--chat-template": "value", "--reasoning-parser": "value",
    "--enable-auto-tool-choice": "bool", "--tool-call-parser": "value", "--hf-overrides": "value",
    "--speculative-config": "value", "--distributed-executor-backend": "value", "--root-path": "value",
    "--max-log-len": "value", "--allowed-origins": "value", "--swap-space": "value",
}
BASE_ALIASES = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size", "-O": "--compilation-config"}
BOOL_FLAG_NAMES = {"--async-scheduling", "--no-async-scheduling", "--fail-on-environ-validation",
                   "--enable-auto-tool-choice", "--disable-log-requests", "--enable-log-requests",
                   "--no-enable-prefix-caching", "--enable-prefix-caching", "--enforce-eager"}
BASE_ENV_VARS = (
    "VLLM_HOST_IP", "VLLM_PORT", "VLLM_API_KEY", "VLLM_LOGGING_LEVEL", "VLLM_CONFIGURE_LOGGING",
    "VLLM_CACHE_ROOT", "VLLM_CONFIG_ROOT", "VLLM_NO_USAGE_STATS", "VLLM_DO_NOT_TRACK", "VLLM_USE_MODELSCOPE",
    "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_ENGINE_ITERATION_TIMEOUT_S", "VLLM_RPC_TIMEOUT", "VLLM_SERVER_DEV_MODE",
    "VLLM_ALLOW_LONG_MAX_MODEL_LEN", "VLLM_TARGET_DEVICE", "VLLM_MAIN_CUDA_VERSION", "VLLM_USE_PRECOMPILED",
    "VLLM_LOGGING_PREFIX", "VLLM_ROCM_USE_AITER", "VLLM_ROCM_QUICK_REDUCE_QUANTIZATION",
)
BASE_BACKENDS_NEW = ("FLASH_ATTN", "TRITON_ATTN", "FLASHINFER", "FLEX_ATTENTION", "ROCM_ATTN",
                     "ROCM_AITER_FA", "ROCM_AITER_UNIFIED_ATTN", "TREE_ATTN", "TRITON_FLASHINFER")
BASE_BACKENDS_OLD = ("FLASH_ATTN_VLLM_V1", "TRITON_ATTN_VLLM_V1", "FLASHINFER_VLLM_V1", "FLEX_ATTENTION",
                     "XFORMERS", "TORCH_SDPA", "ROCM_ATTN_VLLM_V1", "ROCM_AITER_MLA")


@dataclass
class StandinWheel:
    """One stand-in wheel to build into one index: `kind` picks the builder in tests/standins/build.py."""

    index: str
    kind: str  # "vllm" | "torch" | "triton" | "nvcc" | "cuda-runtime"
    args: dict = field(default_factory=dict)


@dataclass
class Plan:
    standins: list[StandinWheel]
    downloads: dict[str, tuple[str, ...]]  # index -> pinned requirements fetched from PyPI
    stacks: list[dict]  # [{"name", "vllm", "index"}] oldest first
    index_urls: dict[str, str]  # index name -> the real URL it stands for


def _flag_tokens(flags) -> list[str]:
    return [tok.split("=", 1)[0] for f in flags for tok in str(f).split() if tok.startswith("-")]


def _status(kb, lc, version: str) -> str:
    return kb.lifecycle_status(lc, version)


def vllm_spec_args(kb, version: str, torch_pin: str, torch_public: str, broken: bool = False) -> dict:
    """What the stand-in vLLM `version` accepts, from the knowledge's lifecycle and recipe rows."""
    v = Version(version)
    public = Version(v.public)
    new_era = public >= NEW_ERA_FROM

    flags = dict(BASE_FLAGS)
    for recipe in kb.recipes:
        if recipe.covers(version):
            for tok in _flag_tokens(recipe.serve_flags):
                flags.setdefault(tok, "bool" if tok in BOOL_FLAG_NAMES else "value")
    for fit in getattr(kb, "memory_fits", ()):
        for tok in _flag_tokens(fit.serve_flags):
            flags.setdefault(tok, "bool" if tok in BOOL_FLAG_NAMES else "value")
    deprecated_flags: dict[str, str | None] = {}
    bad_values: dict[str, dict[str, str]] = {}  # flag -> {value: "deprecated" | "invalid"}
    for name, lc in kb.flags.items():
        flag, _, value = (name if name.startswith("-") else f"--{name}").partition(" ")
        status = _status(kb, lc, version)
        if value:  # a row about one value of a flag ("--tool-call-parser openai")
            if status != "valid":
                bad_values.setdefault(flag, {})[value] = "deprecated" if status == "deprecated" else "invalid"
                if status == "deprecated":
                    deprecated_flags[f"{flag} {value}"] = lc.replacement
            continue
        if status in ("valid", "deprecated"):
            flags.setdefault(flag, "bool" if flag in BOOL_FLAG_NAMES else "value")
            if status == "deprecated":
                deprecated_flags[flag] = lc.replacement
        else:
            flags.pop(flag, None)

    if "--attention-backend" in flags:  # both came with the attention env vars' replacement (vLLM PR 26315)
        flags.setdefault("--attention-config", "value")

    env = set(BASE_ENV_VARS)  # envs.py lists VLLM_* names only; other rows (HSA_*, TRITON_*) are not vLLM's
    for recipe in kb.recipes:
        if recipe.covers(version):
            env |= {k for k in recipe.env if k.startswith("VLLM_")}
    deprecated_env: dict[str, str | None] = {}
    for name, lc in kb.env_vars.items():
        if not name.startswith("VLLM_"):
            continue
        status = _status(kb, lc, version)
        if status in ("valid", "deprecated"):
            env.add(name)
            if status == "deprecated":
                deprecated_env[name] = lc.replacement
        else:
            env.discard(name)

    backends = set(BASE_BACKENDS_NEW if new_era else BASE_BACKENDS_OLD)
    for name, lc in kb.attention_backends.items():
        if _status(kb, lc, version) in ("valid", "deprecated"):
            backends.add(name)
        else:
            backends.discard(name)

    return {
        "version": version,
        "requires": [torch_pin, *VLLM_COMMON_REQUIRES],
        "requires_python": _vllm_requires_python(public),
        "flags": dict(sorted(flags.items())),
        "aliases": {a: t for a, t in BASE_ALIASES.items() if t in flags},
        "deprecated_flags": deprecated_flags,
        "bad_values": bad_values,
        "env_vars": sorted(env),
        "deprecated_env_vars": deprecated_env,
        "attention_backends": sorted(backends),
        "validate_environ": public >= VALIDATE_ENVIRON_FROM,
        "log_style": "new" if new_era else "old",
        "registry_style": "enum" if new_era else "platforms",
        "broken": broken,
        "torch_public": torch_public,
    }


def _vllm_requires_python(public: Version) -> str:
    key = f"{public.major}.{public.minor}"
    if key in VLLM_REQUIRES_PYTHON:
        return VLLM_REQUIRES_PYTHON[key]
    return ">=3.10,<3.14" if public < Version("0.33") else VLLM_REQUIRES_PYTHON["0.33"]


def _cu(cuda: str) -> str:
    return "cu" + cuda.replace(".", "")


def _nvcc(stack) -> tuple[str, str]:
    """(distribution, version) satisfying the stack's nvcc_requirement."""
    dist = re.split(r"[=<>!~ ;\[]", stack.nvcc_requirement, maxsplit=1)[0].strip()
    version = NVCC_VERSIONS.get(stack.cuda, f"{stack.cuda}.0")
    spec = SpecifierSet(stack.nvcc_requirement[len(dist):].split(";")[0].strip() or ">=0")
    if not spec.contains(version, prereleases=True):
        raise ValueError(f"stack {stack.name}: no stand-in nvcc version for {stack.nvcc_requirement!r}")
    return dist, version


def _nvcc_lines(stack) -> str:
    if not stack.nvcc_requirement:
        return ""
    return f'nvcc_requirement = "{stack.nvcc_requirement}"\ncuda_home_subdir = "{stack.cuda_home_subdir}"'


def broken_stack_toml(today) -> str:
    """The broken stack as a stacks.toml row, loadable by knowledge.load(extra_stack_files=[...])."""
    return f'''# Written by gptoss-testbed: a stack that installs and starts but never becomes healthy.
# Its vllm ({BROKEN_VLLM}) is a stand-in served only by the testbed's `{BROKEN_INDEX}` index.

[[stack]]
name = "{BROKEN_STACK}"
era = "testbed only: a broken release for rollback tests (starts, logs, /health never 200)"
vllm = "{BROKEN_VLLM}"
torch = "{today.torch}"
torch_local = "{today.torch_local}"
triton_dist = "{today.triton_dist}"
triton = "{today.triton}"
cuda = "{today.cuda}"
python = "{today.python}"
min_driver = "{today.min_driver}"
indexes = [
  {{ name = "pypi", url = "https://pypi.org/simple" }},
  {{ name = "{BROKEN_INDEX}", url = "{BROKEN_INDEX_URL}" }},
]
index_strategy = "unsafe-best-match"
prerelease = "allow"
{f'torch_backend = "{today.torch_backend}"' if today.torch_backend else ""}
requirements = ["vllm=={BROKEN_VLLM}"]
{_nvcc_lines(today)}
source = "gptoss-testbed stand-in (tests/standins): never a real vLLM release"
'''


def plan(kb) -> Plan:
    """Every wheel for every stack in the knowledge, the broken stack, and the real downloads."""
    standins: list[StandinWheel] = []
    index_urls: dict[str, str] = {"pypi": "https://pypi.org/simple", BROKEN_INDEX: BROKEN_INDEX_URL}
    seen: set[tuple] = set()

    def add(index: str, kind: str, **args) -> None:
        key = (index, kind, tuple(sorted((k, str(v)) for k, v in args.items() if k in ("dist", "version"))))
        if key not in seen:
            seen.add(key)
            standins.append(StandinWheel(index, kind, args))

    stacks_out = []
    today = kb.latest_stack
    # The local fleet's hosts stand in for NVIDIA boxes: ROCm stacks (no CUDA) have no stand-in torch here.
    all_stacks = [s for s in kb.stacks.values() if s.cuda]
    for stack in all_stacks + [None]:  # None: the broken stack, built on today's torch
        broken = stack is None
        s = today if broken else stack
        name, vllm_version = (BROKEN_STACK, BROKEN_VLLM) if broken else (s.name, s.vllm)
        for index in s.indexes:
            index_urls.setdefault(index.name, index.url)
        nightly = s.torch_local and Version(s.torch).is_devrelease
        if broken:
            vllm_index = BROKEN_INDEX
        else:
            vllm_index = next((i.name for i in s.indexes if i.name != "pypi" and not i.name.startswith("pytorch")),
                              "pypi")
        if nightly:
            torch_index = next(i.name for i in s.indexes if i.name.startswith("pytorch"))
            torch_pin = f"torch=={s.torch}{s.torch_local}"  # the gptoss wheel pinned the local build
            triton_version = f"{s.triton}{NIGHTLY_TRITON_LOCAL}"
            add(torch_index, "triton", dist=s.triton_dist, version=triton_version)
            add(torch_index, "torch", version=f"{s.torch}{s.torch_local}", build=f"{s.torch}{s.torch_local}",
                cuda=s.cuda, requires=[f"{s.triton_dist}=={triton_version}", *TORCH_COMMON_REQUIRES])
            add("pypi", "triton", dist="triton", version=s.triton)  # so a duplicate Triton can be made
        else:
            torch_pin = f"torch=={s.torch}"
            triton_req = f"{s.triton_dist}=={s.triton}; platform_system == \"Linux\" and platform_machine == \"x86_64\""
            torch_requires = [triton_req, *TORCH_COMMON_REQUIRES]
            runtime = CUDA_RUNTIME.get(s.cuda.split(".")[0]) if s.cuda_home_subdir else None
            if runtime:
                add("pypi", "cuda-runtime", dist=runtime[0], version=runtime[1], subdir=s.cuda_home_subdir)
                torch_requires.append(f"{runtime[0]}=={runtime[1]}; platform_system == \"Linux\"")
            pypi_cuda = PYPI_TORCH_CUDA.get(s.torch, s.cuda)
            add("pypi", "triton", dist=s.triton_dist, version=s.triton)
            add("pypi", "torch", version=s.torch, build=f"{s.torch}+{_cu(pypi_cuda)}", cuda=pypi_cuda,
                requires=torch_requires)
            backend_index = f"pytorch-{s.torch_backend or _cu(s.cuda)}"
            index_urls.setdefault(backend_index, PYTORCH_INDEX_URLS.get(backend_index, ""))
            add(backend_index, "triton", dist=s.triton_dist, version=s.triton)
            add(backend_index, "torch", version=f"{s.torch}{s.torch_local}", build=f"{s.torch}{s.torch_local}",
                cuda=s.cuda, requires=torch_requires)
        add(vllm_index, "vllm", version=vllm_version,
            spec=vllm_spec_args(kb, vllm_version, torch_pin, s.torch, broken=broken))
        if s.nvcc_requirement:
            dist, nvcc_version = _nvcc(s)
            add("pypi", "nvcc", dist=dist, version=nvcc_version, subdir=s.cuda_home_subdir, nvcc=True)
        elif s.cuda.startswith("12."):
            # The real CUDA 12 wheel ships ptxas only, no nvcc (knowledge stacks.toml): so does ours,
            # and a deploy that takes it for a CUDA_HOME fails here as it would for real.
            add("pypi", "nvcc", dist="nvidia-cuda-nvcc-cu12", version=NVCC_VERSIONS.get(s.cuda, f"{s.cuda}.0"),
                subdir="nvidia/cuda_nvcc", nvcc=False)
        stacks_out.append({"name": name, "vllm": vllm_version, "index": vllm_index})

    mirrors = sorted({w.index for w in standins if w.index.startswith("pytorch")})
    downloads = {"pypi": PYPI_DOWNLOADS, **{m: PYTORCH_MIRRORED for m in mirrors}}
    return Plan(standins=standins, downloads=downloads, stacks=stacks_out,
                index_urls={k: v for k, v in index_urls.items() if v})
