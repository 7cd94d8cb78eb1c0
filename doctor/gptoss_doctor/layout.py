"""The fixed layout of a deployed host: paths, the unit, the service user, the port.

One module for both sides: the deploy (deploys/gptoss_deploy) writes these paths and the doctor
reads them. Nothing here is configurable per host (what is lives in the deploy's data keys,
e.g. `gptoss_hf_home`, `gptoss_port`); it imports nothing, so any module of either side may
import it. docs/design.md ("On a deployed host") describes each path.
"""

ROOT = "/opt/gptoss"
STACKS_DIR = f"{ROOT}/stacks"  # one venv per stack: STACKS_DIR/<stack>
CURRENT = f"{ROOT}/current"  # -> the active stack's venv (switched by rename(2))
BIN_DIR = f"{ROOT}/bin"
DOCTOR_DIR = f"{ROOT}/doctor"  # the doctor's own venv
WHEELS_DIR = f"{ROOT}/wheels"  # the doctor wheel pushed from the controller
WHEELHOUSE_DIR = f"{ROOT}/wheelhouse"  # download-once wheels, WHEELHOUSE_DIR/<stack>
MARKER = ".gptoss-complete"  # in a venv: written last, holds the hash of what was installed
DOCTOR_LINK = "/usr/local/bin/gptoss-doctor"

ETC = "/etc/gptoss"
ENV_FILE = f"{ETC}/gptoss.env"  # the service's EnvironmentFile
KEY_FILE = f"{ETC}/api-key"  # VLLM_API_KEY=..., 0640 root:gptoss
MANIFEST = f"{ETC}/manifest.json"  # what was deployed
STACKS_D = f"{ETC}/stacks.d"  # the site's extra stack files, so the doctor on the host knows them
STAGED_DIR = f"{ETC}/stacks"  # upgrades: STAGED_DIR/<stack>/{gptoss.env, the unit, manifest.json}
ROLLBACK_FILE = f"{ETC}/rollback-stack"  # upgrades: the stack to go back to

STATE_DIR = "/var/lib/gptoss"  # the service user's home and its only writable place
CACHE_DIR = f"{STATE_DIR}/cache"  # XDG_CACHE_HOME of the service
TIKTOKEN_DIR = f"{STATE_DIR}/tiktoken"  # TIKTOKEN_ENCODINGS_BASE: harmony's vocabulary, offline
DEFAULT_HF_HOME = f"{STATE_DIR}/hf"
HF_TOKEN_FILE = "token"  # in HF_HOME: where huggingface_hub (and so vLLM) reads a token by default
UV_CACHE = "/var/cache/gptoss/uv"

SERVICE_USER = "gptoss"  # user and group of the service
UNIT = "gptoss-vllm.service"
UNIT_STEM = UNIT[: -len(".service")]  # what systemctl and gptoss-supervise's file names use
UNIT_PATH = f"/etc/systemd/system/{UNIT}"

# Hosts without systemd: gptoss-supervise runs the same unit file.
SUPERVISE = f"{BIN_DIR}/gptoss-supervise"
RUN_DIR = "/run/gptoss"
LOG_DIR = "/var/log/gptoss"
LOG_FILE = f"{LOG_DIR}/{UNIT_STEM}.log"
PID_FILE = f"{RUN_DIR}/{UNIT_STEM}.pid"

DEFAULT_PORT = 8000  # vLLM's own default, and the deploy's
DEFAULT_BIND = "127.0.0.1"
