"""Checks of the GPUs against what gpt-oss needs: architecture, recipe settings, memory, TP."""

from __future__ import annotations

from ..findings import Finding, Fix, check
from ._util import (
    GUIDE,
    NotApplicable,
    as_int,
    effective_env,
    env_file_delete,
    env_file_hint,
    evidence,
    flag_value,
    gpu_count,
    gpu_families,
    gpu_memory_utilization,
    has_flag,
    host_daemon_command,
    major_minor,
    nvidia_gpus,
    served_model,
    target_vllm,
    tensor_parallel_size,
    edit_unit_commands,
    restart_command,
)

GIB = 1024**3


def _present_families(snap, kb) -> list:
    seen, out = set(), []
    for _, fam in gpu_families(snap, kb):
        if fam is not None and fam.name not in seen:
            seen.add(fam.name)
            out.append(fam)
    return out


def _env_fix(snap, label: str, set_vars: dict[str, str] | None = None, unset: list[str] | None = None) -> list[str]:
    """Commands that set/unset env vars where vLLM reads them: the EnvironmentFile or the shell."""
    set_vars, unset = set_vars or {}, unset or []
    if label == "service":
        path = env_file_hint(snap)
        names = [*unset, *set_vars]
        cmds = [env_file_delete(path, names)]
        if set_vars:
            lines = "\\n".join(f"{n}={v}" for n, v in set_vars.items())
            cmds.append(f"printf '{lines}\\n' >> {path}")
        return cmds + [restart_command(snap)]
    return ([f"unset {' '.join(unset)}"] if unset else []) + (
        ["export " + " ".join(f"{n}={v}" for n, v in set_vars.items())] if set_vars else []
    )


@check(
    "sinks-float32",
    severity="error",
    title="Blackwell without the attention settings its era needs (\"Sinks must be of type float32\")",
    category="gpu",
    needs=("nvidia.gpus",),
    links=[GUIDE + "#b200", GUIDE + "#troubleshooting", "https://github.com/vllm-project/vllm/pull/23016"],
)
def sinks_float32(snap, kb):
    """A Blackwell GPU serves gpt-oss with a vLLM whose recipe needs attention env vars that are not set.

    Why: on the launch-day build (0.10.1+gptoss) the model converted its attention sinks to
    float32 only when the TRT-LLM attention path was selected by env var; without the three
    VLLM_USE_TRTLLM_*ATTENTION variables, B200 takes plain FlashInfer and every worker dies with
    `AssertionError: Sinks must be of type float32`. Later releases choose TRT-LLM attention
    automatically (vLLM#23016), and their recipes prescribe no such variables, so this check
    only fires where the knowledge's recipe for the GPU family and installed vLLM does.

    Fix: set the recipe's attention variables where vLLM reads them (the service's
    EnvironmentFile, or the shell that runs `vllm serve`), or upgrade to a stack that selects
    TRT-LLM attention itself.

    Source: the gpt-oss vLLM guide, B200 ("All 3 of these are required") and Troubleshooting
    ("Attention sink dtype error on Blackwell"); vllm-project/vllm#23016.
    """
    vllm = target_vllm(snap, kb)
    # the SM10x family (B200/GB200, B300/GB300): where TRT-LLM attention is what serves sinks
    blackwell = [f for f in _present_families(snap, kb) if f.vendor == "nvidia" and f.arch.lower() in ("blackwell", "blackwell-ultra")]
    if not blackwell:
        raise NotApplicable("no Blackwell GPU")
    label, key, env = effective_env(snap)
    for fam in blackwell:
        recipe = kb.recipe(fam.name, vllm)
        if recipe is None:
            continue
        # the TRT-LLM attention switches only: a recipe that forces another backend
        # (VLLM_ATTENTION_BACKEND) does not hit the float32 assertion when it is missing
        wanted = {n: v for n, v in recipe.env.items() if n.startswith("VLLM_USE_TRTLLM")}
        missing = {n: v for n, v in wanted.items() if str(env.get(n, "")).strip() != str(v)}
        if not missing:
            continue
        yield Finding(
            id="sinks-float32",
            severity="error",
            title=f"{fam.name} on vLLM {vllm} without {', '.join(sorted(missing))}: workers will fail "
            "with \"Sinks must be of type float32\"",
            evidence=evidence(
                snap, ["nvidia.gpus", key, "vllm.install"],
                gpu_family=fam.name, vllm=vllm, environment=label,
                seen={n: env.get(n) for n in wanted}, recipe_env=dict(recipe.env),
            ),
            fix=Fix(
                text=f"Set the {fam.name} recipe's attention variables in the {label} environment "
                "(or upgrade: later stacks choose TRT-LLM attention themselves).",
                commands=_env_fix(snap, label, set_vars=missing),
            ),
            links=[GUIDE + "#b200", *recipe.links],
        )


