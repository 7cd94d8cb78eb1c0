"""Checks of the service's `vllm serve` flags against the installed vLLM."""

from __future__ import annotations

import json

from ..findings import Fix, check, found
from ._util import (
    GUIDE,
    NotApplicable,
    evidence,
    flag_value,
    has_flag,
    public,
    serve_flags,
    truthy,
    edit_unit_commands,
    version,
    vllm_version,
)


def _flag_lifecycle(kb, flag: str, value: str | None = None):
    """The knowledge row for `--flag value` (a flag value that came or went), else for `--flag`."""
    name = "--" + flag.lstrip("-")
    if value is not None:
        for key in (f"{name} {value}", f"{name}={value}"):
            if key in kb.flags:
                return kb.flags[key]
    return kb.flags.get(name)


def _json_keys(value) -> list[str]:
    """Top-level keys of a JSON-object flag value (`--compilation-config '{"full_cuda_graph": true}'`)."""
    try:
        parsed = json.loads(str(value))
    except (TypeError, ValueError):
        return []
    return list(parsed) if isinstance(parsed, dict) else []


def _flag_rows(kb, flag: str, value) -> list:
    """Every knowledge row this flag touches: the flag, its value, or a key inside its JSON."""
    rows = [_flag_lifecycle(kb, flag, str(value))]
    rows += [kb.flags.get(f"--{flag} {key}") for key in _json_keys(value)]
    dotted = flag.split(".", 1)  # -cc.full_cuda_graph=true is --compilation-config full_cuda_graph
    if len(dotted) == 2:
        rows.append(kb.flags.get(f"--{dotted[0]} {dotted[1].split('.')[0]}"))
    return [r for r in dict.fromkeys(rows) if r is not None]


# Flag values with a check of their own, which says more than "not in this vLLM".
DEDICATED_ROWS = {"--tool-call-parser openai"}


def _edit_unit(snap, what: str) -> list[str]:
    return edit_unit_commands(snap, what)


@check(
    "stale-serve-flag",
    severity="error",
    title="Serve flags the installed vLLM does not accept (or deprecates)",
    category="serve",
    needs=("service.serve", "vllm.install"),
    links=["https://docs.vllm.ai/en/latest/cli/serve.html"],
)
def stale_serve_flag(snap, kb):
    """The service passes a `vllm serve` flag (or flag value) that the installed vLLM removed,
    does not have yet, or deprecates.

    Why: vLLM's argument parser stops start-up on an unknown flag ("vllm: error: unrecognized
    arguments: --tool-server demo" on a build without it), and config keys are strict
    (`--compilation-config '{"full_cuda_graph": true}'` is rejected once the key is gone). A
    deprecated flag still works but will break on the next upgrade. Lifecycles come from the
    knowledge, with the replacement.

    Fix: replace each flag with its replacement (or drop it) in the unit's ExecStart.

    Source: vLLM release notes and engine/arg_utils.py per version (knowledge lifecycle rows);
    vllm-project/recipes#20 (`--tool-server` unrecognised on a fork image).
    """
    vllm = vllm_version(snap)
    bad = []
    for flag, value in sorted(serve_flags(snap).items()):
        for lc in _flag_rows(kb, flag, value):
            if lc.name in DEDICATED_ROWS:
                continue
            status = kb.lifecycle_status(lc, vllm)
            if status == "valid":
                continue
            bad.append({"flag": lc.name, "value": value, "status": status, "replacement": lc.replacement,
                        "note": lc.note or None, "source": lc.source})
    if not bad:
        return
    worst = "error" if any(b["status"] in ("removed", "not-yet") for b in bad) else "warning"
    words = {"removed": "removed in", "not-yet": "not yet in", "deprecated": "deprecated in"}
    yield found(
        severity=worst,
        title=", ".join(
            f"{b['flag']} is {words[b['status']]} vLLM {vllm}" + (f" (use {b['replacement']})" if b["replacement"] else "")
            for b in bad
        ),
        evidence=evidence(snap, ["service.serve", "vllm.install"], vllm=vllm, flags=bad),
        fix=Fix(
            text="Edit the unit's ExecStart: "
            + "; ".join(f"{b['flag']} -> {b['replacement'] or 'remove it'}" for b in bad) + ".",
            commands=_edit_unit(snap, "replace the flags listed above"),
        ),
        links=sorted({b["source"] for b in bad if b["source"].startswith("http")}) or ["https://docs.vllm.ai/en/latest/cli/serve.html"],
    )


