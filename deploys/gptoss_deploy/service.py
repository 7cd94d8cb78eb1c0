"""The service: EnvironmentFile, API key, the hardened systemd unit, and the health gate.

The key lives only in /etc/gptoss/api-key (VLLM_API_KEY=..., 0640 root:gptoss, in a 0750
directory) and reaches vLLM through EnvironmentFile: never argv, never a log line.
"""

from __future__ import annotations

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, deploy, operation
from pyinfra.facts.files import File, Sha256File
from pyinfra.operations import files, systemd

from . import config as C

UNIT_PATH = f"/etc/systemd/system/{C.UNIT}"


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
    return f"VLLM_API_KEY={C.read_api_key(cfg.api_key_file)}\n"


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
    log = subprocess.run(['journalctl', '-u', unit, '-n', '5', '--no-pager', '-o', 'cat'], capture_output=True, text=True).stdout.strip().replace('\n', ' | ')
    print('gptoss health: ' + msg + ('; last log: ' + log[-600:] if log else ''), file=sys.stderr); sys.exit(1)
deadline = time.time() + timeout
while True:
    code, _ = req('/health', False)
    if code == 200: break
    state = subprocess.run(['systemctl', 'is-active', unit], capture_output=True, text=True).stdout.strip()
    if state == 'failed': fail(unit + ' failed while starting')
    if time.time() > deadline: fail('/health not 200 after %ds (last: %s, unit %s)' % (timeout, code, state))
    time.sleep(1)
code, _ = req('/v1/models', False)
if code != 401: fail('/v1/models without the key answered %s, expected 401' % code)
code, body = req('/v1/models', True)
if code != 200: fail('/v1/models with the key answered %s' % code)
ids = [m.get('id') for m in json.loads(body).get('data', [])]
if model not in ids: fail('/v1/models lists %s, not %s' % (ids, model))
code, body = req('/v1/completions', True, {'model': model, 'prompt': 'Hello', 'max_tokens': 4})
if code != 200 or not json.loads(body).get('choices'): fail('tiny completion answered %s: %s' % (code, body[:200]))
print('healthy: /health 200, /v1/models lists %s, completion ok' % model)
"""


@operation()
def secret_file(text: str, dest: str, group: str):
    """A root-owned 0640 file whose content is never printed (files.put --diff would show it)."""
    import hashlib

    want = hashlib.sha256(text.encode()).hexdigest()
    st = host.get_fact(File, path=dest)
    if st and host.get_fact(Sha256File, path=dest) == want and (st["user"], st["group"], st["mode"]) == ("root", group, 640):
        host.noop(f"{dest} up to date")
        return
    tmp = f"{dest}.tmp"
    yield StringCommand("rm", "-f", tmp, "&&", "(", "umask", "077", "&&", "touch", tmp, ")")
    yield FileUploadCommand(StringIO(text), tmp)
    yield StringCommand("chown", f"root:{group}", tmp, "&&", "chmod", "0640", tmp, "&&", "mv", "-f", tmp, dest)


def local_base(cfg: C.HostConfig) -> str:
    addr = cfg.bind_address
    if addr in ("0.0.0.0", "::"):
        addr = "127.0.0.1"
    return f"http://[{addr}]:{cfg.port}" if ":" in addr else f"http://{addr}:{cfg.port}"


@operation()
def health_gate(cfg: C.HostConfig):
    """At execute time: /health 200, /v1/models refused without the key and listing the model
    with it, one tiny completion. Checks run in the op, so a healthy host reports no change."""
    if not host.state.is_executing:
        return
    cmd = StringCommand(
        "python3", "-c", shlex.quote(_HEALTH_PY), local_base(cfg), shlex.quote(cfg.model),
        str(cfg.health_timeout_s), C.UNIT, C.KEY_FILE,
    )
    ok, out = host.run_shell_command(cmd, print_output=False, print_input=False)
    if ok:
        return
    text = " ".join(line.line for line in out if line.buffer_name == "stderr") or "health check failed"
    # The doctor usually knows why a service never got healthy: add its error findings.
    from .doctor import run_doctor

    verdict = run_doctor() if cfg.doctor_gate else None
    if verdict:
        text = f"{text[-900:]} | {verdict}"
    yield StringCommand("echo", shlex.quote(text[-1800:]), ">&2", "&&", "false")


@deploy("gptoss service")
def apply(cfg: C.HostConfig, inputs_changed):
    """`inputs_changed`: a callable saying whether the stack/current/model inputs changed."""
    env = files.put(name="service env file", src=StringIO(env_file_text(cfg)), dest=C.ENV_FILE,
                    user="root", group=C.SERVICE_USER, mode="0640")
    key = secret_file(name="API key file", text=key_file_text(cfg), dest=C.KEY_FILE, group=C.SERVICE_USER)
    unit = files.put(name="systemd unit", src=StringIO(unit_text(cfg)), dest=UNIT_PATH,
                     user="root", group="root", mode="0644")
    systemd.daemon_reload(name="daemon-reload (unit changed)", _if=unit.did_change)
    started = systemd.service(name="service running and enabled", service=C.UNIT, running=True, enabled=True)

    def restart_needed() -> bool:
        changed = env.did_change() or key.did_change() or unit.did_change() or inputs_changed()
        return changed and not started.did_change()

    systemd.service(name="restart (inputs changed)", service=C.UNIT, restarted=True, _if=restart_needed)
    health_gate(name="health gate", cfg=cfg)
