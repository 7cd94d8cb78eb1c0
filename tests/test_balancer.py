"""The balancer's and the front's config from inventory data (deploys/gptoss_deploy/balancer.py and the
front keys of the key table): where vLLM listens, which hosts are servers, one line on a bad value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pyinfra.api import Inventory

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

from gptoss_deploy import balancer as B  # noqa: E402
from gptoss_deploy import config as C  # noqa: E402
from gptoss_deploy import haproxy as H  # noqa: E402
from gptoss_deploy.manifest import manifest_text  # noqa: E402

from test_deploy_config import DEBIAN, good, one_line_error  # noqa: E402,F401


def test_loopback_service_has_no_front_and_vllm_keeps_the_port(kb, good):
    cfg = C.validate("h", good, DEBIAN, kb)
    assert cfg.front is None
    argv = cfg.serve_argv()
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8000"


@pytest.mark.parametrize("bind", ["10.0.0.5", "0.0.0.0"])
def test_serving_beyond_loopback_puts_vllm_behind_the_front(kb, good, bind):
    cfg = C.validate("h", {**good, "gptoss_bind_address": bind, "gptoss_metrics_allow": ["10.9.0.0/16", "10.1.2.3"]},
                     DEBIAN, kb)
    assert cfg.front == H.Front(bind, 8000, "127.0.0.1", 8001, ("10.9.0.0/16", "10.1.2.3/32"))
    argv = cfg.serve_argv()
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8001"
    manifest = __import__("json").loads(manifest_text(cfg))
    assert (manifest["host"], manifest["port"]) == ("127.0.0.1", 8001)
    assert manifest["front"] == {"address": bind, "port": 8000}


def test_front_can_be_turned_off(kb, good):
    cfg = C.validate("h", {**good, "gptoss_bind_address": "10.0.0.5", "gptoss_front": False}, DEBIAN, kb)
    assert cfg.front is None and cfg.serve_argv()[cfg.serve_argv().index("--host") + 1] == "10.0.0.5"


@pytest.mark.parametrize("override,key", [
    ({"gptoss_vllm_address": "0.0.0.0"}, "gptoss_vllm_address"),
    ({"gptoss_vllm_address": "10.0.0.5", "gptoss_vllm_port": 8000}, "gptoss_vllm_port"),
    ({"gptoss_metrics_allow": ["10.0.0.0/33"]}, "gptoss_metrics_allow"),
    ({"gptoss_front": "sometimes"}, "gptoss_front"),
])
def test_bad_front_values_are_one_line(kb, good, override, key):
    msg = one_line_error(kb, {**good, "gptoss_bind_address": "10.0.0.5", **override})
    assert f"{key}=" in msg


def _inventory(lb_data=None, hosts=(("gpu-1", {"gptoss_bind_address": "10.0.0.11"}),
                                    ("gpu-2", {"gptoss_bind_address": "0.0.0.0", "ssh_hostname": "10.0.0.12",
                                               "gptoss_port": 9000}))):
    names = [*hosts, ("lb-1", lb_data or {})]
    return Inventory((names, {}), gptoss_lb=(["lb-1"], {}))


def test_every_serving_host_is_a_server_at_the_address_its_clients_use():
    inv = _inventory()
    lb = inv.get_host("lb-1")
    assert B.is_balancer(lb) and not B.is_balancer(inv.get_host("gpu-1"))
    b, cert = B.balancer_config(lb, inv)
    assert cert is None
    assert b.servers == (H.Server("gpu-1", "10.0.0.11", 8000), H.Server("gpu-2", "10.0.0.12", 9000))
    assert (b.bind_address, b.port, b.check_interval_ms, b.tls) == ("0.0.0.0", 8000, 1000, False)


def test_a_loopback_only_host_cannot_be_a_server():
    inv = _inventory(hosts=(("gpu-1", {}),))
    with pytest.raises(C.ConfigError, match=r"host gpu-1: gptoss_bind_address='127.0.0.1': .*fix: "):
        B.balancer_config(inv.get_host("lb-1"), inv)


def test_tls_certificate_must_hold_cert_and_key_and_stay_private(tmp_path):
    pem = tmp_path / "site.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    pem.chmod(0o600)
    inv = _inventory({"gptoss_lb_tls_cert": str(pem)})
    with pytest.raises(C.ConfigError, match="certificate and its private key"):
        B.balancer_config(inv.get_host("lb-1"), inv)
    pem.write_text(pem.read_text() + "-----BEGIN PRIVATE KEY-----\ny\n-----END PRIVATE KEY-----\n")
    b, cert = B.balancer_config(inv.get_host("lb-1"), inv)
    assert b.tls and cert == str(pem)
    pem.chmod(0o644)
    with pytest.raises(C.ConfigError, match="world-readable"):
        B.balancer_config(inv.get_host("lb-1"), inv)


def test_a_mistyped_balancer_key_names_the_real_one():
    inv = _inventory({"gptoss_lb_prot": 80})
    with pytest.raises(C.ConfigError, match="did you mean gptoss_lb_port"):
        B.balancer_config(inv.get_host("lb-1"), inv)


# -- the rollout drains through the balancers ------------------------------------------------------------


class FakeLb:
    """A gptoss_lb host whose connection records the runtime commands it is given."""

    groups = ["gptoss_lb"]

    def __init__(self, name, events, fail=None):
        self.name, self.events, self.fail = name, events, fail

    def run_shell_command(self, cmd, **_kw):
        from types import SimpleNamespace

        text = str(cmd)
        action, server = next((a, text.split()[-2] if a == "drain" else text.split()[-1])
                              for a in ("drain", "ready", "stat") if f" {a} " in text)
        self.events.append(f"{self.name} {action} {server.strip(chr(39))}")
        ok = self.fail != action
        line = "scur=0 status=DRAIN waited=0.4" if ok else "gptoss lb: runtime socket: refused"
        return ok, SimpleNamespace(stdout_lines=[line] if ok else [], stderr_lines=[] if ok else [line])


@pytest.fixture()
def roll(monkeypatch, kb, good):
    """rollout._roll_host with the host's steps recorded instead of run: (run, events)."""
    from types import SimpleNamespace

    from gptoss_deploy import rollout as R

    events: list[str] = []
    new = C.validate("gpu-1", {**good, "gptoss_bind_address": "10.0.0.11"}, DEBIAN, kb)
    old = __import__("dataclasses").replace(new, stack="vllm-old")  # only its name is read here
    gates: list = []
    monkeypatch.setattr(R, "switched_to", lambda cfg: False)
    monkeypatch.setattr(R, "_run", lambda cmd: (events.append("switch" if "ln -sfn" in cmd else "run") or True, "__t=1", ""))
    monkeypatch.setattr(R, "gate", lambda cfg: (events.append(f"gate {cfg.stack}") or gates.pop(0)))
    monkeypatch.setattr(R, "doctor_reading", lambda cfg, since: {})

    def run(gate_results, lbs_fail=None):
        gates[:] = gate_results
        lbs = [FakeLb("lb-1", events, lbs_fail), FakeLb("lb-2", events)]
        monkeypatch.setattr(R, "host", SimpleNamespace(state=SimpleNamespace(inventory=lbs + [SimpleNamespace(groups=[])])))
        st = R.Settings("1", 2, None, None, True, 30)
        r = R.HostResult("gpu-1", 0)
        R._roll_host(None, r, new, old, st, "10.0.0.11")
        return r

    return run, events, new, old


