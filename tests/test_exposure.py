"""vllm-port-exposed: facts in, findings out, and the collector on a fake root.

The HTTP surface fixture is what the collector read from the real vLLM 0.26.0 wheel
(tests/fixtures/exposure/README.md); the stand-in's is read live from its files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fakeroot import Box
from test_standin_routes import install_standin

from gptoss_doctor.checks import run_one
from gptoss_doctor.checks.exposure import judge_condition
from gptoss_doctor.collect.exposure import listen_fact, read_http_surface
from gptoss_doctor.findings import REGISTRY
from gptoss_doctor.snapshot import Snapshot

FIXTURES = Path(__file__).parent / "fixtures" / "exposure"
SURFACE_0_26 = json.loads((FIXTURES / "vllm-0.26.0-http-surface.json").read_text())
UNIT = "/etc/systemd/system/gptoss-vllm.service"
SPEC = REGISTRY["vllm-port-exposed"]


def socket_row(address: str, port: int, inode: int) -> dict:
    return {"address": address, "port": port, "inode": inode, "pid": None, "vllm": None}


def snapshot(host="10.0.0.5", port=8000, sockets=None, key=True, env=None, surface=SURFACE_0_26, flags=None):
    """A deployed host: the unit's serve args, the listening sockets, the installed vLLM's surface."""
    environment = {**({"VLLM_API_KEY": "***"} if key else {}), **(env or {})}
    serve = {"model": "openai/gpt-oss-20b", "host": host, "port": port, "tensor_parallel_size": 1,
             "gpu_memory_utilization": 0.9, "api_key_set": key, "flags": {"host": host, "port": str(port), **(flags or {})}}
    facts = {
        "service": {"value": {"unit": "gptoss-vllm.service", "unit_path": UNIT, "environment": environment,
                              "argv": ["/opt/gptoss/current/bin/vllm", "serve"], "environment_files": []}},
        "service.serve": {"value": serve, "source": f"{UNIT} ExecStart="},
        "service.listen": {"value": {"host": host, "port": port, "from": f"{UNIT} ExecStart=",
                                     "sockets": sockets if sockets is not None else [], "sockets_unread": [],
                                     "vllm_pids": [4242]}},
        "vllm.http_surface": {"value": surface},
        "manifest": {"value": {"host": host, "port": port}},
    }
    return Snapshot({"facts": facts})


def judge(snap):
    return run_one(snap, None, SPEC)


def open_paths(finding) -> set[str]:
    return {r["path"] for r in finding.evidence["open_routes"]}


def test_exposed_0_26_names_the_routes_real_vllm_left_open():
    """vLLM 0.26.0 listening on every interface with a key: the error names the routes that answered
    without the key on the H200 (issue 15), and none of the guarded or unregistered ones."""
    snap = snapshot(host="0.0.0.0", sockets=[{**socket_row("0.0.0.0", 8000, 77), "pid": 4242, "vllm": True}])
    (finding,), status = judge(snap)
    assert status == "error"
    opened = open_paths(finding)
    assert {"/invocations", "/tokenize", "/detokenize", "/generative_scoring", "/scale_elastic_ep",
            "/is_scaling_elastic_ep", "/metrics", "/load", "/ping", "/openapi.json", "/docs", "/redoc"} <= opened
    assert not any(p.startswith(("/v1", "/v2", "/inference")) for p in opened)  # the key guards these
    assert not opened & {"/sleep", "/collective_rpc", "/pause", "/pooling", "/classify", "/tokenizer_info"}
    assert "/invocations" in finding.title and "0.0.0.0:8000" in finding.title
    assert "/start_profile" in {r["path"] for r in finding.evidence["open_if_enabled"]}  # cannot judge: said so
    assert "127.0.0.1" in finding.fix.text and "gptoss_bind_address" in finding.fix.text
    assert any("--host 127.0.0.1" in c for c in finding.fix.commands)


def test_loopback_bind_is_not_exposed():
    snap = snapshot(host="127.0.0.1", sockets=[{**socket_row("127.0.0.1", 8000, 77), "vllm": True}])
    assert judge(snap) == ([], "ok")


def test_a_front_on_the_network_with_vllm_on_loopback_is_not_exposed():
    """The front (HAProxy) listens on every interface; vLLM's own port only on loopback."""
    sockets = [{**socket_row("127.0.0.1", 8000, 77), "pid": 4242, "vllm": True},
               {**socket_row("0.0.0.0", 443, 90), "vllm": False}, {**socket_row("::", 443, 91), "vllm": False}]
    assert judge(snapshot(host="127.0.0.1", sockets=sockets)) == ([], "ok")


