"""The snapshot: every fact the doctor collected about one box, as plain JSON.

A fact is exactly one of three states, so a check can tell "not there" from "could not look":

    {"value": ...}                       collected
    {"absent": "why it is not there"}    nothing to collect (no NVIDIA driver, no venv, ...)
    {"failed": "the error"}              collecting it broke (timeout, unreadable file, ...)

Each state may also carry "source": where the value came from (a path, a command, an env var).
The snapshot is {"schema": SCHEMA, "doctor_version", "collected_at", "host", "duration_s",
"facts": {key: fact}}; the keys and their value shapes are listed in FACT_KEYS.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .records import field, record

SCHEMA = "gptoss-doctor/snapshot@1"

# Every fact key the collectors write, with the shape of its value. Checks read only these.
FACT_KEYS: dict[str, str] = {
    "host.os": '{"id": "debian", "version_id": "12", "pretty_name": str}',
    "host.hostname": "str",
    "host.systemd": "bool: PID 1 is systemd",
    "host.shm_bytes": "int: size of /dev/shm",
    "nvidia.driver": '{"version": "580.159.04"}  (source: /proc/driver/nvidia/version or nvidia-smi)',
    "nvidia.cuda_driver_max": '"13.0": the newest CUDA this driver runs (nvidia-smi / NVML)',
    "nvidia.gpus": '[{"index": 0, "name": "NVIDIA H200", "compute_cap": "9.0", "memory_mib": 143771, '
    '"memory_used_mib": int | None, "persistence_mode": "Enabled", "uuid": str}]',
    "nvidia.compute_apps": '[{"pid": int, "process_name": str, "used_mib": int | None, "gpu_uuid": str, '
    '"command": str, "is_service": bool, "why": str | None}]  (nvidia-smi --query-compute-apps, asked only when '
    'some GPU has 1 GiB or more in use; [] otherwise)',
    "nvidia.nvswitch": '{"count": int}  (source: /proc/driver/nvidia-nvswitch/devices, /dev/nvidia-nvswitch*)',
    "nvidia.fabric_manager": '{"installed": bool, "active": bool | None, "version": str | None}',
    "rocm.version": '"6.4.1"  (source: /opt/rocm/.info/version)',
    "rocm.gpus": '[{"index": 0, "name": str, "gfx": "gfx942", "memory_mib": int}]',
    "cuda_home": '{"path": str, "rule": "CUDA_HOME" | "CUDA_PATH" | "nvcc-on-PATH" | "/usr/local/cuda", '
    '"exists": bool, "nvcc": str | None, "version": "13.0" | None, "version_from": "nvcc" | "version.json" | None, '
    '"has_cuda_h": bool (include/cuda.h under path), "nvcc_error": str (only when nvcc --version failed)}',
    "venv": '{"path": str, "rule": "--venv" | "VIRTUAL_ENV" | "service" | "manifest", "python": "3.12.3" | None, '
    '"site_packages": [str], "executable": str (bin/python), "executable_link": str | None (its link target), '
    '"executable_ok": bool (False: a link whose target is gone), "home": str | None (pyvenv.cfg), '
    '"deployed": bool (the service\'s or the manifest\'s venv)}',
    "venv.distributions": '[{"name": canonical str, "version": str, "installer": str | None, '
    '"location": str, "dist_info": str, "top_level": [str], "metadata": false (only for a dist-info without '
    'METADATA: name and version then come from its directory name)}]  (top_level: first path parts owned per RECORD)',
    "venv.leftovers": '[{"name": "~riton", "path": str, "kind": "dir" | "dist-info" | "file"}]  '
    "(what an interrupted pip uninstall leaves in site-packages)",
    "torch.build": '{"version": "2.11.0+cu130", "cuda": "13.0" | None, "hip": str | None, "path": str}  '
    "(read from torch/version.py as text)",
    "vllm.install": '{"version": "0.26.0" (dist-info), "path": str, "version_py": str | None (vllm/_version.py)}',
    "vllm.env_vars": "[str]: the VLLM_* names this vLLM's envs.py knows (read as text)",
    "vllm.attention_backends": "[str]: backend names this vLLM's registry knows (read as text)",
    "env.shell": "{name: value}: relevant env vars of the doctor's own shell, secrets redacted",
    "service": '{"unit": str, "unit_path": str, "user": str | None, "group": str | None, "supplementary_groups": [str], '
    '"environment_files": [str], '
    '"environment": {name: value} (redacted; EnvironmentFile= over Environment=), '
    '"environment_file_errors": {path: error}, "argv": [str] (redacted, $VARs expanded), "venv": str | None}',
    "service.cuda_home": '{...}: the shape of cuda_home, resolved from the deployed service\'s environment '
    "(its Environment=/EnvironmentFile= values, systemd's default PATH unless it sets one; the manifest's env "
    "when there is no unit); absent when nothing is deployed. Checks judge it, not the shell's, when present",
    "service.serve": '{"model": str, "host": str, "port": int, "tensor_parallel_size": int, '
    '"gpu_memory_utilization": float | None, "api_key_set": bool, "flags": {flag: value}}  '
    "(parsed from the service's argv and environment)",
    "service.manager": '{"manager": "systemd" | "supervisor", "why": str, "pid1_systemd": bool, '
    '"manifest_manager": str | None, "unit": str, "supervise": str, "supervise_installed": bool, '
    '"log_file": str | None (supervisor), "log_exists": bool (supervisor), "state": "active" | "failed" | '
    '"auto-restart" | "inactive" | ... | None, "running": bool | None, "state_error": str (only when unknown), '
    '"pid": int | None, "main_pid": int | None, "pid_file": str, "state_file": str (supervisor)}  '
    "(systemd: `systemctl is-active`; supervisor: its pid file checked against /proc, its state file); "
    "absent when nothing is deployed",
    "service.listen": '{"host": str | None, "port": int | None, "from": str | None (the unit or manifest the '
    'bind address came from), "sockets": [{"address": "0.0.0.0", "port": 8000, "inode": int, "pid": int | None, '
    '"vllm": bool | None (a vLLM server process owns it; None: unknown)}], "sockets_unread": [str], '
    '"vllm_pids": [int]}  (/proc/net/tcp{,6}, /proc/PID/fd)',
    "vllm.http_surface": '{"vllm_dir": str, "files_read": int, "unparsed": [str], "guard": {"file": str, "name": str, '
    '"line": int, "prefixes": ["/v1", ...]} | None, "routes": [{"path": str, "methods": [str], "file": str, "line": int, '
    '"when": [[str]] (registered when any alternative\'s source conditions all hold; [[]]: always)}]}  '
    "(the served vLLM's entrypoints source, parsed with ast)",
    "service.port": '{"port": int, "host": str | None, "listeners": [{"pid": int | None, "uid": int | None, '
    '"command": str | None, "is_service": bool | None, "why": str | None}]}  (LISTEN sockets on the service\'s port from '
    "/proc/net/tcp{,6}, their processes from /proc/*/fd; is_service: it or an ancestor is in the unit's cgroup or is "
    "gptoss-supervise); absent when nothing is deployed",
    "service.access": '{"user": str, "uid": int, "gids": [int], "paths": [{"path": str, "what": str, "need": "r" | "rw", '
    '"problem": str | None}]}  (the model and the HF cache as the service\'s user may use them: mode bits of every '
    "directory down to each path, from /etc/passwd and /etc/group; no ACLs)",
    "model.disk": '{"model": str, "local": bool, "path": str, "filesystem_of": str, "free_bytes": int, '
    '"present_bytes": int, "complete": bool (a local path, or the deploy\'s pre-download marker)}',
    "manifest": "the deployed manifest (JSON written by the deploy), /etc/gptoss/manifest.json",
    "stacks.extra": '[{"path": "/etc/gptoss/stacks.d/site.toml", "text": str (the TOML) | "error": str}]  '
    "(the site's stack files the manifest lists in extra_stack_files, with their text: the checks judge with "
    "knowledge.load(extra_stack_texts={path: text}), here and under `check --from` elsewhere)",
    "files.world_readable_secrets": '[{"path": str, "mode": "0644", "what": str}]',
    "hf.offline_files": '{"tiktoken_dir": str | None, "tiktoken_dir_exists": bool, "tiktoken_from": "service" | "shell" | None, '
    '"files": [str] (in tiktoken_dir), "tiktoken_cache_dir": str | None (TIKTOKEN_CACHE_DIR), '
    '"tiktoken_cache_files": [str], "hf_home": str, "hf_home_from": "service" | "shell" | None, "hub_cache": str, '
    '"hub_models": ["openai/gpt-oss-20b"]}',
    "deep": '{"torch_import": step, "cuda_init": step, "matmul": step, "triton_kernel": step} '
    'with step = {"ok": bool | None (None: does not apply here), "seconds": float | None, "error": str | None, '
    '"detail": ...}; also "python": str, "seconds": float  (only with --deep). cuda_init detail: {"device_count", '
    '"devices": [{"index", "name", "capability": "9.0", "memory_mib"}], "arch_list": [str], "arch_ok": bool}',
}


_SEPARATORS = re.compile(r"[-_.]+")


def canonical_name(name: str) -> str:
    """A distribution's name as `venv.distributions` records it: PEP 503's normalized form
    (packaging.utils.canonicalize_name's rule, without importing packaging.utils, which pulls in
    packaging.tags, platform and logging at start-up)."""
    return _SEPARATORS.sub("-", name).lower()


def value(v: Any, source: str | None = None) -> dict:
    return {"value": v, **({"source": source} if source else {})}


def absent(why: str, source: str | None = None) -> dict:
    return {"absent": why, **({"source": source} if source else {})}


def failed(error: str, source: str | None = None) -> dict:
    return {"failed": error, **({"source": source} if source else {})}


@record
class Snapshot:
    """Read access to a snapshot dict for checks: `snap.get(key)` is the value or None."""

    data: dict = field(default_factory=dict)

    @property
    def facts(self) -> dict:
        return self.data.setdefault("facts", {})

    def fact(self, key: str) -> dict:
        return self.facts.get(key) or {"absent": "not collected"}

    def get(self, key: str, default: Any = None) -> Any:
        f = self.fact(key)
        return f["value"] if "value" in f else default

    def has(self, key: str) -> bool:
        return "value" in self.fact(key)

    def source(self, key: str) -> str | None:
        return self.fact(key).get("source")

    def set(self, key: str, fact: dict) -> None:
        self.facts[key] = fact

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.data, indent=indent, sort_keys=False)


class SnapshotError(ValueError):
    """A snapshot file that is not ours or not JSON."""


def load_snapshot(text: str, where: str) -> Snapshot:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SnapshotError(f"{where}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise SnapshotError(
            f"{where}: schema is {got!r}, expected {SCHEMA!r}; make it with `gptoss-doctor collect > box.json`"
        )
    if not isinstance(data.get("facts"), dict):
        raise SnapshotError(f"{where}: no 'facts' object")
    for field_name in ("host", "collected_at", "doctor_version"):
        if data.get(field_name) is not None and not isinstance(data[field_name], str):
            raise SnapshotError(f"{where}: {field_name!r} is {json.dumps(data[field_name])[:60]}, expected a string; "
                                "make the snapshot again with `gptoss-doctor collect`")
    for key, fact in data["facts"].items():
        states = set(fact) & {"value", "absent", "failed"} if isinstance(fact, dict) else set()
        if len(states) != 1:
            raise SnapshotError(
                f"{where}: fact {key!r} is {json.dumps(fact, default=str)[:80]}, expected exactly one of "
                '{"value": ...}, {"absent": "why"}, {"failed": "error"}; make the snapshot again with `gptoss-doctor collect`')
    return Snapshot(data)
