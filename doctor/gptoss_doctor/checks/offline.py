"""Checks for serving without network: tokenizer encodings and the Hugging Face cache."""

from __future__ import annotations

import posixpath

from ..findings import Fix, check, found
from ..layout import TIKTOKEN_DIR
from ._util import GUIDE, NotApplicable, as_str, effective_env, env_file_hint, evidence, fact_obj, has_flag, restart_command, serve, truthy

HARMONY_FILES = ("o200k_base.tiktoken", "cl100k_base.tiktoken")  # what the guide tells you to stage
HARMONY_NEEDS = "o200k_base.tiktoken"  # gpt-oss's harmony encoding is built on o200k_base
ENCODINGS_URL = "https://openaipublic.blob.core.windows.net/encodings"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _offline(env: dict) -> list[str]:
    return [n for n in OFFLINE_VARS if truthy(env.get(n, ""))]


def _stage_commands(directory: str) -> list[str]:
    cmds = [f"mkdir -p {directory}"]
    cmds += [f"curl -fsSLo {posixpath.join(directory, f)} {ENCODINGS_URL}/{f}" for f in HARMONY_FILES]
    return cmds


@check(
    "offline-tokenizer-files",
    severity="error",
    title="Harmony's tokenizer encodings are not staged for offline serving",
    category="offline",
    needs=("hf.offline_files",),
    links=[GUIDE + "#troubleshooting", "https://github.com/vllm-project/vllm/issues/22525", "https://github.com/openai/harmony/issues/46"],
)
def offline_tokenizer_files(snap, kb):
    """TIKTOKEN_ENCODINGS_BASE points at a directory without `o200k_base.tiktoken`, or the box is
    set up for offline serving (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) with no staged encodings.

    Why: openai-harmony downloads `o200k_base.tiktoken` from openaipublic.blob.core.windows.net
    the first time it renders a prompt; without network that fails after a full engine start
    with "HarmonyError: error downloading or loading vocab file". Setting
    TIKTOKEN_ENCODINGS_BASE disables the download, so a wrong directory fails the same way.

    Fix: stage both encodings on a machine with network, copy them over, point
    TIKTOKEN_ENCODINGS_BASE at the directory (in the service's EnvironmentFile).

    Not judged when the service runs with --skip-tokenizer-init: prompts come as token ids and
    harmony never renders (real vLLM 0.26.0 served so, offline, with nothing staged).

    Source: the gpt-oss vLLM guide, Troubleshooting (Harmony vocab download);
    vllm-project/vllm#22525; openai/harmony#46, #71.
    """
    files = fact_obj(snap, "hf.offline_files")
    label, key, env = effective_env(snap)
    if label == "service" and has_flag(snap, "--skip-tokenizer-init"):
        # Prompts arrive as token ids and chat/responses are off: harmony never renders, so
        # its vocabulary is never loaded (real vLLM 0.26.0 served so offline with none staged).
        raise NotApplicable("the service runs with --skip-tokenizer-init: harmony never loads its vocabulary")
    base = as_str(files.get("tiktoken_dir")) or as_str(env.get("TIKTOKEN_ENCODINGS_BASE"))
    offline = _offline(env)
    seen = dict(environment=label, TIKTOKEN_ENCODINGS_BASE=base, offline_vars=offline or None,
                files=files.get("files"), tiktoken_dir_exists=files.get("tiktoken_dir_exists"))
    if base:
        if HARMONY_NEEDS in (files.get("files") if isinstance(files.get("files"), list) else []):
            return
        state = "does not exist" if files.get("tiktoken_dir_exists") is False else f"has no {HARMONY_NEEDS}"
        yield found(
            title=f"TIKTOKEN_ENCODINGS_BASE={base} {state}: harmony cannot load its vocabulary",
            evidence=evidence(snap, ["hf.offline_files", key], **seen),
            fix=Fix(text=f"Stage the encodings in {base} (from a machine with network, then copy):", commands=_stage_commands(base)),
            links=[GUIDE + "#troubleshooting", "https://github.com/vllm-project/vllm/issues/22525"],
        )
        return
    if not offline:
        return
    target = TIKTOKEN_DIR  # where the deploy stages them (gptoss_tiktoken_url)
    yield found(
        severity="warning",
        title=f"{', '.join(offline)} is set but TIKTOKEN_ENCODINGS_BASE is not: harmony will try to download its vocabulary",
        evidence=evidence(snap, ["hf.offline_files", key], **seen),
        fix=Fix(
            text=f"Stage the encodings and set TIKTOKEN_ENCODINGS_BASE={target} where vLLM runs:",
            commands=[*_stage_commands(target), *(
                [f"echo 'TIKTOKEN_ENCODINGS_BASE={target}' >> {env_file_hint(snap)}", restart_command(snap)]
                if label == "service" else [f"export TIKTOKEN_ENCODINGS_BASE={target}"]
            )],
        ),
        links=[GUIDE + "#troubleshooting", "https://github.com/openai/harmony/issues/46"],
    )


@check(
    "hf-offline-model-missing",
    severity="error",
    title="HF_HUB_OFFLINE is set but the served model is not in the Hugging Face cache",
    category="offline",
    needs=("hf.offline_files", "service.serve"),
    links=["https://huggingface.co/docs/huggingface_hub/package_reference/environment_variables#hfhuboffline"],
)
def hf_offline_model_missing(snap, kb):
    """The service serves a Hugging Face model id with HF_HUB_OFFLINE=1, and that model is not in
    the hub cache the service uses.

    Why: offline mode forbids the download, so start-up fails with "Cannot find an appropriate
    cached snapshot folder for the specified revision on the local disk and outgoing traffic
    has been disabled".

    Fix: download the model into the cache first (only the files vLLM needs: not `original/` or
    `metal/`), or serve a local directory.

    Source: huggingface_hub HF_HUB_OFFLINE docs; the failure catalog (hf-offline-not-cached);
    openai/openai-cookbook#1998 (the repos' extra weight formats).
    """
    label, key, env = effective_env(snap)
    if not truthy(env.get("HF_HUB_OFFLINE", "")):
        return
    model = str(serve(snap).get("model") or "")
    if not model or model.startswith(("/", ".")) or model.count("/") != 1:
        raise NotApplicable(f"the service serves a local path ({model or 'none'}), not a hub id")
    files = fact_obj(snap, "hf.offline_files")
    if model in (files.get("hub_models") or []):
        return
    hub = files.get("hub_cache") or "~/.cache/huggingface/hub"
    hf_home = files.get("hf_home") or "~/.cache/huggingface"
    yield found(
        title=f"HF_HUB_OFFLINE=1 ({label}) but {model} is not in {hub}",
        evidence=evidence(snap, ["hf.offline_files", key, "service.serve"], model=model, hub_cache=hub,
                          cached_models=files.get("hub_models")),
        fix=Fix(
            text="Download the model into the service's cache while online (skip the extra weight formats):",
            commands=[f"HF_HOME={hf_home} HF_HUB_OFFLINE=0 hf download {model} --exclude 'original/*' 'metal/*'"],
        ),
    )