def test_the_socket_wins_over_the_configured_address():
    """The unit says loopback, but what listens on vLLM's port is on every interface (an edited
    unit not yet reloaded, a hand-started server): the socket decides."""
    snap = snapshot(host="127.0.0.1", sockets=[socket_row("::", 8000, 77)])
    (finding,), _ = judge(snap)
    assert finding.evidence["addresses"] == [":::8000"] and finding.evidence["known_from"] == "listening"


def test_configured_but_not_running_is_judged_from_the_bind_address():
    (finding,), _ = judge(snapshot(host="10.0.0.5", sockets=[]))
    assert finding.evidence["known_from"] == "configured" and finding.evidence["addresses"] == ["10.0.0.5:8000"]


def test_dev_mode_opens_the_control_routes():
    (finding,), _ = judge(snapshot(host="0.0.0.0", env={"VLLM_SERVER_DEV_MODE": "1"}))
    control = {r["path"] for r in finding.evidence["open_routes"] if r["kind"] == "control"}
    assert {"/sleep", "/collective_rpc", "/pause", "/update_weights"} <= control


def test_without_a_key_every_route_is_open():
    (finding,), _ = judge(snapshot(host="0.0.0.0", key=False))
    assert {"/v1/completions", "/v1/chat/completions", "/invocations"} <= open_paths(finding)
    assert "no API key" in finding.title


def test_a_guard_that_covers_every_acting_route_is_not_an_error():
    """What is open is read from the source: a vLLM whose check guards every path is not flagged,
    whatever its version (the check has no version list)."""
    surface = {**SURFACE_0_26, "guard": {**SURFACE_0_26["guard"], "prefixes": ["/"]}}
    assert judge(snapshot(host="0.0.0.0", surface=surface)) == ([], "ok")


def test_disable_fastapi_docs_removes_the_docs_routes():
    (finding,), _ = judge(snapshot(host="0.0.0.0", flags={"disable-fastapi-docs": "True"}))
    assert not open_paths(finding) & {"/docs", "/redoc", "/openapi.json"}


@pytest.mark.parametrize("text,flags,env,want", [
    ("envs.VLLM_SERVER_DEV_MODE", {}, {}, False),
    ("envs.VLLM_SERVER_DEV_MODE", {}, {"VLLM_SERVER_DEV_MODE": "1"}, True),
    ("'generate' in supported_tasks", {}, {}, True),
    ("'transcription' in supported_tasks or 'realtime' in supported_tasks", {}, {}, False),
    ("not (args.disable_fastapi_docs)", {"disable-fastapi-docs": "True"}, {}, False),
    ("getattr(app.state.args, 'enable_tokenizer_info_endpoint', False)", {"enable-tokenizer-info-endpoint": "True"}, {}, True),
    ("profiler_config is not None and profiler_config.profiler is not None", {}, {}, None),
])
def test_registration_conditions(text, flags, env, want):
    assert judge_condition(text, flags, env) is want


# -- the collector on a fake root ------------------------------------------------------------------


def _hex4(ip: str, port: int) -> str:
    return "".join(f"{int(b):02X}" for b in reversed(ip.split("."))) + f":{port:04X}"


