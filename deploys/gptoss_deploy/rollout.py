"""Rolling upgrade: stage on every host, then roll batch by batch behind the health gate.

How the batch loop is built, and why. One pyinfra run (`pyinfra INV deploys/upgrade.py`):
pyinfra executes operations one at a time over all hosts in parallel, so the staging operations
(wheels, the new venv, the per-stack service files) finish on every host before the last
operation, `roll`, starts; a host that failed staging (or could not be reached) is in
`state.failed_hosts` by then and the roll stops before any restart. `roll` runs as one greenlet
per host in pyinfra's pool; the batch loop is the `Rollout` scheduler below, on the controller,
that those greenlets wait on: batch k starts when every host of batch k-1 has passed its health
gate; a failure stops the rollout and wakes the rest, which leave their hosts untouched.
pyinfra's `--serial`/`--parallel` only order operations (a failed host does not stop the
others, there is no gate between hosts); per-batch CLI runs with `--limit` would reconnect and
re-gather facts for every batch and spread "stage all first, stop on the first failure" over
processes. Inside the roll each step is a command on the host through pyinfra's connection
(`host.run_shell_command`), so one SSH connection per host serves the whole upgrade.

Per host: load balancer out (`gptoss_lb_drain_cmd`, on the controller), the staged files for the
new stack into place, `current` switched (rename(2)), restart, health gate (`/health` 200,
`/v1/models` lists the model, one tiny completion, `/version` is the new vLLM) with the stack's
time limit, load balancer back in. On a failed step: the doctor's reading of the host
(`gptoss-doctor --json`, and the journal since the switch through `gptoss-doctor logs -`), the
old stack's files and `current` back, restart, the gate again; the run exits non-zero naming
the host and the step. Every staged venv is complete (marker) before `current` may point at
it, and a re-run re-checks each host (on the new stack and healthy: skipped), so an interrupted
rollout converges.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pyinfra import host
from pyinfra.api import FactBase, FileUploadCommand, FunctionCommand, StringCommand, operation

from gptoss_doctor.layout import DOCTOR_LINK, ROLLBACK_FILE, STAGED_DIR, UNIT_PATH, WHEELHOUSE_DIR

from . import balancer
from . import config as C
from . import keys
from .doctor import split_exit_status, with_exit_status
from .fields import bad
from .manifest import manifest_text, stack_file_dest
from .service import env_file_text, health_command, local_base, unit_text

LB_TIMEOUT_S = 120


# -- settings (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    batch: str  # "1", "2", "25%"
    keep_stacks: int
    lb_drain_cmd: str | None
    lb_restore_cmd: str | None
    download_once: bool  # wheels fetched once on the controller and pushed (gptoss_deploy.wheelhouse)
    lb_drain_timeout_s: int = 300  # behind gptoss_lb balancers: the drained host's requests may finish


def batch_size(spec: str, hosts: int) -> int:
    """Hosts per batch after the canary: a count, or a percentage of the fleet (at least 1)."""
    if spec.endswith("%"):
        return max(1, math.floor(hosts * int(spec[:-1]) / 100))
    return max(1, int(spec))


def plan_batches(names: list[str], spec: str) -> list[list[str]]:
    """The canary (first host) alone, then batches of `spec` hosts, in inventory order."""
    if not names:
        return []
    size = batch_size(spec, len(names))
    rest = names[1:]
    return [names[:1]] + [rest[i:i + size] for i in range(0, len(rest), size)]


def settings(host: str, data: Mapping[str, Any]) -> Settings:
    """The upgrade's own keys (reader "upgrade" in the key table), parsed; one line on a bad one."""
    v = keys.parse_data(keys.Context(host, data), "upgrade")
    drain, restore = v["gptoss_lb_drain_cmd"], v["gptoss_lb_restore_cmd"]
    if bool(drain) != bool(restore):
        missing = "gptoss_lb_restore_cmd" if drain else "gptoss_lb_drain_cmd"
        raise bad(host, missing, None, "a load balancer hook needs both drain and restore", f"set {missing} too, or unset both")
    return Settings(v["gptoss_upgrade_batch"], v["gptoss_keep_stacks"], drain, restore, v["gptoss_download_once"],
                    v["gptoss_lb_drain_timeout_s"])