@check(
    "gpu-below-sm80",
    severity="error",
    title="GPU older than Ampere (compute capability < 8.0)",
    category="gpu",
    needs=("nvidia.gpus",),
    links=["https://github.com/vllm-project/vllm/issues/22383", "https://github.com/vllm-project/vllm/issues/22422"],
)
def gpu_below_sm80(snap, kb):
    """An NVIDIA GPU's compute capability is below every GPU family the knowledge supports (A100, 8.0).

    Why: gpt-oss is MXFP4-quantised; vLLM's MXFP4 method has a minimum capability of 80 in every
    release from 0.10.1 to 0.33, and below it vLLM falls back to engine paths without attention
    sinks ("got an unexpected keyword argument 'sinks'"). T4, V100 and older cannot serve it.

    Fix: run on an Ampere-or-newer GPU; exclude older ones with CUDA_VISIBLE_DEVICES.

    Source: vLLM `Mxfp4Config.get_min_capability() == 80` (0.10.1.1 and 0.33.0 wheels);
    vllm-project/vllm#22383, #22422.
    """
    floor = min(
        (major_minor(f.compute_capability) for f in kb.gpu_families.values()
         if f.vendor == "nvidia" and major_minor(f.compute_capability)),
        default=None,
    )
    if floor is None:
        raise NotApplicable("the knowledge lists no NVIDIA family")
    old = [g for g in nvidia_gpus(snap) if major_minor(g.get("compute_cap")) and major_minor(g.get("compute_cap")) < floor]
    if not old:
        return
    good = [str(g.get("index")) for g in nvidia_gpus(snap) if g not in old]
    yield Finding(
        id="gpu-below-sm80",
        severity="error",
        title=f"{len(old)} GPU(s) below compute capability {floor[0]}.{floor[1]}: "
        + ", ".join(f"{g.get('name')} ({g.get('compute_cap')})" for g in old),
        evidence=evidence(snap, ["nvidia.gpus"], gpus=[{k: g.get(k) for k in ("index", "name", "compute_cap")} for g in old]),
        fix=Fix(
            text="gpt-oss needs Ampere (8.0) or newer."
            + (" Serve only on the newer GPUs:" if good else " This box cannot serve it."),
            commands=[f"echo 'CUDA_VISIBLE_DEVICES={','.join(good)}' >> {env_file_hint(snap)}"] if good else [],
        ),
        links=["https://github.com/vllm-project/vllm/issues/22383"],
    )


@check(
    "persistence-mode-off",
    severity="info",
    title="GPU persistence mode is off",
    category="gpu",
    needs=("nvidia.gpus",),
    links=["https://docs.nvidia.com/deploy/driver-persistence/"],
)
def persistence_mode_off(snap, kb):
    """Persistence mode is disabled on one or more NVIDIA GPUs.

    Why: without it (and without nvidia-persistenced) the driver tears GPU state down whenever no
    process holds the device and rebuilds it on the next open: every vLLM start, health probe
    and `nvidia-smi` pays seconds of initialisation, and ECC/clock settings reset between runs.

    Fix: run the persistence daemon (preferred) or set persistence mode.

    Source: NVIDIA "Driver Persistence" documentation.
    """
    off = [g for g in nvidia_gpus(snap) if str(g.get("persistence_mode", "")).lower() in ("disabled", "off")]
    if not off:
        return
    yield Finding(
        id="persistence-mode-off",
        severity="info",
        title=f"Persistence mode is off on GPU(s) {', '.join(str(g.get('index')) for g in off)}",
        evidence=evidence(snap, ["nvidia.gpus"], gpus=[{k: g.get(k) for k in ("index", "name", "persistence_mode")} for g in off]),
        fix=Fix(text="Enable the persistence daemon (survives reboots).", commands=[
            host_daemon_command(snap, "nvidia-persistenced", "enable --now"), "nvidia-smi -pm 1",
        ]),
        links=["https://docs.nvidia.com/deploy/driver-persistence/"],
    )


