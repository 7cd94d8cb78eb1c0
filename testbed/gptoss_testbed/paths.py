"""Where the testbed keeps things. One place, so `up`, `down`, `status` and the inventory agree."""

from __future__ import annotations

import os
from pathlib import Path

# Overridable so a second testbed (or a test) can live beside the default one.
CACHE_DIR = Path(os.environ.get("GPTOSS_TESTBED_CACHE", "/var/cache/gptoss-testbed"))
STATE_DIR = Path(os.environ.get("GPTOSS_TESTBED_STATE", "/var/lib/gptoss-testbed"))

HOSTS_DIR = STATE_DIR / "hosts"
RUN_DIR = STATE_DIR / "run"  # pid files and logs of the processes the testbed started
STATE_FILE = STATE_DIR / "state.json"
SSH_KEY = STATE_DIR / "ssh" / "id_ed25519"
API_KEY_FILE = STATE_DIR / "api-key"
TIKTOKEN_DIR = STATE_DIR / "tiktoken"  # stand-in harmony vocab files (the public bucket is unreachable here)
STACK_FILE = STATE_DIR / "testbed-stacks.toml"  # the broken stack, loadable by knowledge.load(extra_stack_files=...)

IMAGES_DIR = CACHE_DIR / "images"
WHEELS_DIR = CACHE_DIR / "wheels"  # <index-name>/<file>.whl: the served tree
PYPI_DOWNLOADS_DIR = CACHE_DIR / "pypi-downloads"  # real wheels fetched once from PyPI

REPO_ROOT = Path(__file__).resolve().parents[2]
STANDINS_DIR = REPO_ROOT / "tests" / "standins"


def host_root(name: str) -> Path:
    return HOSTS_DIR / name


def pid_file(what: str) -> Path:
    return RUN_DIR / f"{what}.pid"


def log_file(what: str) -> Path:
    return RUN_DIR / f"{what}.log"