def stacks_to_prune(installed: Mapping[str, float], keep: int, new: str, old: str | None) -> list[str]:
    """Stack names to delete so `keep` remain: the new one, then the rollback one, then the
    most recently installed others (pure)."""
    order = [new] + ([old] if old and old != new else [])
    order += sorted((n for n in installed if n not in order), key=lambda n: -installed[n])
    kept = set(order[:keep]) | {new}
    return sorted(n for n in installed if n not in kept)


# -- what is on the host -----------------------------------------------------------------------


class UpgradeState(FactBase):
    """current's target, the recorded rollback stack, installed stacks (name -> mtime, marker)."""

    def command(self) -> str:
        script = (
            f'echo "current=$(readlink {C.CURRENT} 2>/dev/null)"; '
            f'[ -r {ROLLBACK_FILE} ] && echo "rollback=$(cat {ROLLBACK_FILE})"; '
            f'for d in {C.STACKS_DIR}/*/; do [ -d "$d" ] || continue; n=$(basename "$d"); '
            f'm=-; [ -r "$d{C.MARKER}" ] && m=$(cat "$d{C.MARKER}"); echo "stack=$n|$(stat -c %Y "$d")|$m"; done; true'
        )
        return "sh -c " + shlex.quote(script)

    def process(self, output: list[str]) -> dict:
        out: dict = {"current": "", "rollback": None, "stacks": {}}
        for line in output:
            key, _, val = line.partition("=")
            if key == "stack":
                name, mtime, marker = (val.split("|") + ["", ""])[:3]
                out["stacks"][name] = {"mtime": float(mtime or 0), "marker": None if marker == "-" else marker}
            elif key in ("current", "rollback"):
                out[key] = val.strip() or None
        return out


def stack_of(current: str | None) -> str | None:
    if current and current.startswith(C.STACKS_DIR + "/"):
        return current[len(C.STACKS_DIR) + 1:].strip("/") or None
    return None


def rollback_stack(new: str, current: str | None, recorded: str | None) -> str | None:
    """The stack to go back to: what runs now, or (already switched by an interrupted run) what
    was recorded before the switch."""
    running = stack_of(current)
    if running and running != new:
        return running
    return recorded if recorded and recorded != new else None


# -- staged files ------------------------------------------------------------------------------


def staged_files(cfg: C.HostConfig) -> dict[str, tuple[str, str, str]]:
    """{live path: (staged path, content, mode+group)} for one stack: env file, unit, manifest."""
    d = f"{STAGED_DIR}/{cfg.stack}"
    return {
        C.ENV_FILE: (f"{d}/gptoss.env", env_file_text(cfg), f"0640 root:{C.SERVICE_USER}"),
        UNIT_PATH: (f"{d}/{C.UNIT}", unit_text(cfg), "0644 root:root"),
        C.MANIFEST: (f"{d}/manifest.json", manifest_text(cfg), "0644 root:root"),
    }


class FilesSha(FactBase):
    @staticmethod
    def default() -> dict:
        return {}

    def command(self, paths: tuple) -> str:
        q = " ".join(shlex.quote(p) for p in paths)
        return "sh -c " + shlex.quote(f'for p in {q}; do [ -f "$p" ] && echo "$(sha256sum "$p" | cut -c1-64) $p"; done; true')

    def process(self, output: list[str]) -> dict:
        return {line[65:]: line[:64] for line in output if len(line) > 65}


@operation()
def stage_files(new: C.HostConfig, old: C.HostConfig | None, record_rollback: bool):
    """Both stacks' service files under /etc/gptoss/stacks/<stack>/, and the rollback stack's
    name, written before anything switches. The live files and the service are not touched."""
    from io import StringIO

    if host.state.is_executing:
        staged_hosts(host.state).add(host.name)
    want = {}
    for cfg in (new, old) if old else (new,):
        for staged, text, mode in staged_files(cfg).values():
            want[staged] = (text, mode)
    # The site's stack files the manifests name, in place before any switch: a manifest that names
    # one the host lacks leaves the doctor there without the stack it runs. Adding them changes nothing live.
    for f in dict.fromkeys((*new.extra_stack_files, *(old.extra_stack_files if old else ()))):
        want[stack_file_dest(f)] = (Path(f).read_text(), "0644 root:root")
    if record_rollback and old:
        want[ROLLBACK_FILE] = (old.stack + "\n", "0644 root:root")
    have = host.get_fact(FilesSha, paths=tuple(want))
    stale = {p: v for p, v in want.items() if have.get(p) != hashlib.sha256(v[0].encode()).hexdigest()}
    if not stale:
        host.noop(f"{len(want)} staged files up to date")
        return
    dirs = sorted({os.path.dirname(p) for p in stale if p.startswith(STAGED_DIR + "/")})
    if dirs:
        yield StringCommand("install", "-d", "-m", "0750", "-o", "root", "-g", C.SERVICE_USER, STAGED_DIR, *dirs)
    if any(p.startswith(C.STACKS_D + "/") for p in stale):
        yield StringCommand("install", "-d", "-m", "0755", "-o", "root", "-g", "root", C.STACKS_D)
    for path, (text, mode) in stale.items():
        perm, owner = mode.split()
        tmp = f"{path}.tmp"
        yield StringCommand("rm", "-f", tmp, "&&", "(", "umask", "077", "&&", "touch", tmp, ")")
        yield FileUploadCommand(StringIO(text), tmp)
        yield StringCommand("chown", owner, tmp, "&&", "chmod", perm, tmp, "&&", "mv", "-f", tmp, path)


