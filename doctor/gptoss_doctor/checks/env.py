"""Checks of environment variables and backend names against the installed vLLM."""

from __future__ import annotations

from ..findings import Fix, check, found
from ._util import (
    NotApplicable,
    effective_env,
    env_file_delete,
    env_file_hint,
    evidence,
    fact_obj,
    flag_value,
    obj,
    serve,
    truthy,
    edit_unit_commands,
    restart_command,
    service_commands,
    unit_name,
    vllm_version,
)

ENV_LINKS = ["https://github.com/vllm-project/vllm/pull/32812", "https://github.com/vllm-project/vllm/issues/50292"]


def _var_status(snap, kb, name: str, vllm: str) -> tuple[str, object | None]:
    """("valid" | "deprecated" | "removed" | "not-yet" | "unknown", lifecycle row or None).

    The installed vLLM's own list of env vars (read from its envs.py) is the authority on
    what it reads; the knowledge adds deprecation and the replacement."""
    lc = kb.env_vars.get(name)
    if lc is not None and getattr(lc, "upstream", True) is False:
        return "fork-only", lc
    known = snap.get("vllm.env_vars")
    status = kb.lifecycle_status(lc, vllm) if lc is not None else None
    if isinstance(known, list) and name.startswith("VLLM_"):
        if name not in known:
            return (status if status in ("removed", "not-yet") else "unknown"), lc
        return ("deprecated" if status == "deprecated" else "valid"), lc
    if status is None:
        return "valid", None  # neither list knows it: not ours to judge
    return status, lc


def _stale_vars(snap, kb, env: dict, vllm: str) -> list[dict]:
    stale = []
    for name in sorted(env):
        if not (name.startswith("VLLM_") or name in kb.env_vars):
            continue
        status, lc = _var_status(snap, kb, name, vllm)
        if status == "valid":
            continue
        stale.append({
            "name": name,
            "value": env[name],
            "status": status,
            "replacement": getattr(lc, "replacement", None),
            "note": getattr(lc, "note", "") or None,
            "source": getattr(lc, "source", None),
        })
    return stale


def _describe(s: dict, vllm: str) -> str:
    what = {
        "removed": f"removed before vLLM {vllm}",
        "not-yet": f"not yet in vLLM {vllm}",
        "deprecated": f"deprecated in vLLM {vllm}",
        "unknown": f"not read by vLLM {vllm}",
        "fork-only": "only in a vendor fork, never read by upstream vLLM",
    }[s["status"]]
    return f"{s['name']} ({what}" + (f"; use {s['replacement']}" if s["replacement"] else "") + ")"


def _stale_finding(snap, kb, label: str, key: str, env: dict):
    vllm = vllm_version(snap)
    stale = _stale_vars(snap, kb, env, vllm)
    if not stale:
        return
    worst = "warning" if any(s["status"] != "deprecated" for s in stale) else "info"
    names = [s["name"] for s in stale]
    if label == "service":
        path = env_file_hint(snap)
        commands = [env_file_delete(path, names), restart_command(snap)]
        where = f"the service's environment ({path})"
    else:
        commands = [f"unset {' '.join(names)}"]
        where = "this shell"
    replacements = [f"{s['name']} -> {s['replacement']}" for s in stale if s["replacement"]]
    words = {"removed": "removed", "not-yet": "not yet there", "deprecated": "deprecated", "unknown": "unknown",
             "fork-only": "fork-only"}
    yield found(
        severity=worst,
        title=f"vLLM {vllm} ignores or deprecates {len(stale)} variable(s) in {where}: "
        + ", ".join(f"{s['name']} ({words[s['status']]})" for s in stale),
        evidence=evidence(snap, [key, "vllm.install", "vllm.env_vars"], vllm=vllm, variables=stale,
                          explained=[_describe(s, vllm) for s in stale]),
        fix=Fix(
            text=f"Remove them from {where}"
            + (". Replacements: " + "; ".join(replacements) if replacements else "."),
            commands=commands,
        ),
        links=[*ENV_LINKS, *sorted({s["source"] for s in stale if s["source"] and s["source"].startswith("http")})],
    )


