"""The service: EnvironmentFile, API key, the hardened systemd unit, and the health gate.

The key lives only in /etc/gptoss/api-key (VLLM_API_KEY=..., 0640 root:gptoss, in a 0750
directory) and reaches vLLM through EnvironmentFile: never argv, never a log line.
"""

from __future__ import annotations

import json
import shlex

from pyinfra import host
from pyinfra.api import StringCommand, deploy, operation

from gptoss_doctor.layout import UNIT_PATH

from . import config as C
from . import supervisor
from .doctor import run_doctor
from .fields import read_api_key
from .ops import ManagedFile, dirs_in_place, files_in_place, unit_running



def env_file_text(cfg: C.HostConfig) -> str:
    lines = ["# Written by the gptoss deploy; the recipe's env for this GPU family and vLLM era."]
    if cfg.recipe_source:
        lines.append(f"# recipe source: {cfg.recipe_source}")
    for k in sorted(cfg.env):
        v = str(cfg.env[k])
        if "\n" in v:
            raise C.ConfigError(f"host {cfg.host}: env {k} holds a newline; fix: the knowledge recipe")
        lines.append(f"{k}={shlex.quote(v)}" if any(c.isspace() for c in v) else f"{k}={v}")
    return "\n".join(lines) + "\n"


def key_file_text(cfg: C.HostConfig) -> str:
    return f"VLLM_API_KEY={read_api_key(cfg.api_key_file)}\n"


def _systemd_quote(arg: str) -> str:
    """ExecStart quoting: systemd splits on whitespace and honours double quotes; $ and % expand."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if not arg or any(c.isspace() or c in "\"'\\;" for c in arg):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def rw_paths(cfg: C.HostConfig) -> list[str]:
    paths = [C.STATE_DIR]
    if not cfg.hf_home.startswith(C.STATE_DIR + "/"):
        paths.append(cfg.hf_home)
    return paths


def unit_text(cfg: C.HostConfig) -> str:
    exec_start = " ".join(_systemd_quote(a) for a in cfg.serve_argv())
    return f"""# Written by the gptoss deploy (stack {cfg.stack}, vLLM {cfg.vllm}, {cfg.family}).
[Unit]
Description=gpt-oss {cfg.model_size} served by vLLM {cfg.vllm}
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={C.SERVICE_USER}
Group={C.SERVICE_USER}
{"SupplementaryGroups=video render" + chr(10) if cfg.vendor == "amd" else ""}EnvironmentFile={C.ENV_FILE}
EnvironmentFile={C.KEY_FILE}
WorkingDirectory={C.STATE_DIR}
ExecStart={exec_start}
Restart=on-failure
RestartSec=10
# Model load and CUDA graph capture take minutes on a cold cache.
TimeoutStartSec=1800
TimeoutStopSec=60
LimitNOFILE=1048576
LimitMEMLOCK=infinity

# Hardening: the service reads its venv and writes only its state dir.
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={" ".join(rw_paths(cfg))}
ProtectHome=yes
PrivateTmp=yes
ProtectControlGroups=yes
ProtectKernelModules=yes
ProtectKernelTunables=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
SystemCallArchitectures=native
# NETLINK: NCCL and RDMA enumerate interfaces. No PrivateDevices (the GPUs) and no
# MemoryDenyWriteExecute (Triton and torch.compile JIT).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0027

[Install]
WantedBy=multi-user.target
"""


# Runs on the host with python3 (root): reads the key from the key file itself, so the key
# is never in argv. Exit 0 healthy; 1 with one line saying what failed.
_HEALTH_PY = r"""
import json, subprocess, sys, time, urllib.error, urllib.request
base, model, timeout, unit, keyfile = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
# Optional: the prompt (JSON; token ids where vLLM runs without a tokenizer) and, on hosts
# without systemd, the supervisor program and its log file.
prompt = json.loads(sys.argv[6]) if len(sys.argv) > 6 else 'Hello'
sup, suplog = (sys.argv[7], sys.argv[8]) if len(sys.argv) > 8 else (None, None)
def journal():
    if sup:
        try: return open(suplog, errors='replace').read()[-20000:].splitlines()[-60:]
        except OSError: return []
    return subprocess.run(['journalctl', '-u', unit, '-n', '60', '--no-pager', '-o', 'cat'], capture_output=True, text=True).stdout.splitlines()
def unit_state():
    if sup:
        return subprocess.run([sup, 'is-active'], capture_output=True, text=True).stdout.strip()
    return subprocess.run(['systemctl', 'is-active', unit], capture_output=True, text=True).stdout.strip()
key = [l.split('=', 1)[1].strip() for l in open(keyfile) if l.startswith('VLLM_API_KEY=')][0]
def req(path, auth, body=None):
    r = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode())
    if auth: r.add_header('Authorization', 'Bearer ' + key)
    if body is not None: r.add_header('Content-Type', 'application/json')
    try:
        with urllib.request.urlopen(r, timeout=30) as resp: return resp.status, resp.read()
    except urllib.error.HTTPError as e: return e.code, e.read()
    except OSError as e: return None, str(e).encode()