# -- remote steps (run inside the roll, through the host's connection) ----------------------------


def switch_script(cfg: C.HostConfig) -> str:
    """Live files <- staged files of `cfg.stack`, then `current` (rename), then restart.
    Files before `current`: a service restarting in between never runs a venv with the other
    stack's files... except in that instant, which the re-run repairs."""
    lines = ["set -e", 'echo "__t=$(date +%s)"', f"test -f {cfg.stack_marker}"]
    for live, (staged, _text, _mode) in staged_files(cfg).items():
        lines.append(f"cp -p {staged} {live}.gptoss-new && mv -f {live}.gptoss-new {live}")
    lines.append(f"ln -sfn {cfg.venv} {C.CURRENT}.tmp && mv -T {C.CURRENT}.tmp {C.CURRENT}")
    lines += cfg.service.restart_after_unit_change()
    return "\n".join(lines)


_VERSION_PY = r"""
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + '/version', timeout=15) as r: print(json.loads(r.read()).get('version'))
except Exception as e:
    print('unreachable: %s' % e); sys.exit(1)
"""


def versions_match(served: str | None, want: str) -> bool:
    from packaging.version import InvalidVersion, Version

    if not served:
        return False
    try:
        return Version(served.strip().lstrip("v")) == Version(want)
    except InvalidVersion:
        return served.strip() == want


@dataclass
class HostResult:
    host: str
    batch: int
    status: str = "pending"  # upgraded | already | failed | not-reached
    step: str | None = None
    error: str | None = None
    rollback: str | None = None
    doctor: dict | None = None
    out_of_service_s: float | None = None
    lb_drain: str | None = None  # what the gptoss_lb balancers said when the host was drained
    restart_gate_s: float | None = None
    pruned: list = field(default_factory=list)


def _run(cmd: str) -> tuple[bool, str, str]:
    ok, out = host.run_shell_command(StringCommand(cmd), print_output=False, print_input=False)
    return ok, out.stdout, out.stderr


def gate(cfg: C.HostConfig) -> tuple[str | None, str]:
    """(None, detail) when the host serves `cfg` healthily; else (failed step, one line)."""
    ok, out, err = _run(health_command(cfg))
    if not ok:
        return "health-gate", (err or out or "health check failed").strip().splitlines()[-1][:900]
    ok, out, err = _run(f"python3 -c {shlex.quote(_VERSION_PY)} {local_base(cfg)}")
    served = out.strip().splitlines()[-1] if out.strip() else None
    if not ok or not versions_match(served, cfg.vllm):
        return "version", f"/version says {served or err.strip() or 'nothing'}, expected {cfg.vllm}"
    return None, f"healthy, /version {served}"


def switched_to(cfg: C.HostConfig) -> bool:
    """`current` and the live env file, unit and manifest already those of `cfg`, service up
    (an earlier, interrupted run switched it)?"""
    same = " && ".join(f"cmp -s {staged} {live}" for live, (staged, _t, _m) in staged_files(cfg).items())
    cmd = f'[ "$(readlink {C.CURRENT})" = {cfg.venv} ] && {same} && {cfg.service.is_active_quiet()}'
    return _run(cmd)[0]