@check(
    "stale-vllm-env",
    severity="warning",
    title="VLLM_* variables in this shell that the installed vLLM ignores or deprecates",
    category="env",
    needs=("env.shell", "vllm.install"),
    links=ENV_LINKS,
)
def stale_vllm_env(snap, kb):
    """The doctor's shell sets VLLM_* variables the installed vLLM does not read (or deprecates).

    Why: vLLM renamed and removed many variables (VLLM_ATTENTION_BACKEND was deprecated in 0.13
    and removed in 0.15 for `--attention-backend`; the launch-day VLLM_USE_TRTLLM_* and MoE
    switches are gone). A removed variable is silently ignored (at most "Unknown vLLM
    environment variable detected"), so a recipe copied from an older guide quietly stops doing
    what it says. Names come from the installed vLLM's envs.py; replacements from the knowledge.

    Fix: unset them and pass the replacement serve flag instead.

    Source: vllm-project/vllm#32812 (remove deprecated env vars), #50292 (VLLM_ATTENTION_BACKEND
    ignored on 0.26); lifecycle rows in the knowledge.
    """
    yield from _stale_finding(snap, kb, "shell", "env.shell", fact_obj(snap, "env.shell"))


@check(
    "stale-vllm-env-service",
    severity="warning",
    title="VLLM_* variables in the service's environment that the installed vLLM ignores or deprecates",
    category="env",
    needs=("service", "vllm.install"),
    links=ENV_LINKS,
)
def stale_vllm_env_service(snap, kb):
    """The vLLM service's environment (unit Environment= and EnvironmentFile) sets VLLM_* variables
    the installed vLLM does not read (or deprecates).

    Why: as for `stale-vllm-env`, but here it changes what the running server does: after an
    upgrade the old recipe variables in the EnvironmentFile stop working without an error.

    Fix: delete them from the EnvironmentFile, add the replacement serve flags, restart.

    Source: vllm-project/vllm#32812, #50292; lifecycle rows in the knowledge.
    """
    env = obj(fact_obj(snap, "service").get("environment"))
    yield from _stale_finding(snap, kb, "service", "service", env)


def _backend_status(snap, kb, name: str, vllm: str) -> tuple[str, object | None]:
    lc = kb.attention_backends.get(name)
    known = snap.get("vllm.attention_backends")
    if isinstance(known, list) and known:
        if name in known:
            return "valid", lc
        return (kb.lifecycle_status(lc, vllm) if lc is not None else "unknown"), lc
    if lc is None:
        return "unknown", None
    return kb.lifecycle_status(lc, vllm), lc


def _backend_fix(snap, where: str, name: str, replacement: str | None) -> list[str]:
    if where.startswith("service") and "VLLM_ATTENTION_BACKEND" in where:
        path = env_file_hint(snap)
        edit = (f"sed -i -E 's/^(export +)?VLLM_ATTENTION_BACKEND=.*/VLLM_ATTENTION_BACKEND={replacement}/' {path}"
                if replacement else env_file_delete(path, ["VLLM_ATTENTION_BACKEND"]))
        return [edit, restart_command(snap)]
    if where.startswith("shell"):
        return [f"export VLLM_ATTENTION_BACKEND={replacement}"] if replacement else ["unset VLLM_ATTENTION_BACKEND"]
    return edit_unit_commands(snap, f"--attention-backend {replacement or '(remove)'}")