SHM_FLOOR = 1 * GIB  # Docker's default is 64 MiB; vLLM's docs use --ipc=host or --shm-size >= 10g


@check(
    "shm-too-small",
    severity="warning",
    title="/dev/shm too small for tensor parallelism",
    category="gpu",
    needs=("host.shm_bytes", "service.serve"),
    links=["https://github.com/vllm-project/vllm/issues/1710", "https://github.com/vllm-project/vllm/pull/1125"],
)
def shm_too_small(snap, kb):
    """/dev/shm is smaller than 1 GiB while the service runs with tensor-parallel size > 1.

    Why: vLLM's workers and NCCL exchange data through shared memory; containers default to a
    64 MiB /dev/shm, and TP>1 then dies with `ncclShmOpen` errors, "Bus error" or "No space
    left on device", or hangs.

    Fix: give the box (container) a larger /dev/shm: `--ipc=host` or `--shm-size=16g` for Docker,
    an `emptyDir: {medium: Memory}` on Kubernetes, or remount it.

    Source: vllm-project/vllm#1710, #1771, #1125 (`--ipc=host` for distributed inference).
    """
    tp = tensor_parallel_size(snap)
    if tp <= 1:
        return
    shm = as_int(snap.get("host.shm_bytes"))
    if shm is None:
        raise NotApplicable(f"host.shm_bytes is {snap.get('host.shm_bytes')!r}, not a size")
    if shm >= SHM_FLOOR:
        return
    yield Finding(
        id="shm-too-small",
        severity="warning",
        title=f"/dev/shm is {shm / 2**20:.0f} MiB with tensor-parallel size {tp}",
        evidence=evidence(snap, ["host.shm_bytes", "service.serve"], shm_bytes=shm, tensor_parallel_size=tp),
        fix=Fix(
            text="Enlarge /dev/shm (containers: run with --ipc=host or --shm-size=16g).",
            commands=["mount -o remount,size=16G /dev/shm"],
        ),
        links=["https://github.com/vllm-project/vllm/issues/1710"],
    )


@check(
    "tp-heads-divisor",
    severity="error",
    title="Tensor-parallel size does not divide the model's attention heads",
    category="gpu",
    needs=("service.serve",),
    links=["https://github.com/vllm-project/vllm/issues/52435"],
)
def tp_heads_divisor(snap, kb):
    """`--tensor-parallel-size` does not divide the served gpt-oss model's attention heads (64).

    Why: vLLM splits attention heads evenly across TP ranks and refuses to start with
    "Total number of attention heads (64) must be divisible by tensor parallel size (3)". Valid
    sizes for gpt-oss are 1, 2, 4, 8 (the guide uses those).

    Fix: use the largest valid size not above your GPU count; run extra GPUs as another replica.

    Source: vLLM ModelConfig.verify_with_parallel_config; vllm-project/vllm#52435; the model's
    config.json (num_attention_heads) via the knowledge.
    """
    model = served_model(snap, kb)
    tp = tensor_parallel_size(snap)
    if model.num_attention_heads % tp == 0:
        return
    good = max(d for d in range(1, tp + 1) if model.num_attention_heads % d == 0)
    yield Finding(
        id="tp-heads-divisor",
        severity="error",
        title=f"Tensor-parallel size {tp} does not divide {model.name}'s {model.num_attention_heads} attention heads",
        evidence=evidence(snap, ["service.serve"], model=model.name, heads=model.num_attention_heads, tensor_parallel_size=tp),
        fix=Fix(
            text=f"Serve with --tensor-parallel-size {good} (run the remaining GPUs as another replica).",
            commands=edit_unit_commands(snap, f"set --tensor-parallel-size {good}"),
        ),
        links=["https://github.com/vllm-project/vllm/issues/52435", *model.links],
    )