@check(
    "tool-call-parser-openai",
    severity="error",
    title="`--tool-call-parser openai` on a vLLM without the openai parser",
    category="serve",
    needs=("service.serve", "vllm.install"),
    links=[GUIDE + "#function-calling", "https://github.com/vllm-project/vllm/issues/22403"],
)
def tool_call_parser_openai(snap, kb):
    """The service asks for the `openai` tool-call parser, which the installed vLLM lacks.

    Why: the gpt-oss (harmony) tool-call parser arrived in vLLM 0.10.2; older releases exit with
    "invalid tool call parser: openai", and 0.10.1's chat completions mangle tool calls
    ("Expected 2 output messages (reasoning and final), but got 7").

    Fix: upgrade to a stack with the parser (>= 0.10.2), or use the Responses API.

    Source: gpt-oss recipe ("vLLM >= 0.10.2 is required for --tool-call-parser openai",
    recipes@e9fa7ef); vllm-project/vllm#22403; knowledge lifecycle row.
    """
    parser = flag_value(snap, "--tool-call-parser")
    if str(parser or "") != "openai":
        return
    vllm = vllm_version(snap)
    lc = _flag_lifecycle(kb, "tool-call-parser", "openai")
    if lc is None or lc.name == "--tool-call-parser":
        raise NotApplicable("the knowledge has no lifecycle row for `--tool-call-parser openai`")
    status = kb.lifecycle_status(lc, vllm)
    if status in ("valid", "deprecated"):
        return
    newer = [s for s in kb.shipped_stacks.values() if kb.lifecycle_status(lc, s.vllm) == "valid"]
    yield found(
        title=f"`--tool-call-parser openai` needs vLLM >= {lc.introduced}; this is {vllm}",
        evidence=evidence(snap, ["service.serve", "vllm.install"], vllm=vllm, tool_call_parser=parser, introduced=lc.introduced),
        fix=Fix(
            text="Upgrade to a stack with the parser" + (f" (e.g. {newer[0].name})" if newer else "")
            + ", or drop the flag and use /v1/responses.",
            commands=_edit_unit(snap, "remove --tool-call-parser openai, or upgrade the stack"),
        ),
        links=[lc.source, GUIDE + "#function-calling"],
    )


@check(
    "auto-tool-choice-missing",
    severity="error",
    title="Tool calling half-configured (parser without --enable-auto-tool-choice, or the reverse)",
    category="serve",
    needs=("service.serve",),
    links=[GUIDE + "#function-calling"],
)
def auto_tool_choice_missing(snap, kb):
    """Only one of `--tool-call-parser` and `--enable-auto-tool-choice` is set.

    Why: with a parser but no auto tool choice, every request with `tool_choice: "auto"` (the
    default of most clients) gets HTTP 400 '"auto" tool choice requires
    --enable-auto-tool-choice and --tool-call-parser to be set'; with auto tool choice but no
    parser vLLM refuses to start.

    Fix: set both: `--tool-call-parser openai --enable-auto-tool-choice`.

    Source: the gpt-oss guide, Function calling; agentscope-ai/QwenPaw#1449,
    langchain4j/langchain4j#3475 (the HTTP 400 text).
    """
    parser = flag_value(snap, "--tool-call-parser")
    auto = has_flag(snap, "--enable-auto-tool-choice") and truthy(flag_value(snap, "--enable-auto-tool-choice") or "True")
    if bool(parser) == bool(auto):
        return
    missing = "--enable-auto-tool-choice" if parser else "--tool-call-parser openai"
    yield found(
        severity="error" if auto else "warning",
        title=f"{'--tool-call-parser ' + str(parser) if parser else '--enable-auto-tool-choice'} is set without {missing}",
        evidence=evidence(snap, ["service.serve"], tool_call_parser=parser, enable_auto_tool_choice=auto),
        fix=Fix(text=f"Add {missing} to the serve flags.", commands=_edit_unit(snap, f"add {missing}")),
    )


