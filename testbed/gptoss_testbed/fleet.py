"""`up`, `down`, `status`: the local fleet as a whole, and its state file.

The state file (STATE_DIR/state.json) is what `status`, `env` and inventories/testbed.py read;
it is written before any host boots, so `down` can always stop what `up` started.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import catalog, hosts, image, paths, wheels
from .errors import TestbedError

DEFAULT_HOSTS = 3
DEFAULT_FIRST_ADDRESS = "127.0.0.11"
DEFAULT_INDEX_HOST = "127.0.0.1"
DEFAULT_INDEX_PORT = 8700
LB_NAME = "gptoss-lb"  # the balancer host of `up --lb` (inventory group gptoss_lb)
LB_PORT = 8000
INDEX_PROCESS_MARK = "gptoss_testbed.index"


# --- state ---------------------------------------------------------------------------------

def read_state() -> dict | None:
    try:
        return json.loads(paths.STATE_FILE.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise TestbedError(f"{paths.STATE_FILE}: not JSON ({e.msg}); run `gptoss-testbed down` to reset") from None


def write_state(state: dict) -> None:
    paths.STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = paths.STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.chmod(tmp, 0o644)  # no secret inside: the API key is only referenced by path
    tmp.replace(paths.STATE_FILE)


def not_running(state: dict) -> list[str]:
    """What the state names that does not run now: host names, then "package index"."""
    gone = [h.name for h in _hosts_of(state) if not hosts.host_running(h)]
    return gone + ([] if index_running() else ["package index"])


def running_state() -> dict:
    """The state, if everything it names runs: a state file alone proves nothing (it outlives a
    machine restart, and a copied disk), so `status` and `env` never report a fleet that is down."""
    state = read_state()
    if state is None:
        raise TestbedError("the testbed is not up (no state file); run `gptoss-testbed up`")
    gone = not_running(state)
    if gone:
        everything = len(gone) == len(_hosts_of(state)) + 1
        raise TestbedError(f"the testbed is not running: {'nothing of it runs' if everything else 'down: ' + ', '.join(gone)} "
                           f"(state {paths.STATE_FILE}; a machine restart leaves this); run `gptoss-testbed up` "
                           f"to boot {'it' if everything else 'them'} again")
    return state


def status_json(state: dict) -> dict:
    """Exactly the documented `status --json` shape ("lb": null without `up --lb`)."""
    return {
        "hosts": [{"name": h["name"], "address": h["address"]} for h in state["hosts"]],
        "lb": state.get("lb"),
        "ssh_key": state["ssh_key"],
        "api_key": Path(state["api_key_file"]).read_text().strip(),
        "stacks": [{"name": s["name"], "vllm": s["vllm"]} for s in state["stacks"]],
        "broken_stack": state["broken_stack"],
    }


def env_json(state: dict) -> dict:
    """What a deploy or a benchmark needs besides `status`: index URLs, files, stats endpoint."""
    return {
        "state_file": str(paths.STATE_FILE),
        "index_url": state["index"]["url"],
        "index_mirrors": state["index_mirrors"],
        "upstream_index_urls": state["upstream_index_urls"],
        "stats_url": state["index"]["url"] + "_stats",
        "index_log": state["index"]["log"],
        "api_key_file": state["api_key_file"],
        "ssh_key": state["ssh_key"],
        "extra_stack_files": [state["stack_file"]],
        "today_stack": state["today_stack"],
        "broken_stack": state["broken_stack"],
        "tiktoken_url": state["tiktoken_url"],
    }


def _hosts_of(state: dict) -> list[hosts.Host]:
    """Every booted host the state names: the serving hosts, then the balancer host if any."""
    lb = [state["lb"]] if state.get("lb") else []
    return [hosts.Host(h["name"], h["address"]) for h in state["hosts"] + lb]


def lb_host(wanted: list[hosts.Host]) -> hosts.Host:
    """The balancer host: the address after the last serving host's."""
    last = wanted[-1].address.rsplit(".", 1)
    if int(last[1]) + 1 > 254:
        raise TestbedError(f"--lb: no address left after {wanted[-1].address}; pick a lower --first-address")
    return hosts.Host(LB_NAME, f"{last[0]}.{int(last[1]) + 1}")


# --- pieces --------------------------------------------------------------------------------

def ensure_api_key() -> Path:
    """The API key the deploy installs on every host (0600, generated once)."""
    path = paths.API_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    os.chmod(path, 0o600)
    return path


def write_tiktoken_standins() -> Path:
    """STAND-IN o200k_base / cl100k_base vocab files, in tiktoken's format (base64 token, rank).

    The real ones come from openaipublic.blob.core.windows.net, which testbed machines cannot
    reach; the deploy copies these from the controller (gptoss_tiktoken_url = file://...)."""
    import base64

    d = paths.TIKTOKEN_DIR
    d.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
    for name in ("o200k_base.tiktoken", "cl100k_base.tiktoken"):
        (d / name).write_text(rows)
        os.chmod(d / name, 0o644)
    return d