def _visible_gpus(snap) -> tuple[int, str]:
    """How many GPUs vLLM can see, and why (CUDA_VISIBLE_DEVICES narrows the count)."""
    _, _, env = effective_env(snap)
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and str(cvd).strip() not in ("", "all"):
        ids = [x for x in str(cvd).split(",") if x.strip()]
        return len(ids), f"CUDA_VISIBLE_DEVICES={cvd}"
    return gpu_count(snap), "GPUs listed by nvidia-smi / rocm-smi"


@check(
    "tp-exceeds-gpus",
    severity="error",
    title="Tensor-parallel size is larger than the GPUs vLLM can see",
    category="gpu",
    needs=("service.serve",),
    links=["https://docs.vllm.ai/en/latest/serving/parallelism_scaling.html"],
)
def tp_exceeds_gpus(snap, kb):
    """`--tensor-parallel-size` x `--pipeline-parallel-size` (x the data-parallel ranks on this node)
    exceeds the GPUs visible to vLLM.

    Why: vLLM needs one GPU per rank on a single node; with fewer it waits for Ray resources or
    fails with "The number of required GPUs exceeds the total number of available GPUs".
    CUDA_VISIBLE_DEVICES in the service's environment narrows what it can see.

    Fix: lower the TP size to the visible GPUs (and a divisor of the heads), or widen
    CUDA_VISIBLE_DEVICES.

    Source: vLLM parallelism docs; vLLM ParallelConfig world-size check.
    """
    if not (snap.has("nvidia.gpus") or snap.has("rocm.gpus")):
        raise NotApplicable("no GPU list collected (nvidia.gpus / rocm.gpus)")
    tp = tensor_parallel_size(snap)
    pp = as_int(flag_value(snap, "--pipeline-parallel-size"), 1) or 1
    dp = as_int(flag_value(snap, "--data-parallel-size"), 1) or 1
    if has_flag(snap, "--data-parallel-size-local"):
        dp = as_int(flag_value(snap, "--data-parallel-size-local"), dp) or dp  # the ranks on this node
    visible, why = _visible_gpus(snap)
    if tp * pp * dp <= visible:
        return
    yield Finding(
        id="tp-exceeds-gpus",
        severity="error",
        title=f"TP {tp} x PP {pp}" + (f" x DP {dp}" if dp > 1 else "") + f" needs {tp * pp * dp} GPUs; vLLM can see {visible}",
        evidence=evidence(snap, ["service.serve", "nvidia.gpus", "service"], tensor_parallel_size=tp, pipeline_parallel_size=pp,
                          data_parallel_size=dp, visible=visible, visible_from=why),
        fix=Fix(
            text=f"Serve with --tensor-parallel-size <= {visible} (a divisor of 64 for gpt-oss), or make more GPUs visible.",
            commands=edit_unit_commands(snap, "lower --tensor-parallel-size"),
        ),
        links=["https://docs.vllm.ai/en/latest/serving/parallelism_scaling.html"],
    )


def _gpu_memory_gib(snap, kb, tp: int) -> tuple[float, str] | None:
    """The smallest memory among the GPUs a TP group uses (measured, else the family's)."""
    sizes = []
    for g, fam in gpu_families(snap, kb):
        if g.get("memory_mib"):
            sizes.append((g["memory_mib"] / 1024, f"GPU {g.get('index')} {g.get('name')}"))
        elif fam is not None:
            sizes.append((fam.memory_gib, f"{fam.name} (knowledge)"))
    if not sizes:
        return None
    return min(sizes[:tp] if len(sizes) >= tp else sizes)