def test_collector_reads_sockets_owners_and_the_served_vllm(tmp_path):
    """A fake root: the unit binds 10.0.0.5:8000, /proc/net/tcp lists vLLM's socket there and a
    front's on 0.0.0.0:443, /proc/net/tcp6 one on [::]:9100; vLLM's process holds the first. The
    stand-in 0.26.0 is installed in the unit's venv; the collector reads all of it, the check fires."""
    from gptoss_doctor.collect import Env
    from gptoss_doctor.collect.exposure import http_surface_fact

    root = tmp_path / "root"
    box = Box(root)
    venv = "/opt/gptoss/stacks/vllm-0.26.0"
    box.write(f"{venv}/pyvenv.cfg", "home = /usr/bin\n")
    site = install_standin(tmp_path, "0.26.0")
    target = root / venv.lstrip("/") / "lib/python3.12/site-packages"
    target.parent.mkdir(parents=True, exist_ok=True)
    site.rename(target)
    box.write(UNIT, f"[Service]\nEnvironment=VLLM_API_KEY=sk-x\nExecStart={venv}/bin/vllm serve openai/gpt-oss-20b "
                    "--host 10.0.0.5 --port 8000\n")
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    row = "   {n}: {local} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {inode} 1\n"
    box.write("/proc/net/tcp", head + row.format(n=0, local=_hex4("10.0.0.5", 8000), inode=5001)
              + row.format(n=1, local=_hex4("0.0.0.0", 443), inode=5002))
    box.write("/proc/net/tcp6", head + row.format(n=0, local="00000000000000000000000000000000:238C", inode=5003))
    box.write("/proc/4242/cmdline", "\0".join([f"{venv}/bin/python", f"{venv}/bin/vllm", "serve", "openai/gpt-oss-20b"]) + "\0")
    (root / "proc/4242/fd").mkdir(parents=True)
    os.symlink("socket:[5001]", root / "proc/4242/fd/7")
    box.write("/proc/99/cmdline", "haproxy\0-f\0/etc/haproxy/haproxy.cfg\0")
    env = Env(root=root, environ={"PATH": "/usr/bin"})

    listen = listen_fact(env)["service.listen"]["value"]
    assert (listen["host"], listen["port"]) == ("10.0.0.5", 8000) and listen["vllm_pids"] == [4242]
    by_port = {s["port"]: s for s in listen["sockets"]}
    assert by_port[8000]["address"] == "10.0.0.5" and by_port[8000]["vllm"] is True and by_port[8000]["pid"] == 4242
    assert by_port[443]["vllm"] is False and by_port[9100]["address"] == "::"

    surface = http_surface_fact(env)["vllm.http_surface"]["value"]
    assert surface["guard"]["prefixes"] == ["/v1", "/v2", "/inference"]
    snap = snapshot(host="10.0.0.5", sockets=listen["sockets"], surface=surface)
    (finding,), status = judge(snap)
    assert status == "error" and finding.evidence["addresses"] == ["10.0.0.5:8000"]
    assert "/invocations" in open_paths(finding)


def test_real_0_26_source_reading_matches_what_was_measured():
    """The recorded surface of the real wheel: the key check guards /v1, /v2, /inference, and the
    routes measured open on the H200 are registered outside it, unconditionally or for 'generate'."""
    assert SURFACE_0_26["guard"]["prefixes"] == ["/v1", "/v2", "/inference"]
    routes = {r["path"]: r for r in SURFACE_0_26["routes"]}
    assert routes["/invocations"]["when"] == [[]]
    for path in ("/tokenize", "/detokenize", "/metrics", "/load", "/ping", "/health", "/version"):
        assert routes[path]["when"] == [[]], path
    assert routes["/sleep"]["when"] == [["envs.VLLM_SERVER_DEV_MODE"]]