def fail(msg):
    lines = journal()
    log = ' | '.join([l for l in lines if '" 200' not in l and '" 401' not in l and '" 503' not in l][-4:])
    print('gptoss health: ' + msg + ('; last log: ' + log[-600:] if log else ''), file=sys.stderr); sys.exit(1)
deadline = time.time() + timeout
while True:
    code, _ = req('/health', False)
    if code == 200: break
    state = unit_state()
    if state == 'failed': fail(unit + ' failed while starting')
    # gptoss-supervise says so when the service exited and waits to restart: it did not start
    if state == 'auto-restart': fail(unit + ' exited while starting (restarting)')
    if time.time() > deadline: fail('/health not 200 after %ds (last: %s, unit %s)' % (timeout, code, state))
    time.sleep(1)
code, _ = req('/v1/models', False)
if code != 401: fail('/v1/models without the key answered %s, expected 401' % code)
code, body = req('/v1/models', True)
if code != 200: fail('/v1/models with the key answered %s' % code)
ids = [m.get('id') for m in json.loads(body).get('data', [])]
if model not in ids: fail('/v1/models lists %s, not %s' % (ids, model))
code, body = req('/v1/completions', True, {'model': model, 'prompt': prompt, 'max_tokens': 4})
if code != 200 or not json.loads(body).get('choices'): fail('tiny completion answered %s: %s' % (code, body[:200]))
print('healthy: /health 200, /v1/models lists %s, completion ok' % model)
"""


def health_prompt(cfg: C.HostConfig) -> str | list[int]:
    """Token ids where vLLM serves without a tokenizer (--skip-tokenizer-init), else text."""
    return [1, 2, 3] if "--skip-tokenizer-init" in cfg.serve_argv() else "Hello"


def health_extra_args(cfg: C.HostConfig) -> list[str]:
    """The gate's optional arguments; none where today's defaults hold (text prompt, systemd)."""
    prompt = health_prompt(cfg)
    sc = cfg.service
    if sc.supervised:
        return [shlex.quote(json.dumps(prompt)), sc.supervise, sc.log_file]
    return [shlex.quote(json.dumps(prompt))] if prompt != "Hello" else []


def local_base(cfg: C.HostConfig) -> str:
    """vLLM itself (behind the front where there is one): the gate judges vLLM's own answers."""
    addr = cfg.vllm_address
    if addr in ("0.0.0.0", "::"):
        addr = "127.0.0.1"
    return f"http://[{addr}]:{cfg.vllm_port}" if ":" in addr else f"http://{addr}:{cfg.vllm_port}"


def health_command(cfg: C.HostConfig) -> str:
    """The gate as one shell command on the host: exit 0 healthy, else one line on stderr.
    The deploy's gate and the rollout's run this same command."""
    return " ".join([
        "python3", "-c", shlex.quote(_HEALTH_PY), local_base(cfg), shlex.quote(cfg.model),
        str(cfg.health_timeout_s), C.UNIT, C.KEY_FILE, *health_extra_args(cfg),
    ])


@operation()
def health_gate(cfg: C.HostConfig):
    """At execute time: /health 200, /v1/models refused without the key and listing the model
    with it, one tiny completion. Checks run in the op, so a healthy host reports no change."""
    if not host.state.is_executing:
        return
    ok, out = host.run_shell_command(StringCommand(health_command(cfg)), print_output=False, print_input=False)
    if ok:
        return
    text = " ".join(out.stderr_lines) or "health check failed"
    # The doctor usually knows why a service never got healthy: add its error findings.
    verdict = run_doctor() if cfg.doctor_gate else None
    if verdict:
        text = f"{text[-900:]} | {verdict}"
    yield StringCommand("echo", shlex.quote(text[-1800:]), ">&2", "&&", "false")


@deploy("gptoss service")
def apply(cfg: C.HostConfig, inputs_changed):
    """`inputs_changed`: a callable saying (at execute time) whether the stack, `current`, the
    manifest or the model files changed, which the running service must pick up."""
    service_files = (
        ManagedFile(C.ENV_FILE, env_file_text(cfg), "root", C.SERVICE_USER, "0640"),
        ManagedFile(C.KEY_FILE, key_file_text(cfg), "root", C.SERVICE_USER, "0640", secret=True),
        ManagedFile(UNIT_PATH, unit_text(cfg)),
    )
    if cfg.service.supervised:
        # No systemd: the same unit file, run by gptoss-supervise (see supervisor.py).
        dirs_in_place(name="supervisor run and log directories", dirs=supervisor.managed_dirs())
        files = files_in_place(name="env file, API key file, unit, gptoss-supervise",
                               files=service_files + supervisor.managed_files(cfg))
        supervisor.service_running(
            name="service running under gptoss-supervise (restarted when its inputs changed)",
            restart_if=lambda: files.did_change() or inputs_changed(),
        )
        health_gate(name="health gate", cfg=cfg)
        return
    files = files_in_place(name="env file, API key file, systemd unit", files=service_files)
    unit_running(
        name="service enabled and running (restarted when its inputs changed)",
        unit=C.UNIT,
        reload_if=files.did_change,
        restart_if=lambda: files.did_change() or inputs_changed(),
    )
    health_gate(name="health gate", cfg=cfg)