@check(
    "model-memory-fit",
    severity="error",
    title="The model's weights (and one full-length sequence) do not fit the GPU budget",
    category="gpu",
    needs=("service.serve",),
    links=[GUIDE + "#known-limitations", "https://docs.vllm.ai/en/latest/configuration/conserving_memory.html"],
)
def model_memory_fit(snap, kb):
    """The served gpt-oss model does not fit: weights per GPU exceed the memory vLLM may use, or
    what is left cannot hold the KV cache of one sequence of `--max-model-len`.

    Why: vLLM may use `gpu-memory-utilization` (default 0.9) of each GPU; the MXFP4 weights are
    split across the TP ranks. If they do not fit, loading dies with CUDA out of memory; if the
    rest cannot hold one full-length sequence's KV cache, start-up fails with "... KV cache is
    needed, which is larger than the available KV cache memory". Sizes come from the knowledge
    (weights, layers, KV heads, sliding-window layers); GPU memory is the measured one.

    Fix: raise the TP size, raise `--gpu-memory-utilization` (keep it below 0.95 with TP>1 on
    H100), or lower `--max-model-len`.

    Source: the gpt-oss vLLM guide, Known Limitations; vLLM "Conserving memory" docs; model sizes
    from the models' config.json and safetensors index (knowledge).
    """
    model = served_model(snap, kb)
    tp = tensor_parallel_size(snap)
    mem = _gpu_memory_gib(snap, kb, tp)
    if mem is None:
        raise NotApplicable("no GPU memory size known (no GPU list and no knowledge family)")
    mem_gib, mem_from = mem
    util, _ = gpu_memory_utilization(snap)
    budget = mem_gib * util
    weights = model.weights_gib / tp
    max_len = flag_value(snap, "--max-model-len")
    try:
        max_len = int(max_len) if max_len is not None else model.max_model_len
    except (TypeError, ValueError):
        max_len = model.max_model_len
    kv_dtype = str(flag_value(snap, "--kv-cache-dtype") or "auto")
    kv_bytes = 1 if kv_dtype.startswith("fp8") else 2
    kv_gib = model.kv_bytes_for_context(max_len, kv_bytes) / tp / GIB
    seen = dict(
        model=model.name, tensor_parallel_size=tp, gpu_memory_gib=round(mem_gib, 1), gpu=mem_from,
        gpu_memory_utilization=util, weights_per_gpu_gib=round(weights, 1), budget_gib=round(budget, 1),
        max_model_len=max_len, kv_per_gpu_for_one_sequence_gib=round(kv_gib, 2),
    )
    keys = ["service.serve", "nvidia.gpus"]
    if weights >= budget:
        yield Finding(
            id="model-memory-fit",
            severity="error",
            title=f"{model.name} needs {weights:.1f} GiB per GPU at TP {tp}; "
            f"{util:g} x {mem_gib:.0f} GiB allows {budget:.1f} GiB",
            evidence=evidence(snap, keys, **seen),
            fix=Fix(text="Use more GPUs (a larger --tensor-parallel-size) or a GPU with more memory.", commands=[]),
            links=[GUIDE + "#known-limitations", *model.links],
        )
    elif weights + kv_gib > budget:
        yield Finding(
            id="model-memory-fit",
            severity="warning",
            title=f"After {weights:.1f} GiB of weights, {budget - weights:.1f} GiB per GPU is left; "
            f"one {max_len}-token sequence needs {kv_gib:.1f} GiB of KV cache",
            evidence=evidence(snap, keys, **seen),
            fix=Fix(text="Lower --max-model-len, raise --gpu-memory-utilization or the TP size.", commands=[]),
            links=[GUIDE + "#known-limitations", *model.links],
        )