def doctor_reading(cfg: C.HostConfig, since: int) -> dict:
    """`gptoss-doctor --json` on the host and its triage of the service's log since `since`."""
    reading: dict = {}
    _ok, out, err = _run(with_exit_status(f"timeout 120 {DOCTOR_LINK} --json"))
    reading["doctor"] = _summarise(out, err)
    _ok, out, err = _run(with_exit_status(f"{cfg.service.log_since(since)} | timeout 60 {DOCTOR_LINK} logs - --json"))
    reading["logs"] = _summarise(out, err)
    return reading


def _summarise(stdout: str, stderr: str) -> dict:
    code, err_lines = split_exit_status(stderr)
    code = 2 if code is None else code
    try:
        findings = json.loads(stdout).get("findings", [])
    except (ValueError, AttributeError):
        return {"exit_code": code, "error": (err_lines[-1:] or ["no output"])[0][:300], "findings": []}
    keep = [{"id": f.get("id"), "severity": f.get("severity"), "title": f.get("title"),
             "fix": (f.get("fix") or {}).get("text")} for f in findings if f.get("severity") in ("error", "warning")]
    return {"exit_code": code, "findings": keep}


def controller_hook(cmd: str, host_name: str, address: str) -> tuple[bool, str]:
    """A load balancer hook on the controller: {host} and {address} are substituted (quoted),
    and GPTOSS_HOST / GPTOSS_ADDRESS are in its environment."""
    from gevent import subprocess as gsub

    line = cmd.replace("{host}", shlex.quote(host_name)).replace("{address}", shlex.quote(address))
    try:
        r = gsub.run(["/bin/sh", "-c", line], capture_output=True, text=True, timeout=LB_TIMEOUT_S,
                     env={**os.environ, "GPTOSS_HOST": host_name, "GPTOSS_ADDRESS": address})
    except gsub.TimeoutExpired:
        return False, f"`{cmd}` did not finish in {LB_TIMEOUT_S}s"
    if r.returncode:
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
        return False, f"`{cmd}` exited {r.returncode}: {last[:300]}"
    return True, ""


def prune_command(names: list[str]) -> str | None:
    if not names:
        return None
    paths = []
    for n in names:
        paths += [f"{C.STACKS_DIR}/{n}", f"{STAGED_DIR}/{n}", f"{WHEELHOUSE_DIR}/{n}"]
    return "rm -rf " + " ".join(shlex.quote(p) for p in paths)


# -- the scheduler -------------------------------------------------------------------------------


class Rollout:
    """Batch gates on the controller: batch k starts when batch k-1 has passed; a failure stops it."""

    def __init__(self, names: list[str], spec: str, new_stack: str):
        from gevent.event import Event

        self.batches = plan_batches(names, spec)
        self.batch_of = {n: i for i, b in enumerate(self.batches) for n in b}
        self.opened = [Event() for _ in self.batches]
        if self.opened:
            self.opened[0].set()
        self.results = {n: HostResult(n, self.batch_of[n]) for n in names}
        self.stopped_by: str | None = None
        self.stop_reason: str | None = None
        self.new_stack = new_stack
        self.started = time.time()

    def wait_turn(self, name: str) -> None:
        self.opened[self.batch_of[name]].wait()

    def finish(self, name: str) -> None:
        r = self.results[name]
        if r.status == "failed" and not self.stopped_by:
            self.stopped_by, self.stop_reason = name, r.step
        b = self.batch_of[name]
        if self.stopped_by:
            for ev in self.opened:
                ev.set()
        elif all(self.results[n].status in ("upgraded", "already") for n in self.batches[b]) and b + 1 < len(self.opened):
            self.opened[b + 1].set()
        self.write_report()

    def stop(self, name: str, why: str) -> None:
        """Stop before any restart (a host failed staging or could not be reached)."""
        if not self.stopped_by:
            self.stopped_by = name
            self.stop_reason = why
        for ev in self.opened:
            ev.set()

    def report(self) -> dict:
        return {"schema": "gptoss-upgrade/report@1", "stack": self.new_stack, "batches": self.batches,
                "stopped_by": self.stopped_by,
                "stop_reason": self.stop_reason, "elapsed_s": round(time.time() - self.started, 2),
                "hosts": [asdict(r) for r in self.results.values()]}

    def write_report(self) -> None:
        path = os.environ.get("GPTOSS_UPGRADE_REPORT")
        if path:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.report(), f, indent=1)
            os.replace(tmp, path)


_rollouts: dict[int, Rollout] = {}
_staged: dict[int, set] = {}


def staged_hosts(state) -> set:
    """Hosts whose staging reached its last operation in this run (execute time)."""
    return _staged.setdefault(id(state), set())