@check(
    "attention-backend-unknown",
    severity="error",
    title="Attention backend name unknown to the installed vLLM",
    category="env",
    needs=("vllm.install",),
    links=["https://github.com/vllm-project/vllm/pull/25489"],
)
def attention_backend_unknown(snap, kb):
    """The attention backend forced by `--attention-backend` or VLLM_ATTENTION_BACKEND is not a
    name the installed vLLM knows.

    Why: backend names changed (`TRITON_ATTN_VLLM_V1` became `TRITON_ATTN` in vLLM#25489); an
    unknown name stops start-up with "Unknown attention backend: 'TRITON_ATTN_VLLM_V1'. Valid
    options are: ...". The env var form only counts where this vLLM still reads the variable
    (otherwise `stale-vllm-env*` reports the variable itself).

    Fix: use the current name (the knowledge's replacement), or drop the override and let vLLM
    choose; gpt-oss needs a sink-capable backend, which the automatic choice picks.

    Source: vllm-project/vllm#25489; vLLM `AttentionBackendEnum` registry of the installed
    version (read from its source).
    """
    vllm = vllm_version(snap)
    uses = _forced_backends(snap, kb, vllm)
    if not uses:
        return
    for where, key, name in uses:
        status, lc = _backend_status(snap, kb, name, vllm)
        if status in ("valid", "deprecated"):
            continue
        replacement = getattr(lc, "replacement", None)
        valid = snap.get("vllm.attention_backends")
        yield found(
            title=f"Attention backend {name!r} ({where}) is {status} on vLLM {vllm}"
            + (f"; use {replacement}" if replacement else ""),
            evidence=evidence(snap, [key, "vllm.attention_backends"], backend=name, set_in=where, status=status,
                              valid_backends=valid if isinstance(valid, list) else None),
            fix=Fix(
                text=(f"Replace {name} with {replacement}" if replacement else f"Remove the {name} override")
                + " (or drop the override: vLLM picks a sink-capable backend for gpt-oss itself).",
                commands=_backend_fix(snap, where, name, replacement),
            ),
            links=["https://github.com/vllm-project/vllm/pull/25489", *([lc.source] if lc is not None else [])],
        )


@check(
    "v0-engine-forced",
    severity="error",
    title="VLLM_USE_V1=0 forces the V0 engine, which has no attention sinks",
    category="env",
    needs=("vllm.install",),
    links=["https://github.com/vllm-project/vllm/issues/22383"],
)
def v0_engine_forced(snap, kb):
    """VLLM_USE_V1=0 is set where the installed vLLM still honours it.

    Why: gpt-oss's attention sinks were only wired into the V1 engine's backends; V0 fails at
    model load with "FlashAttentionImpl.__init__() got an unexpected keyword argument 'sinks'".
    (From 0.11 the V0 engine and the variable are gone: `stale-vllm-env*` reports it then.)

    Fix: unset VLLM_USE_V1 (V1 is the default).

    Source: vllm-project/vllm#22383, #24062.
    """
    vllm = vllm_version(snap)
    lc = kb.env_vars.get("VLLM_USE_V1")
    if lc is not None and kb.lifecycle_status(lc, vllm) not in ("valid", "deprecated"):
        raise NotApplicable(f"vLLM {vllm} no longer reads VLLM_USE_V1")
    label, key, env = effective_env(snap)
    value = env.get("VLLM_USE_V1")
    if value is None or truthy(value):
        return
    commands = (
        [env_file_delete(env_file_hint(snap), ["VLLM_USE_V1"]), restart_command(snap)]
        if label == "service" else ["unset VLLM_USE_V1"]
    )
    yield found(
        title=f"VLLM_USE_V1={value} in the {label} environment: gpt-oss will fail with \"unexpected keyword argument 'sinks'\"",
        evidence=evidence(snap, [key, "vllm.install"], environment=label, VLLM_USE_V1=value, vllm=vllm),
        fix=Fix(text="Remove VLLM_USE_V1 so vLLM uses its V1 engine.", commands=commands),
    )


@check(
    "service-env-file-missing",
    severity="error",
    title="The service's EnvironmentFile does not exist",
    category="env",
    needs=("service",),
    links=["https://www.freedesktop.org/software/systemd/man/latest/systemd.exec.html#EnvironmentFile="],
)
def service_env_file_missing(snap, kb):
    """An EnvironmentFile= of the vLLM unit (without the optional `-` prefix) does not exist.

    Why: systemd refuses to start the unit ("Failed to load environment files"), so vLLM never
    runs; and everything the file should set (VLLM_API_KEY, HF_HOME, the recipe's variables) is
    missing from what the doctor sees, too. A file the doctor may not read (permission denied
    when not run as root) is not reported: systemd reads it as root.

    Fix: restore the file (re-run the deploy, which writes it 0640 root:gptoss).

    Source: systemd.exec(5) EnvironmentFile=; docs/design.md (/etc/gptoss/gptoss.env).
    """
    errors = obj(fact_obj(snap, "service").get("environment_file_errors"))
    missing = {p: e for p, e in errors.items() if "no such file" in str(e).lower()}
    if not missing:
        return
    unit = unit_name(snap)
    yield found(
        # gptoss-supervise refuses a missing EnvironmentFile= as systemd does
        title=f"{unit} reads {', '.join(missing)}, which does not exist: "
        f"{'gptoss-supervise' if service_commands(snap).supervised else 'systemd'} will not start it",
        evidence=evidence(snap, ["service"], environment_file_errors=missing, unit=unit),
        fix=Fix(
            text="Re-run the deploy for this host (it writes the file), or create it with the service's settings:",
            commands=[*(f"install -m 0640 -o root -g gptoss /dev/null {p}" for p in missing),
                      restart_command(snap)],
        ),
    )