def load_knowledge(extra: list[Path] = ()):
    try:
        from gptoss_doctor import knowledge
    except ImportError as e:
        raise TestbedError(f"cannot import gptoss_doctor.knowledge ({e}); run from the project: `uv run gptoss-testbed up`") from None
    try:
        return knowledge.load(extra_stack_files=[str(p) for p in extra])
    except knowledge.KnowledgeError as e:
        raise TestbedError(f"knowledge data: {e}") from None


def start_index(root: Path, host: str, port: int) -> int:
    paths.RUN_DIR.mkdir(parents=True, exist_ok=True)
    log = paths.log_file("index")
    out = paths.log_file("index-stdout")
    cmd = [sys.executable, "-m", INDEX_PROCESS_MARK, "--root", str(root), "--host", host, "--port", str(port),
           "--log", str(log)]
    with out.open("ab") as f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    paths.pid_file("index").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 15
    while not hosts.address_in_use(host, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = out.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise TestbedError(f"package index did not start on {host}:{port}: {tail[0]} (log: {out})")
        time.sleep(0.1)
    return proc.pid


def index_running() -> bool:
    return hosts.pid_alive(hosts.read_pid(paths.pid_file("index")), INDEX_PROCESS_MARK)


# --- up / down -----------------------------------------------------------------------------

def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise TestbedError(f"gptoss-testbed {what}: must run as root (uid {os.geteuid()}): systemd-nspawn, debootstrap "
                           f"and the host roots need it; rerun with sudo")


def up(count: int = DEFAULT_HOSTS, first_address: str = DEFAULT_FIRST_ADDRESS,
       index_host: str = DEFAULT_INDEX_HOST, index_port: int = DEFAULT_INDEX_PORT, log=print, lb: bool = False) -> dict:
    if count < 1:
        raise TestbedError(f"--hosts {count}: need at least 1 host")
    wanted = hosts.plan_hosts(count, first_address)  # bad arguments fail before anything else
    balancer = lb_host(wanted) if lb else None
    if not 0 < index_port < 65536:
        raise TestbedError(f"--index-port {index_port}: not a TCP port (1-65535)")
    require_root("up")
    state = read_state()
    if state is not None and not anything_running(state):
        # Left by a machine restart or killed processes: nothing of it runs, so start from bare hosts.
        log("found a testbed state with nothing running: discarding it")
        _discard_all(state)
        state = None
    if state is not None:
        return _already_up(state, wanted, log, balancer)

    started = time.monotonic()
    image.install_controller_packages(log)
    check_addresses_free(wanted + ([balancer] if balancer else []), index_host, index_port)
    kb = load_knowledge()
    p = catalog.plan(kb)
    base, built = image.ensure_image(log)
    tree = wheels.build_tree(p, log)
    paths.STACK_FILE.parent.mkdir(parents=True, exist_ok=True)
    paths.STACK_FILE.write_text(catalog.broken_stack_toml(kb.latest_stack))
    load_knowledge([paths.STACK_FILE])  # the file we hand out must load
    state = new_state(wanted, p, kb.latest_stack.name, tree, base, index_host, index_port,
                      ssh_key=hosts.ensure_ssh_key(), api_key_file=ensure_api_key(),
                      tiktoken_dir=write_tiktoken_standins())
    if balancer:
        state["lb"] = {"name": balancer.name, "address": balancer.address, "port": LB_PORT}
        wanted = wanted + [balancer]
    write_state(state)  # before anything starts: `down` finds it all from here

    start_index(tree, index_host, index_port)
    public_key = Path(state["ssh_key"] + ".pub").read_text()
    with ThreadPoolExecutor(max_workers=min(4, len(wanted))) as pool:
        list(pool.map(lambda h: hosts.prepare_root(h, base, public_key), wanted))
    for h in wanted:
        hosts.boot(h)
    states = hosts.wait_ready(wanted)
    took = time.monotonic() - started
    state["up_seconds"] = round(took, 1)
    write_state(state)
    for h in wanted:
        log(f"{h.name}  {h.address}  {states[h.name]}")
    log(f"index {state['index']['url']} ({len(state['index_mirrors'])} indexes); up in {took:.1f} s"
        + (" (base image built now)" if built else ""))
    return state


def _refresh_index(state: dict, log) -> None:
    """The served tree follows tests/standins: when its digest changed (a stand-in edited since
    `up`), build the new tree and serve it, so a deploy installs the stand-in as it is now.
    Hosts keep what they installed; a stack installed again (or a new testbed) gets the new wheels."""
    p = catalog.plan(load_knowledge())
    if Path(state["index"]["root"]).name == wheels.tree_digest(p):
        return
    tree = wheels.build_tree(p, log)
    hosts.stop_process(paths.pid_file("index"), INDEX_PROCESS_MARK, timeout=5)
    state["index"]["root"] = str(tree)
    write_state(state)
    start_index(tree, state["index"]["host"], state["index"]["port"])
    log(f"package index rebuilt: the stand-ins changed (tree {tree.name})")


def check_addresses_free(wanted: list[hosts.Host], index_host: str, index_port: int, index_too: bool = True) -> None:
    # :22 for the host's sshd, :8000 for the service the deploy puts there.
    busy = [f"{h.address}:{port}" for h in wanted for port in (22, 8000) if hosts.address_in_use(h.address, port)]
    if busy:
        last = int(wanted[0].address.split(".")[-1])
        raise TestbedError(f"address in use: something already listens on {busy[0]}; stop it or pass "
                           f"--first-address (e.g. 127.0.0.{min(last + 20, 200)})")
    if index_too and hosts.address_in_use(index_host, index_port):
        raise TestbedError(f"address in use: {index_host}:{index_port} (the package index); stop what listens there "
                           f"or pass --index-port")


def new_state(wanted: list[hosts.Host], p: catalog.Plan, today: str, tree: Path, image_path: Path,
              index_host: str, index_port: int, *, ssh_key: Path, api_key_file: Path, tiktoken_dir: Path) -> dict:
    url = f"http://{index_host}:{index_port}/"
    return {
        "hosts": [{"name": h.name, "address": h.address} for h in wanted],
        "ssh_key": str(ssh_key),
        "api_key_file": str(api_key_file),
        "stacks": [s for s in p.stacks if s["name"] != catalog.BROKEN_STACK],
        "broken_stack": catalog.BROKEN_STACK,
        "today_stack": today,
        "stack_file": str(paths.STACK_FILE),
        "index": {"host": index_host, "port": index_port, "url": url, "root": str(tree),
                  "log": str(paths.log_file("index"))},
        "index_mirrors": {name: f"{url}{name}/simple" for name in sorted(p.index_urls)},
        "upstream_index_urls": dict(sorted(p.index_urls.items())),
        "tiktoken_url": f"file://{tiktoken_dir}/",
        "image": str(image_path),
    }


def anything_running(state: dict) -> bool:
    return index_running() or any(hosts.host_running(h) for h in _hosts_of(state))


def _discard_all(state: dict | None) -> None:
    known = _hosts_of(state) if state else []
    for h in known:
        hosts.discard(h)
        h.pid_file.unlink(missing_ok=True)
    if paths.HOSTS_DIR.exists():
        for leftover in paths.HOSTS_DIR.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():  # a root an interrupted `up` unpacked
                hosts.discard(hosts.Host(leftover.name, ""))
            elif leftover.name.startswith(".#") and leftover.name.endswith(".lck"):
                leftover.unlink(missing_ok=True)  # systemd-nspawn's image lock file, left by a killed host
    paths.pid_file("index").unlink(missing_ok=True)
    paths.STATE_FILE.unlink(missing_ok=True)
    paths.STACK_FILE.unlink(missing_ok=True)


def _already_up(state: dict, wanted: list[hosts.Host], log, balancer: hosts.Host | None = None) -> dict:
    known = [hosts.Host(h["name"], h["address"]) for h in state["hosts"]]
    if known != wanted:
        raise TestbedError(f"the testbed is up with {len(known)} hosts from {known[0].address}, not --hosts {len(wanted)} "
                           f"from {wanted[0].address}; run `gptoss-testbed down` first to change it")
    _refresh_index(state, log)
    if balancer and not state.get("lb"):
        check_addresses_free([balancer], state["index"]["host"], state["index"]["port"], index_too=False)
        state["lb"] = {"name": balancer.name, "address": balancer.address, "port": LB_PORT}
        write_state(state)
        hosts.prepare_root(balancer, Path(state["image"]), Path(state["ssh_key"] + ".pub").read_text())
        log(f"{balancer.name} added (the balancer host)")
    known = _hosts_of(state)
    down_hosts = [h for h in known if not hosts.host_running(h)]
    if not index_running():
        start_index(Path(state["index"]["root"]), state["index"]["host"], state["index"]["port"])
        log("package index restarted")
    for h in down_hosts:
        log(f"{h.name} was not running: booting it again")
        hosts.boot(h)
    if down_hosts:
        hosts.wait_ready(down_hosts)
    for h in known:
        log(f"{h.name}  {h.address}  running")
    log(f"already up: {len(known)} hosts, index {state['index']['url']}")
    return state


def down(log=print) -> list[str]:
    """Stop every process the testbed started (by its pid files) and discard the hosts."""
    require_root("down")
    stopped: list[str] = []
    state = read_state()
    known = _hosts_of(state) if state else []
    # Pid files the state does not name (an `up` cut short) are still ours: they sit in RUN_DIR.
    for pid_file in sorted(paths.RUN_DIR.glob("nspawn-*.pid")) if paths.RUN_DIR.exists() else []:
        name = pid_file.name[len("nspawn-"):-len(".pid")]
        if all(h.name != name for h in known):
            known.append(hosts.Host(name, hosts.pid_file_address(pid_file)))
    with ThreadPoolExecutor(max_workers=max(1, len(known))) as pool:
        ran = list(pool.map(hosts.stop_host, known))
    stopped += [h.name for h, r in zip(known, ran) if r]
    if hosts.stop_process(paths.pid_file("index"), INDEX_PROCESS_MARK, timeout=5):
        stopped.append("index")
    _discard_all({"hosts": [{"name": h.name, "address": h.address} for h in known]})
    log(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}; host state discarded")
    return stopped