@check(
    "async-structured-output",
    severity="warning",
    title="Async scheduling on a vLLM where it breaks structured output",
    category="serve",
    needs=("service.serve", "vllm.install"),
    links=[GUIDE, "https://github.com/vllm-project/vllm/pull/26866"],
)
def async_structured_output(snap, kb):
    """Async scheduling is on (the flag, or the default from 0.14) on a vLLM whose async
    scheduler cannot serve structured output (JSON schema / `response_format`).

    Why: the guide: "--async-scheduling can be enabled for higher performance. Currently it is
    not compatible with structured output." Requests with a schema fail with "Failed to advance
    FSM for request ..." until vLLM 0.11.1 (vLLM#26866); pipeline parallelism keeps the
    restriction later. The version bounds are knowledge lifecycle rows.

    Fix: drop `--async-scheduling` if clients use structured output, or upgrade.

    Source: the gpt-oss vLLM guide (A100, H100 & H200 sections); vllm-project/vllm#26866,
    #29379.
    """
    vllm = vllm_version(snap)
    row = kb.flags.get("--async-scheduling")
    # When async scheduling learned structured output: a "--async-scheduling structured-output"
    # row (introduced = the fixing release), as the knowledge names flag values.
    compat = kb.flags.get("--async-scheduling structured-output")
    if row is None or compat is None or not compat.introduced:
        raise NotApplicable("the knowledge has no '--async-scheduling structured-output' row (since when they work together)")
    if kb.lifecycle_status(compat, vllm) in ("valid", "deprecated"):
        pp = flag_value(snap, "--pipeline-parallel-size")
        if not pp or str(pp) == "1":
            return
    explicit = has_flag(snap, "--async-scheduling") and truthy(flag_value(snap, "--async-scheduling") or "True")
    since = getattr(row, "default_since", None)
    on_by_default = bool(since) and version(vllm) is not None and public(version(vllm)) >= version(since)
    if has_flag(snap, "--no-async-scheduling") or not (explicit or on_by_default):
        return
    yield found(
        title=f"Async scheduling is {'set' if explicit else 'on by default'} on vLLM {vllm}: structured-output requests will fail",
        evidence=evidence(snap, ["service.serve", "vllm.install"], vllm=vllm, async_scheduling="flag" if explicit else "default",
                          compatible_from=compat.introduced, pipeline_parallel_size=flag_value(snap, "--pipeline-parallel-size")),
        fix=Fix(
            text="If clients send JSON schemas / response_format, "
            + ("remove --async-scheduling" if explicit else "add --no-async-scheduling")
            + f" (or upgrade to vLLM >= {compat.introduced}).",
            commands=_edit_unit(snap, "remove --async-scheduling" if explicit else "add --no-async-scheduling"),
        ),
        links=[compat.source, GUIDE],
    )


@check(
    "max-model-len-too-long",
    severity="error",
    title="--max-model-len above the model's context length",
    category="serve",
    needs=("service.serve",),
    links=["https://github.com/vllm-project/vllm/issues/17924", "https://github.com/gpustack/gpustack/issues/313"],
)
def max_model_len_too_long(snap, kb):
    """`--max-model-len` is larger than the served gpt-oss model's context (131072 tokens).

    Why: vLLM refuses to start with "User-specified max_model_len (...) is greater than the
    derived max_model_len"; with VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 it starts, and prompts past the
    real length later crash the engine with a CUDA device-side assert (index out of bounds).

    Fix: use at most the model's length and drop VLLM_ALLOW_LONG_MAX_MODEL_LEN.

    Source: vllm-project/vllm#17924; gpustack/gpustack#313; the model's config.json
    (max_position_embeddings, via the knowledge).
    """
    from ._util import effective_env, served_model  # noqa: PLC0415

    model = served_model(snap, kb)
    raw = flag_value(snap, "--max-model-len")
    try:
        asked = int(str(raw).lower().replace("k", "000")) if raw is not None else None
    except ValueError:
        asked = None
    if asked is None or asked <= model.max_model_len:
        return
    label, key, env = effective_env(snap)
    allowed = truthy(env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", ""))
    yield found(
        severity="warning" if allowed else "error",
        title=f"--max-model-len {raw} is above {model.name}'s {model.max_model_len} tokens"
        + (" (VLLM_ALLOW_LONG_MAX_MODEL_LEN lets it start; long prompts will crash it)" if allowed else ""),
        evidence=evidence(snap, ["service.serve", key], max_model_len=raw, model=model.name, model_max=model.max_model_len,
                          VLLM_ALLOW_LONG_MAX_MODEL_LEN=env.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN")),
        fix=Fix(text=f"Serve with --max-model-len {model.max_model_len} or less"
                + (" and remove VLLM_ALLOW_LONG_MAX_MODEL_LEN." if allowed else "."),
                commands=_edit_unit(snap, f"--max-model-len {model.max_model_len}")),
        links=["https://github.com/vllm-project/vllm/issues/17924", model.source],
    )