def _box_vendors(snap) -> set[str]:
    from ._util import nvidia_gpus, rocm_gpus  # noqa: PLC0415

    return {v for v, gpus in (("nvidia", nvidia_gpus(snap)), ("amd", rocm_gpus(snap))) if gpus}


@check(
    "attention-backend-wrong-gpu",
    severity="error",
    title="Attention backend forced for the other GPU vendor",
    category="env",
    needs=("service.serve",),
    links=["https://github.com/vllm-project/vllm/issues/30919"],
)
def attention_backend_wrong_gpu(snap, kb):
    """The service forces an attention backend (`--attention-backend`, or VLLM_ATTENTION_BACKEND
    where still read) that exists only for the other GPU vendor (a ROCM_* backend on NVIDIA).

    Why: a recipe copied across vendors selects a backend the platform does not register, and
    vLLM stops with "Selected backend ... is not valid for this configuration" or "Unknown
    attention backend". The vendor of each backend name is knowledge data.

    Fix: drop the override (vLLM chooses a sink-capable backend for gpt-oss on each GPU) or use
    this vendor's recipe.

    Source: vllm-project/vllm#30919 (a forced backend rejected for gpt-oss); the gpt-oss
    recipe's per-vendor sections; knowledge lifecycle rows (vendor).
    """
    vendors = _box_vendors(snap)
    if len(vendors) != 1:
        raise NotApplicable("no GPUs, or GPUs of both vendors")
    (vendor,) = vendors
    forced = []
    flag = flag_value(snap, "--attention-backend", "--attention-config.backend")
    if flag:
        forced.append(("--attention-backend", str(flag)))
    label, _, env = effective_env(snap)
    if env.get("VLLM_ATTENTION_BACKEND"):
        forced.append((f"{label} VLLM_ATTENTION_BACKEND", str(env["VLLM_ATTENTION_BACKEND"])))
    wrong = []
    for where, name in forced:
        lc = kb.attention_backends.get(name)
        if lc is not None and lc.vendor and lc.vendor != vendor:
            wrong.append({"set_in": where, "backend": name, "backend_vendor": lc.vendor, "source": lc.source})
    if not wrong:
        return
    yield found(
        title=", ".join(f"{w['backend']} ({w['set_in']}) is an {w['backend_vendor'].upper()} backend" for w in wrong)
        + f"; this box has {vendor.upper()} GPUs",
        evidence=evidence(snap, ["service.serve", "service", "nvidia.gpus", "rocm.gpus"], vendor=vendor, forced=wrong),
        fix=Fix(
            text="Remove the override and let vLLM choose:",
            commands=[_backend_fix(snap, w["set_in"], w["backend"], None)[0] for w in wrong] + [restart_command(snap)],
        ),
    )


def _forced_backends(snap, kb, vllm: str) -> list[tuple[str, str, str]]:
    """[(where, fact key, backend)] the service or shell forces: --attention-backend, and
    VLLM_ATTENTION_BACKEND where this vLLM still reads it."""
    forced = []
    flag = flag_value(snap, "--attention-backend", "--attention-config.backend")
    if flag:
        forced.append(("service flag --attention-backend", "service.serve", str(flag)))
    env_lc = kb.env_vars.get("VLLM_ATTENTION_BACKEND")
    env_read = env_lc is None or kb.lifecycle_status(env_lc, vllm) in ("valid", "deprecated")
    known_vars = snap.get("vllm.env_vars")
    if isinstance(known_vars, list):
        env_read = "VLLM_ATTENTION_BACKEND" in known_vars
    label, key, env = effective_env(snap)
    if env_read and env.get("VLLM_ATTENTION_BACKEND"):
        forced.append((f"{label} VLLM_ATTENTION_BACKEND", key, str(env["VLLM_ATTENTION_BACKEND"])))
    return forced