def execution_mode_error(state, names: list[str]) -> str | None:
    """The batch loop needs every host's roll greenlet alive at once, after every host staged:
    pyinfra's default op-by-op execution. --serial/--no-wait/--parallel N break that (pure)."""
    pool = getattr(getattr(state, "pool", None), "size", None)
    if pool is not None and pool < len(names):
        return (f"pyinfra's pool runs {pool} hosts at a time, the rollout has {len(names)}: run without --parallel "
                f"(set gptoss_upgrade_batch for the batch size)")
    missing = [n for n in names if n not in staged_hosts(state)]
    if missing:
        return (f"{', '.join(missing)} not staged yet when the roll started: run without --serial/--no-wait "
                f"(the upgrade stages every host before it restarts any)")
    return None


def rollout_for(state, new_stack: str, spec: str) -> Rollout:
    """One Rollout per pyinfra run, over the hosts active when it is first asked for."""
    key = id(state)
    if key not in _rollouts:
        active = set(state.inventory.get_active_hosts())
        # inventory order, the first is the canary; balancer hosts (gptoss_lb) are not rolled
        names = [h.name for h in state.inventory if h in active and not balancer.is_balancer(h)]
        _rollouts[key] = Rollout(names, spec, new_stack)
    return _rollouts[key]


# -- the roll, per host ---------------------------------------------------------------------------


def failure_text(ro: Rollout, r: HostResult, new: str) -> str:
    """The report of a stopped rollout, as the failed host's error lines (pure)."""
    lines = [f"gptoss upgrade to {new} STOPPED at host {r.host} (batch {r.batch + 1} of {len(ro.batches)}"
             f"{', the canary' if r.batch == 0 else ''}); failed step: {r.step}: {r.error}"]
    if r.rollback:
        lines.append(f"rollback: {r.rollback}")
    for what, label in (("doctor", "doctor (gptoss-doctor --json)"), ("logs", "log triage (the service's log since the switch | gptoss-doctor logs -)")):
        d = (r.doctor or {}).get(what)
        if d is None:
            continue
        found = "; ".join(f"{f['severity']} {f['id']}: {f['title']}" + (f" (fix: {f['fix']})" if f.get("fix") else "")
                          for f in d.get("findings", [])) or d.get("error") or "no findings"
        lines.append(f"{label}: exit {d.get('exit_code')}: {found}"[:1500])
    untouched = [n for n, x in ro.results.items() if x.status == "not-reached"]
    pending = [n for n, x in ro.results.items() if x.status == "pending" and n != r.host]
    if untouched or pending:
        lines.append("not reached (left untouched): " + ", ".join(untouched + pending))
    return "\n".join(lines)


def _roll_host(ro: Rollout, r: HostResult, new: C.HostConfig, old: C.HostConfig | None, st: Settings, address: str):
    if switched_to(new) and gate(new)[0] is None:  # a re-run: on the new stack and healthy
        r.status = "already"
        return
    t_out = time.time()
    # The gptoss_lb balancers: drained (no new request; the ones in flight finish) before the
    # restart, back in ("ready") only after a passed gate; a host that ends unhealthy stays out.
    lbs = balancer.balancers(host.state.inventory)
    if lbs:
        ok, said = balancer.runtime(lbs, "drain", r.host, st.lb_drain_timeout_s)
        if not ok:
            r.status, r.step, r.error = "failed", "lb-drain", said
            return
        r.lb_drain = said
    if st.lb_drain_cmd:
        ok, err = controller_hook(st.lb_drain_cmd, r.host, address)
        if not ok:
            r.status, r.step, r.error = "failed", "lb-drain", err
            return
    t_switch = time.time()
    ok, out, err = _run(switch_script(new))
    # the journal is read on the host's clock: the switch script says when it started there
    host_t = next((int(x[4:]) for x in out.splitlines() if x.startswith("__t=") and x[4:].isdigit()), int(t_switch))
    said = err.strip() or "\n".join(x for x in out.splitlines() if not x.startswith("__t=")).strip() or "switch failed"
    failed = None if ok else ("switch-restart", said.splitlines()[-1][:600])
    if not failed:
        failed = gate(new)
        failed = failed if failed[0] else None
    if not failed:
        r.restart_gate_s = round(time.time() - t_switch, 2)
        ok, said = balancer.runtime(lbs, "ready", r.host) if lbs else (True, "")
        if not ok:
            r.status, r.step, r.error = "failed", "lb-ready", said + " (the host runs the new stack, out of rotation)"
            return
        if st.lb_restore_cmd:
            ok, err = controller_hook(st.lb_restore_cmd, r.host, address)
            if not ok:
                r.status, r.step, r.error = "failed", "lb-restore", err + " (the host runs the new stack, out of rotation)"
                return
        r.out_of_service_s = round(time.time() - t_out, 2)
        r.status = "upgraded"
        return
    r.status, (r.step, r.error) = "failed", failed
    r.doctor = doctor_reading(new, host_t - 1)
    if old is None:
        r.rollback = "none: the host had no other stack to go back to"
        return
    ok, out, err = _run(switch_script(old))
    back = None if ok else ("switch-restart", (err.strip() or "switch failed").splitlines()[-1][:300])
    back = back or gate(old)
    if back[0]:
        r.rollback = f"to {old.stack} FAILED too at {back[0]}: {back[1]}; the host is out of service"
        return
    r.rollback = f"back on {old.stack}: {back[1]}"
    if lbs:
        ok, said = balancer.runtime(lbs, "ready", r.host)
        r.rollback += "; back in rotation" if ok else f"; balancer ready failed: {said}"
    if st.lb_restore_cmd:
        ok, err = controller_hook(st.lb_restore_cmd, r.host, address)
        r.rollback += "" if ok else f"; load balancer restore failed: {err}"


