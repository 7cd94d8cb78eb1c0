"""This machine as the only host (`@local`), air-gapped: the inventory of tests/gpu/run_e2e.sh
and tests/test_supervisor.py.

    GPTOSS_E2E_WHEELHOUSE=/tmp/wheelhouse GPTOSS_E2E_BASE_PYTHON=/opt/torch/.venv/bin/python3 \\
    GPTOSS_E2E_MODEL_PATH=$PWD/tests/fixtures/gpu/gpt-oss-20b GPTOSS_E2E_API_KEY_FILE=/root/key \\
    pyinfra -y tests/gpu/local_inventory.py deploys/gptoss.py

Every setting comes from a GPTOSS_E2E_* variable (below); `--data` still overrides any key.
"""

from __future__ import annotations

import json
import os

_E = os.environ


def _opt(name: str, default=None):
    v = _E.get(f"GPTOSS_E2E_{name}")
    return default if v is None else v


data = {
    "gptoss_stack": _opt("STACK", "vllm-0.26.0"),
    "gptoss_model": "20b",
    "gptoss_wheelhouse": _opt("WHEELHOUSE"),
    "gptoss_wheelhouse_no_deps": _opt("NO_DEPS", "true") == "true",
    "gptoss_base_python": _opt("BASE_PYTHON"),
    "gptoss_model_path": _opt("MODEL_PATH"),
    "gptoss_api_key_file": _opt("API_KEY_FILE"),
    "gptoss_port": int(_opt("PORT", "8000")),
    "gptoss_bind_address": "127.0.0.1",
    "gptoss_gpu_memory_utilization": float(_opt("GPU_MEMORY_UTILIZATION", "0.85")),
    "gptoss_max_model_len": int(_opt("MAX_MODEL_LEN", "4096")),
    "gptoss_extra_serve_args": json.loads(_opt("EXTRA_SERVE_ARGS", "[]")),
    "gptoss_tiktoken_url": _opt("TIKTOKEN_URL", ""),  # '' = none: there is no network
    "gptoss_health_timeout_s": int(_opt("HEALTH_TIMEOUT_S", "600")),
    "gptoss_service_manager": _opt("SERVICE_MANAGER", "auto"),
}
for key, var in (("gptoss_gpu_family", "GPU_FAMILY"), ("gptoss_cuda_home", "CUDA_HOME"),
                 ("gptoss_extra_stack_files", "EXTRA_STACK_FILES"), ("gptoss_jit_cache", "JIT_CACHE")):
    if _opt(var) is not None:
        data[key] = json.loads(_opt(var)) if _opt(var).startswith("[") else _opt(var)

hosts = [("@local", {k: v for k, v in data.items() if v is not None})]