SINKS_LINKS = ["https://github.com/vllm-project/vllm/issues/30919", "https://github.com/vllm-project/vllm/issues/28589"]


@check(
    "attention-backend-no-sinks",
    severity="error",
    title="A forced attention backend cannot serve gpt-oss's attention sinks on this GPU",
    category="env",
    links=SINKS_LINKS,
)
def attention_backend_no_sinks(snap, kb):
    """`--attention-backend` (or VLLM_ATTENTION_BACKEND while vLLM read it) forces a backend that
    has no attention-sink kernel for this GPU's architecture in the installed vLLM.

    Why: gpt-oss's attention has learned sinks, and vLLM only runs it on a backend whose
    `supports_sink()` holds on the GPU; a forced backend without them stops start-up with
    "Selected backend AttentionBackendEnum.FLASHINFER is not valid for this configuration.
    Reason: ['attention sinks not supported']" (vLLM 0.26.0 on an H200: FlashInfer's sinks were
    Blackwell-only until 0.28 added SM12x and 0.30 Hopper) or "sink setting not supported"
    (FLASH_ATTN on RTX 50xx / RTX PRO 6000: FA2 has no sinks). Which backend serves sinks on
    which GPU arch, per vLLM range, is knowledge data (attention_sinks.toml).

    Fix: drop the override (vLLM picks a sink-capable backend for gpt-oss: FLASH_ATTN on Hopper,
    FLASHINFER on Blackwell, TRITON_ATTN elsewhere), or force one that serves sinks here.

    Source: vllm-project/vllm#30919, #28589, #24482; the backends' supports_sink() in the vLLM
    wheels; tests/fixtures/logs/vllm0260-flashinfer-forced-on-h200.log (recorded on an H200).
    """
    from ._util import gpu_families, target_vllm  # noqa: PLC0415

    model = serve(snap).get("model")
    if model and kb.model(str(model)) is None:
        raise NotApplicable(f"the service serves {model!r}, not a gpt-oss model (only gpt-oss has sinks here)")
    vllm = target_vllm(snap, kb)
    archs = sorted({fam.arch for _, fam in gpu_families(snap, kb) if fam is not None})
    if not archs:
        raise NotApplicable("no GPU of a family the knowledge knows")
    vendors = _box_vendors(snap)
    lacking = []
    for where, key, backend in _forced_backends(snap, kb, vllm):
        lc = kb.attention_backends.get(backend)
        if lc is not None and lc.vendor and lc.vendor not in vendors:
            continue  # another vendor's backend: attention-backend-wrong-gpu reports it
        status, _ = _backend_status(snap, kb, backend, vllm)
        if status not in ("valid", "deprecated"):
            continue  # a name this vLLM does not know: attention-backend-unknown reports it
        row = kb.sink_support(backend, vllm)
        if row is None:
            continue  # the knowledge does not know this backend's sinks in this vLLM: say nothing
        no = [a for a in archs if not kb.serves_sinks(backend, vllm, a)]
        if no:
            lacking.append({"set_in": where, "fact": key, "backend": backend, "archs_without_sinks": no,
                            "archs_with_sinks": list(row.archs), "note": row.note, "source": row.source})
    if not lacking:
        return
    alternatives = [b for b in ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN", "ROCM_AITER_UNIFIED_ATTN")
                    if all(kb.serves_sinks(b, vllm, a) for a in archs)]
    yield found(
        title="; ".join(f"{x['backend']} ({x['set_in']}) has no attention sinks on {'/'.join(x['archs_without_sinks'])} "
                        f"in vLLM {vllm}" for x in lacking) + ": gpt-oss will not start",
        evidence=evidence(snap, ["service.serve", "service", "env.shell", "nvidia.gpus", "rocm.gpus", "vllm.install"],
                          vllm=vllm, gpu_archs=archs, forced=lacking, sink_capable_here=alternatives),
        fix=Fix(
            text="Remove the override and let vLLM choose a sink-capable backend"
            + (f" (here: {', '.join(alternatives)})" if alternatives else "") + ":",
            commands=[_backend_fix(snap, x["set_in"], x["backend"], None)[0] for x in lacking]
            + [restart_command(snap)],
        ),
        links=[*SINKS_LINKS, *sorted({u for x in lacking for u in kb.sink_support(x["backend"], vllm).links})],
    )