def _report_and_fail(state, host, text: str) -> bool:
    """Print the report on the controller and fail the op: no command on the host, whose
    connection may be what was lost."""
    from pyinfra import logger

    for line in text.splitlines():
        logger.error(f"{host.print_prefix}{line}")
    return False


def failed_with(text: str) -> FunctionCommand:
    return FunctionCommand(_report_and_fail, (text,), {})


@operation()
def roll(new: C.HostConfig, old: C.HostConfig | None, st: Settings, installed: dict):
    """This host's turn in the rolling upgrade (see the module docstring). Execute-time only;
    the preview (pyinfra without -y) shows it as a change, which it is unless the host is there."""
    if not host.state.is_executing:
        yield StringCommand("true")
        return
    state = host.state
    ro = rollout_for(state, new.stack, st.batch)
    r = ro.results[host.name]
    failed_before = sorted(h.name for h in state.failed_hosts)
    if failed_before:
        ro.stop(failed_before[0], "staging")
        r.status = "not-reached"
        ro.write_report()
        yield failed_with(
            f"gptoss upgrade stopped before any restart: {', '.join(failed_before)} failed staging or could not be "
            f"reached; {host.name} left untouched on its current stack")
        return
    mode_error = execution_mode_error(state, [n for b in ro.batches for n in b])
    if mode_error:
        ro.stop(host.name, "execution mode")
        r.status = "not-reached"
        yield failed_with(f"gptoss upgrade refused before any restart: {mode_error}")
        return
    ro.wait_turn(host.name)
    if ro.stopped_by:
        r.status = "not-reached"
        ro.write_report()
        host.noop(f"not upgraded: the rollout stopped at {ro.stopped_by}")
        return
    address = str(host.data.get("ssh_hostname") or host.name)
    try:
        _roll_host(ro, r, new, old, st, address)
    except Exception as e:  # a lost connection mid-step: stop the rollout, name the host
        r.status, r.step, r.error = "failed", r.step or "connection", f"{type(e).__name__}: {e}"[:600]
    if r.status == "failed":
        ro.finish(host.name)
        yield failed_with(failure_text(ro, r, new.stack))
        return
    r.pruned = stacks_to_prune({k: v["mtime"] for k, v in installed.items()} | {new.stack: time.time()},
                               st.keep_stacks, new.stack, old.stack if old else None)
    ro.finish(host.name)
    from pyinfra import logger

    timing = f", out of service {r.out_of_service_s}s" if r.out_of_service_s is not None else ""
    said = {"upgraded": f"upgraded to {new.stack}", "already": f"already on {new.stack}, healthy"}[r.status]
    logger.info(f"{host.print_prefix}{said}{timing}"
                + (f", pruned {', '.join(r.pruned)}" if r.pruned else ""))
    if r.status == "already" and not r.pruned:
        host.noop(f"already on {new.stack}, healthy")
        return
    yield StringCommand(prune_command(r.pruned) or "true")