def test_the_roll_drains_before_the_restart_and_readies_after_the_gate(roll):
    run, events, new, _old = roll
    r = run([(None, "healthy")])
    assert r.status == "upgraded" and "scur=0" in r.lb_drain
    assert events == ["lb-1 drain gpu-1", "lb-2 drain gpu-1", "switch", f"gate {new.stack}",
                      "lb-1 ready gpu-1", "lb-2 ready gpu-1"]


def test_a_host_whose_gate_fails_is_ready_again_only_once_healthy_on_the_old_stack(roll):
    run, events, new, old = roll
    r = run([("health-gate", "no /health"), (None, "healthy")])
    assert r.status == "failed" and "back in rotation" in r.rollback
    assert events[-2:] == ["lb-1 ready gpu-1", "lb-2 ready gpu-1"]
    events.clear()
    r = run([("health-gate", "no /health"), ("health-gate", "still nothing")])
    assert r.status == "failed" and "out of service" in r.rollback
    assert not any("ready" in e for e in events)  # stays out of rotation


def test_a_balancer_left_out_of_the_run_stops_the_host_before_any_restart():
    from types import SimpleNamespace

    lb = SimpleNamespace(name="lb-1", connected=False, groups=["gptoss_lb"])
    ok, said = B.runtime([lb], "drain", "gpu-1", 30)
    assert not ok and "not connected" in said and "--limit" in said