def test_read_http_surface_needs_a_vllm(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_http_surface([tmp_path])


def test_without_a_deployment_the_surface_comes_from_the_venv_named(tmp_path):
    """No unit, no manifest: `--venv` (passed as `explicit`) names the vLLM whose source is read."""
    from gptoss_doctor.collect import Env
    from gptoss_doctor.collect.exposure import http_surface_fact

    venv = tmp_path / "venv"
    (venv / "lib/python3.12").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    install_standin(tmp_path, "0.28.0").rename(venv / "lib/python3.12/site-packages")
    env = Env(root=tmp_path / "root", environ={"PATH": "/usr/bin"})
    assert "absent" in http_surface_fact(env)["vllm.http_surface"]
    surface = http_surface_fact(env, explicit=str(venv))["vllm.http_surface"]["value"]
    assert surface["guard"]["prefixes"] == ["/v1", "/v2", "/inference", "/cohere"]


def _venv_with_standin(tmp_path: Path, version: str, record: bool = True) -> tuple[Path, Path]:
    """A venv (tmp_path/venv) with the stand-in vLLM; its dist-info RECORD unless `record` is False."""
    venv = tmp_path / "venv"
    (venv / "lib/python3.12").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    site = venv / "lib/python3.12/site-packages"
    install_standin(tmp_path, version).rename(site)
    for old in site.glob("vllm-*.dist-info/RECORD"):
        old.unlink()
    if record:
        dist = site / f"vllm-{version}.dist-info"
        dist.mkdir(exist_ok=True)
        (dist / "RECORD").write_text("vllm/__init__.py,,\n")
    return venv, site / "vllm"


def test_the_surface_is_cached_by_the_installed_vllm(tmp_path, monkeypatch):
    """A second read of the same install is the cached surface (nothing parsed); reinstalling
    (a new RECORD), a damaged or foreign cache file, or no cache folder parse the source again."""
    from gptoss_doctor.collect import exposure

    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", str(cache))
    venv, vllm_dir = _venv_with_standin(tmp_path, "0.26.0")
    parsed = []
    real_parse = exposure.parse_http_surface
    monkeypatch.setattr(exposure, "parse_http_surface", lambda d: parsed.append(d) or real_parse(d))

    first = exposure.cached_http_surface(vllm_dir)
    (stored,) = cache.glob("http-surface-*.json")
    assert parsed == [vllm_dir] and first["guard"]["prefixes"] == ["/v1", "/v2", "/inference"]
    assert exposure.cached_http_surface(vllm_dir) == first and len(parsed) == 1  # a hit: not parsed

    record = vllm_dir.parent / "vllm-0.26.0.dist-info" / "RECORD"
    record.write_text(record.read_text() + "vllm/entrypoints/api_server.py,,\n")  # reinstalled
    assert exposure.cached_http_surface(vllm_dir) == first and len(parsed) == 2
    assert exposure.cached_http_surface(vllm_dir) == first and len(parsed) == 2

    for damaged in (b"\x00 not json", b'{"key": "another", "value": {"guard": null, "routes": []}}', b"[1, 2]"):
        stored.write_bytes(damaged)  # ignored (JSON only: never run), parsed again, rewritten
        assert exposure.cached_http_surface(vllm_dir) == first
    assert len(parsed) == 5 and exposure.cached_http_surface(vllm_dir) == first and len(parsed) == 5

    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", "")  # no cache folder: parsed every time
    exposure.cached_http_surface(vllm_dir)
    exposure.cached_http_surface(vllm_dir)
    assert len(parsed) == 7


def test_a_vllm_without_a_record_is_parsed_each_time(tmp_path, monkeypatch):
    """No dist-info RECORD (a source tree): nothing identifies the install, so nothing is cached."""
    from gptoss_doctor.collect import exposure

    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTOSS_DOCTOR_CACHE", str(cache))
    _venv, vllm_dir = _venv_with_standin(tmp_path, "0.26.0", record=False)
    assert exposure.surface_key(vllm_dir) is None
    assert exposure.cached_http_surface(vllm_dir)["routes"]
    assert not list(cache.glob("http-surface-*.json"))


def test_collect_reads_the_surface_of_the_venv_named(tmp_path):
    """collect(venv_path=X) passes --venv to the surface's collector, as it does to the venv's."""
    from gptoss_doctor.collect import Env, collect

    venv, vllm_dir = _venv_with_standin(tmp_path, "0.28.0")
    env = Env(root=tmp_path / "root", environ={"PATH": "/usr/bin"})
    fact = collect(env, venv_path=str(venv)).data["facts"]["vllm.http_surface"]
    assert fact["source"] == str(vllm_dir)
    assert fact["value"]["guard"]["prefixes"] == ["/v1", "/v2", "/inference", "/cohere"]


def test_a_hand_started_vllm_is_judged_by_its_socket_and_its_unguarded_routes():
    """No unit, no manifest: a vLLM process listening on every interface. Whether it has a key is
    unknown, so only the routes outside the key check are named."""
    snap = snapshot(sockets=[{**socket_row("0.0.0.0", 8000, 77), "pid": 4242, "vllm": True}])
    for key in ("service", "service.serve", "manifest"):
        snap.facts.pop(key)
    snap.facts["service.listen"]["value"].update(host=None, port=None, **{"from": None})
    (finding,), status = judge(snap)
    assert status == "error" and finding.evidence["addresses"] == ["0.0.0.0:8000"]
    assert "/invocations" in open_paths(finding) and "/v1/completions" not in open_paths(finding)