@check(
    "memory-fit-known-oom",
    severity="error",
    title="A GPU-memory setting the guide reports as out-of-memory",
    category="gpu",
    needs=("service.serve",),
    links=[GUIDE + "#known-limitations"],
)
def memory_fit_known_oom(snap, kb):
    """The model / GPU family / TP size has a known memory limit and the serve flags break it.

    Why: the guide lists measured limits, e.g. gpt-oss-120b on one H100 OOMs with the default
    gpu-memory-utilization and batched tokens ("increase your gpu memory utilization or lower
    batched token"), and on two H100s OOMs with utilization 0.95 or more. The limits are
    knowledge rows (models.toml `memory_fit`), each with its source.

    Fix: apply the row's settings (the guide's command line for that case).

    Source: the gpt-oss vLLM guide, Known Limitations.
    """
    model = served_model(snap, kb)
    tp = tensor_parallel_size(snap)
    util, explicit = gpu_memory_utilization(snap)
    batched = flag_value(snap, "--max-num-batched-tokens")
    try:
        batched = int(batched) if batched is not None else None
    except (TypeError, ValueError):
        batched = None
    for fam in _present_families(snap, kb):
        fit = kb.memory_fit(model.name, fam.name, tp)
        if fit is None:
            continue
        problems = []
        if fit.gpu_memory_utilization_below is not None and util >= fit.gpu_memory_utilization_below:
            problems.append(f"gpu-memory-utilization {util:g} is not below {fit.gpu_memory_utilization_below:g}")
        if fit.gpu_memory_utilization_min is not None and util < fit.gpu_memory_utilization_min:
            # The guide: raise utilization OR lower the batched tokens; either avoids the OOM.
            lowered = fit.max_num_batched_tokens_max is not None and batched is not None and batched <= fit.max_num_batched_tokens_max
            if not lowered:
                problems.append(
                    f"gpu-memory-utilization {util:g}{'' if explicit else ' (default)'} is below {fit.gpu_memory_utilization_min:g}"
                    + (f" and max-num-batched-tokens is {batched or 'the default'} (> {fit.max_num_batched_tokens_max})"
                       if fit.max_num_batched_tokens_max is not None else "")
                )
        if not problems:
            continue
        yield Finding(
            id="memory-fit-known-oom",
            severity="error",
            title=f"{model.name} on {fam.name} at TP {tp}: " + "; ".join(problems),
            evidence=evidence(snap, ["service.serve", "nvidia.gpus"], model=model.name, family=fam.name, tensor_parallel_size=tp,
                              gpu_memory_utilization=util, max_num_batched_tokens=batched, limit=fit.note or None),
            fix=Fix(
                text="Serve with the settings the guide gives for this case"
                + (f": {' '.join(fit.serve_flags)}" if fit.serve_flags else "."),
                commands=edit_unit_commands(snap, f"add: {' '.join(fit.serve_flags)}") if fit.serve_flags else [],
            ),
            links=fit.links or [GUIDE + "#known-limitations"],
        )


@check(
    "recipe-env-for-other-gpu",
    severity="warning",
    title="Env settings copied from another GPU family's recipe",
    category="gpu",
    needs=(),
    links=[GUIDE],
)
def recipe_env_for_other_gpu(snap, kb):
    """The serving environment holds a setting (name and value) that only another GPU family's
    recipe prescribes.

    Why: recipes are per family: AITER switches are for AMD Instinct, TRT-LLM attention switches
    for B200, `VLLM_ATTENTION_BACKEND=TRITON_ATTN_VLLM_V1` for A100. Copied to another box they
    are ignored at best; at worst they pick a slower or unsupported kernel (Triton attention
    instead of FA3 on Hopper; FlashInfer paths that reject attention sinks). A variable that this
    box's own recipes also use, or a value no recipe prescribes, is not reported.

    Fix: remove them from the environment vLLM runs with.

    Source: the gpt-oss vLLM guide's per-GPU sections, as knowledge recipe rows.
    """
    families = _present_families(snap, kb)
    if not families:
        raise NotApplicable("no GPU of a known family")
    mine = {f.name for f in families}
    ours: set[str] = set()  # names any of this box's recipes set (whatever the value)
    theirs: dict[tuple[str, str], set[str]] = {}  # (name, value) -> the families that prescribe it
    for r in kb.recipes:
        for n, val in r.env.items():
            if mine & set(r.families):
                ours.add(n)
            else:
                theirs.setdefault((n, str(val)), set()).update(r.families)
    label, key, env = effective_env(snap)
    foreign = {n: sorted(theirs[(n, str(val))]) for n, val in env.items() if (n, str(val)) in theirs and n not in ours}
    if not foreign:
        return
    yield Finding(
        id="recipe-env-for-other-gpu",
        severity="warning",
        title=", ".join(f"{n}={env[n]}" for n in sorted(foreign))
        + f" come(s) from the {', '.join(sorted({f for v in foreign.values() for f in v}))} recipe; "
        f"this box has {', '.join(sorted(mine))}",
        evidence=evidence(snap, [key, "nvidia.gpus", "rocm.gpus"], environment=label,
                          settings={n: {"value": env[n], "recipe_of": fams} for n, fams in foreign.items()},
                          families=sorted(mine)),
        fix=Fix(text=f"Remove them from the {label} environment.", commands=_env_fix(snap, label, unset=sorted(foreign))),
        links=[GUIDE],
    )