def test_a_balancer_that_cannot_drain_stops_the_host_before_any_restart(roll):
    run, events, _new, _old = roll
    r = run([(None, "healthy")], lbs_fail="drain")
    assert (r.status, r.step) == ("failed", "lb-drain") and "lb-1" in r.error
    assert "switch" not in events


# -- the fleet doctor shows the balancers' view ------------------------------------------------------------


def _fleet_doctor():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fleet_doctor_lb", REPO / "deploys" / "doctor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAT = ("# pxname,svname,qcur,qmax,scur,smax,slim,status,check_status\n"
        "gptoss,FRONTEND,,,3,5,,OPEN,\n"
        "gptoss,gpu-1,0,0,2,4,,UP,L7OK\n"
        "gptoss,gpu-2,0,0,0,1,,DRAIN,L7OK\n"
        "gptoss,gpu-3,0,0,0,1,,DOWN,L7STS\n"
        "gptoss,BACKEND,0,0,2,5,,UP,\n")


def test_fleet_doctor_shows_each_backend_as_the_balancer_sees_it():
    import io

    FD = _fleet_doctor()
    rows = [FD.unreadable(n, "x") | {"exit_code": 0, "error": None} for n in ("gpu-1", "gpu-2", "gpu-3", "gpu-4")]
    lbs = [FD.balancer_view("lb-1", True, STAT, "")]
    report = FD.fleet_report(rows, lbs)
    seen = {r["host"]: r["balancer"] for r in report["hosts"]}
    assert seen == {"gpu-1": "UP", "gpu-2": "DRAIN (L7OK)", "gpu-3": "DOWN (L7STS)", "gpu-4": "absent"}
    assert report["exit_code"] == 0 and report["balancers"][0]["servers"]["gpu-1"]["scur"] == 2
    buf = io.StringIO()
    FD.render_table(report, file=buf)
    text = buf.getvalue()
    assert "balancer lb-1: gpu-1 UP (2 in flight), gpu-2 DRAIN (0 in flight)" in text and "DOWN (L7STS)" in text


def test_an_unreadable_balancer_is_exit_2_with_the_fix():
    FD = _fleet_doctor()
    b = FD.balancer_view("lb-1", False, "", "ConnectionRefusedError: [Errno 111]")
    assert "cannot read haproxy's runtime socket" in b["error"] and "deploys/gptoss.py" in b["error"]
    rows = [FD.unreadable("gpu-1", "x") | {"exit_code": 0, "error": None}]
    report = FD.fleet_report(rows, [b])
    assert report["exit_code"] == 2 and report["hosts"][0]["balancer"] == "unknown"


def test_the_front_needs_systemd(kb, good):
    msg = one_line_error(kb, {**good, "gptoss_bind_address": "10.0.0.5", "gptoss_service_manager": "supervisor"})
    assert "gptoss_front='auto'" in msg and "systemd" in msg


# -- the local fleet's balancer host (gptoss-testbed up --lb) -------------------------------------------------


def test_testbed_lb_host_takes_the_next_address_and_status_names_it(tmp_path):
    from gptoss_testbed import fleet, hosts
    from gptoss_testbed.errors import TestbedError

    wanted = hosts.plan_hosts(3, "127.0.0.81")
    assert fleet.lb_host(wanted) == hosts.Host("gptoss-lb", "127.0.0.84")
    with pytest.raises(TestbedError, match="--lb: no address left"):
        fleet.lb_host(hosts.plan_hosts(2, "127.0.0.253"))
    key = tmp_path / "api-key"
    key.write_text("k\n")
    state = {"hosts": [{"name": h.name, "address": h.address} for h in wanted], "ssh_key": "/k", "api_key_file": str(key),
             "stacks": [], "broken_stack": "b", "lb": {"name": "gptoss-lb", "address": "127.0.0.84", "port": 8000}}
    assert fleet.status_json(state)["lb"] == {"name": "gptoss-lb", "address": "127.0.0.84", "port": 8000}
    assert [h.name for h in fleet._hosts_of(state)] == ["gptoss-1", "gptoss-2", "gptoss-3", "gptoss-lb"]
    assert fleet.status_json({**state, "lb": None})["lb"] is None
