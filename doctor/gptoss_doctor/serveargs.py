"""One parser of `vllm serve` command lines, shared by the doctor's collectors and the deploys.

    parse(["/opt/gptoss/current/bin/vllm", "serve", "openai/gpt-oss-120b", "--tensor-parallel-size", "2"])
    -> {"model": "openai/gpt-oss-120b", "host": "0.0.0.0", "port": 8000, "tensor_parallel_size": 2,
        "gpu_memory_utilization": None, "api_key_set": False, "flags": {"tensor-parallel-size": "2"}}

It understands `vllm serve MODEL`, `vllm serve --model MODEL`, `python -m vllm.entrypoints.cli.main
serve ...` and the old `python -m vllm.entrypoints.openai.api_server --model ...`; `--x=y`,
`--x y`, `--x_y` (vLLM accepts underscores), the short aliases (`-tp 2`, `-O3`, `-cc.x=y`),
and boolean flags. Flag names in `flags` are canonical (`tensor-parallel-size`), values are the
strings as written (`True` for a bare boolean flag). The API key's value is never kept.
"""

from __future__ import annotations

from typing import Mapping

from .layout import DEFAULT_PORT

# vLLM binds every interface when --host is not given (uvicorn host=None).
DEFAULT_HOST = "0.0.0.0"

SHORT_ALIASES = {
    "tp": "tensor-parallel-size",
    "pp": "pipeline-parallel-size",
    "dp": "data-parallel-size",
    "q": "quantization",
    "O": "optimization-level",  # -O3 / -O 3; -O.x=y is compilation-config.x
    "cc": "compilation-config",
    "ac": "attention-config",
}

# Flags that take no value. A bare flag not listed here takes the next word as its value
# unless that word starts with "-", which is wrong only for a boolean flag placed before the
# model: list the common ones so `vllm serve --enforce-eager MODEL` parses.
BOOLEAN_FLAGS = frozenset(
    {
        "enforce-eager", "async-scheduling", "trust-remote-code", "enable-auto-tool-choice",
        "disable-log-requests", "enable-log-requests", "disable-log-stats", "enable-prefix-caching",
        "enable-chunked-prefill", "skip-tokenizer-init", "disable-custom-all-reduce",
        "enable-expert-parallel", "enable-sleep-mode", "disable-frontend-multiprocessing",
        "disable-fastapi-docs", "enable-prompt-tokens-details", "enable-server-load-tracking",
        "enable-force-include-usage", "enable-request-id-headers", "headless", "use-v2-block-manager",
        "enable-lora", "enable-eplb", "disable-uvicorn-access-log", "reasoning-parser-plugin-enabled",
        "enable-log-outputs", "enable-tokenizer-info-endpoint", "exclude-tools-when-tool-choice-none",
        "disable-cascade-attn", "enable-dbo", "kv-sharing-fast-prefill", "calculate-kv-scales",
    }
)

_ENTRY_WORDS = ("serve", "vllm.entrypoints.openai.api_server", "vllm.entrypoints.api_server")


class ServeArgsError(ValueError):
    """A serve command line whose numbers do not parse: the message names the flag and the value."""


def canonical_flag(word: str) -> str:
    """`--tensor_parallel_size` -> `tensor-parallel-size`, `-tp` -> `tensor-parallel-size`."""
    name = word.lstrip("-")
    if word.startswith("-") and not word.startswith("--"):
        head, dot, rest = name.partition(".")
        if head == "O" and dot:
            return "compilation-config." + rest  # -O.x=y is -cc.x=y
        if head in SHORT_ALIASES:
            return SHORT_ALIASES[head] + (dot + rest if dot else "")
    head, dot, rest = name.partition(".")
    return head.replace("_", "-") + (dot + rest if dot else "")


def serve_words(argv: list[str]) -> list[str] | None:
    """The words after `serve` (or the api_server module); None when argv is not a vLLM server."""
    for i, word in enumerate(argv):
        if word in _ENTRY_WORDS or word.endswith("/vllm.entrypoints.openai.api_server"):
            return argv[i + 1 :]
    return None


def parse_flags(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional words and {canonical flag: value} of a serve command line (later wins)."""
    positional: list[str] = []
    flags: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        if word.startswith("-O") and not word.startswith("--") and len(word) > 2 and word[2:3] != ".":
            flags["optimization-level"] = word[2:]  # -O3
            continue
        name, eq, val = word.partition("=")
        flag = canonical_flag(name)
        if eq:
            flags[flag] = val
        elif flag in BOOLEAN_FLAGS or flag.startswith("no-") or i >= len(words) or words[i].startswith("--"):
            flags[flag] = "True"
        elif words[i].startswith("-") and not _is_number(words[i]):
            flags[flag] = "True"
        else:
            flags[flag] = words[i]
            i += 1
    return positional, flags


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def _int(flags: dict[str, str], flag: str, default: int) -> int:
    raw = flags.get(flag)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ServeArgsError(f"--{flag} {raw!r} is not a whole number") from None


def _float(flags: dict[str, str], flag: str) -> float | None:
    raw = flags.get(flag)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ServeArgsError(f"--{flag} {raw!r} is not a number") from None


def parse(argv: list[str], environ: Mapping[str, str] | None = None) -> dict:
    """The serve settings of a vLLM server command line (see the module docstring).

    `environ` is the server's environment: `VLLM_API_KEY` there sets the key too.
    Raises ServeArgsError when argv is not a vLLM server or a number does not parse.
    """
    words = serve_words(list(argv))
    if words is None:
        raise ServeArgsError(f"not a vLLM server command line (no `serve`): {' '.join(argv)[:200]}")
    positional, flags = parse_flags(words)
    model = flags.get("model") or (positional[0] if positional else None)
    api_key_set = bool(flags.get("api-key")) or bool((environ or {}).get("VLLM_API_KEY"))
    if "api-key" in flags:
        flags["api-key"] = "***"
    return {
        "model": model,
        "host": flags.get("host") or DEFAULT_HOST,
        "port": _int(flags, "port", DEFAULT_PORT),
        "tensor_parallel_size": _int(flags, "tensor-parallel-size", 1),
        "gpu_memory_utilization": _float(flags, "gpu-memory-utilization"),
        "api_key_set": api_key_set,
        "flags": flags,
    }
