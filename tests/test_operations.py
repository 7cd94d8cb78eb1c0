"""Every custom pyinfra operation of the deploy, tested the way pyinfra tests its own
(https://github.com/pyinfra-dev/pyinfra/blob/3.x/tests/test_operations.py): JSON fixtures of
arguments and facts in, commands out, no host and no connection.

One folder per operation, `tests/fixtures/operations/<module>.<operation>/`, named after the
module of `deploys/gptoss_deploy/` the operation lives in; one JSON file per case:

- `args`: the operation's keyword arguments. Values the JSON has no type for are tagged:
  `{"@HostConfig": {...}}` (fields over `_host_config.json`, the config of a plain Debian host),
  `{"@ManagedFile": {...}}` and the other dataclasses named in `TYPES`, `{"@tuple": [...]}`,
  `{"@callable": true}` (a function returning that value: the `reload_if`/`restart_if`
  callbacks), `local:NAME` in a string (a file of `local_files`, written on the controller for the
  case; `file://local:` is that folder as a URL).
- `facts`: `{"<module>.<Fact>": {"args": {...}, "value": ...}}` (or a list of such, one per
  argument set). The operation must ask with exactly those arguments, each one a real argument
  of the fact's `command()`, as pyinfra's own FakeHost checks.
- `executing`: true for pyinfra's execute phase (the gates run their checks then);
  `other_hosts`: the rest of the inventory after this host (`gpu-01`); `failed_hosts`: those
  pyinfra has already failed;
  `shell`: what `host.run_shell_command` answers, in order (`ok`, `stdout`, `stderr`, and
  optionally the `command` it must be asked to run); `controller_uv`: [path, `uv --version`] of
  the controller's uv (default `/controller/bin/uv`, `uv 0.9.5`), what the deploy pushes.
- `commands`: what the operation yields: a string per shell command (`{"_stdin": ..., "command":
  ...}` when it has connector arguments), `["upload", content or "local:NAME", dest]` (text
  over 200 characters as `sha256:HEX`: the unit and manifest texts have tests of their own),
  `["function", name, args]`.
- `noop`: the no-change description, or null where the operation must not call `host.noop`.
  A case with no commands must say which.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import sys
from importlib import import_module
from io import StringIO
from pathlib import Path
from unittest import mock

import pytest
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.context import ctx_host, ctx_state

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

from gptoss_deploy import airgap, jit_cache, managed_python, ops, rollout, wheelhouse  # noqa: E402
from gptoss_deploy import config as C  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "operations"
LONG = 200  # uploaded text longer than this is shown by its sha256
BASE_CONFIG = json.loads((FIXTURES / "_host_config.json").read_text())

# The dataclasses a fixture may build, from where they live now.
TYPES = {
    "HostConfig": C.HostConfig,
    "Index": C.Index,
    "ManagedFile": ops.ManagedFile,
    "ManagedDir": ops.ManagedDir,
    "Airgap": airgap.Airgap,
    "JitCache": jit_cache.JitCache,
    "Wheel": wheelhouse.Wheel,
    "Wheelhouse": wheelhouse.Wheelhouse,
    "Settings": rollout.Settings,
    "ManagedPython": managed_python.ManagedPython,
}


def parse_value(value, local: Path):
    """JSON -> the Python values operations take (see the module docstring)."""
    if isinstance(value, str):
        return value.replace("local:", f"{local}/")
    if isinstance(value, list):
        return [parse_value(v, local) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "@tuple":
            return tuple(parse_value(v, local) for v in inner)
        if tag == "@callable":
            return lambda: inner
        if tag == "@HostConfig":
            fields = {**BASE_CONFIG, **inner}
            return C.HostConfig(**{k: as_field(C.HostConfig, k, parse_value(v, local)) for k, v in fields.items()})
        if tag.startswith("@") and tag[1:] in TYPES:
            cls = TYPES[tag[1:]]
            return cls(**{k: as_field(cls, k, parse_value(v, local)) for k, v in inner.items()})
    return {k: parse_value(v, local) for k, v in value.items()}


def as_field(cls, name: str, value):
    """A JSON list becomes a tuple where the dataclass declares a tuple (they are frozen, hashable)."""
    declared = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    return tuple(value) if isinstance(value, list) and declared.get(name, "").startswith("tuple") else value


def jsonable(value):
    """Fact arguments as JSON compares them: tuples are lists."""
    return json.loads(json.dumps(value, default=list))


class FakeInventoryHost:
    def __init__(self, name: str):
        self.name = name


class FakeInventory(list):
    def get_active_hosts(self):
        return list(self)


_STATES: list = []  # kept alive: the rollout keys its per-run state by id(state)


class FakeState:
    """The parts of pyinfra's State the operations read: the execute phase, the inventory (the
    fixture's `inventory` names, this host first) and the hosts that failed (`failed_hosts`)."""

    def __init__(self, executing: bool, inventory: list[str], failed: list[str]):
        self.is_executing = executing
        hosts = {n: FakeInventoryHost(n) for n in inventory}
        self.inventory = FakeInventory(hosts.values())
        self.failed_hosts: set = {hosts.get(n) or FakeInventoryHost(n) for n in failed}
        self.print_noop_info = False
        _STATES.append(self)


class FakeHost:
    """A host whose facts and command outputs come from the fixture (pyinfra's tests/util.py
    FakeHost, plus `run_shell_command` for the execute-time gates)."""

    name = "gpu-01"
    print_prefix = "[gpu-01] "

    def __init__(self, facts: dict, shell: list, executing: bool, inventory=(), failed=()):
        self.facts = facts
        self.shell = list(shell)
        self.state = FakeState(executing, [self.name, *inventory], list(failed))
        self.data: dict = {}
        self.noop_description = None
        self.asked: list[str] = []

    def noop(self, description: str) -> None:
        self.noop_description = description

    def get_fact(self, fact_cls, **kwargs):
        key = f"{fact_cls.__module__.split('.')[-1]}.{fact_cls.__name__}"
        if key not in self.facts:
            raise KeyError(f"missing test fact data: {key} (asked with {kwargs})")
        real_args = inspect.signature(fact_cls.command).parameters
        for arg in kwargs:
            assert arg in real_args, f"{arg} is not an argument of {key}.command()"
        entries = self.facts[key] if isinstance(self.facts[key], list) else [self.facts[key]]
        asked = jsonable(kwargs)
        for entry in entries:
            if entry.get("args", {}) == asked:
                self.asked.append(key)
                return parse_value(entry["value"], Path("/"))
        raise AssertionError(f"{key} asked with {asked}; the fixture has {[e.get('args', {}) for e in entries]}")

    def run_shell_command(self, command, **kwargs):
        assert self.shell, f"unexpected command on the host: {command}"
        answer = self.shell.pop(0)
        text = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
        if "command" in answer:
            assert text == answer["command"]
        lines = [OutputLine("stdout", line) for line in answer.get("stdout", [])]
        lines += [OutputLine("stderr", line) for line in answer.get("stderr", [])]
        return answer.get("ok", True), CommandOutput(lines)


def command_json(command, local: Path):
    """One yielded command as the fixtures write it (pyinfra's tests/test_operations.py form)."""
    def unlocal(text: str) -> str:
        return text.replace(str(local) + "/", "local:")

    if isinstance(command, str):
        command = StringCommand(command.strip())
    if isinstance(command, StringCommand):
        raw, masked = command.get_raw_value(), command.get_masked_value()
        out = unlocal(raw) if raw == masked else [unlocal(raw), unlocal(masked)]
    elif isinstance(command, FileUploadCommand):
        src = command.src
        if isinstance(src, StringIO):
            src.seek(0)
            src = src.read()
            if len(src) > LONG:  # a whole unit or manifest: its own tests read it; here, which one
                src = "sha256:" + hashlib.sha256(src.encode()).hexdigest()
        out = ["upload", unlocal(str(src)), str(command.dest)]
    elif isinstance(command, FunctionCommand):
        out = ["function", command.function.__name__, [unlocal(str(a)) for a in command.args]]
    else:
        raise AssertionError(f"{command!r} is not a command")
    connector = {k: v for k, v in (command.connector_arguments or {}).items() if k != "remote_temp_filename"}
    return {**connector, "command": out} if connector else out


def cases():
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        for case in sorted(folder.glob("*.json")):
            yield pytest.param(folder.name, case, id=f"{folder.name}/{case.stem}")


@pytest.mark.parametrize(("op_name", "case"), list(cases()))
def test_operation(op_name, case, tmp_path):
    module, name = op_name.split(".")
    op = getattr(import_module(f"gptoss_deploy.{module}"), name)
    data = json.loads(case.read_text())
    for rel, content in data.get("local_files", {}).items():
        (tmp_path / rel).write_text(content)
    fake = FakeHost(data.get("facts", {}), data.get("shell", []), data.get("executing", False),
                    data.get("other_hosts", []), data.get("failed_hosts", []))
    kwargs = parse_value(data.get("args", {}), tmp_path)
    controller_uv = tuple(data.get("controller_uv", ("/controller/bin/uv", "uv 0.9.5")))
    with ctx_state.use(fake.state), ctx_host.use(fake), \
            mock.patch("gptoss_deploy.python_env.controller_uv", lambda: controller_uv):
        got = [command_json(c, tmp_path) for c in op._inner(**kwargs)]
    assert got == data["commands"], json.dumps(got, indent=2)
    assert not fake.shell, f"the fixture answers {len(fake.shell)} host command(s) the operation never ran"
    assert set(data.get("facts", {})) <= set(fake.asked), "the fixture gives facts the operation never read"
    if "noop" in data:
        assert fake.noop_description == data["noop"]
    else:
        assert got, "a case with no commands must say its noop description (or null)"
        assert fake.noop_description is None, f"host.noop({fake.noop_description!r}) beside commands"


def test_every_operation_has_fixtures():
    """Each @operation of the deploy package has its folder of cases, with a no-change case."""
    import pkgutil

    import gptoss_deploy

    found = set()
    for info in pkgutil.iter_modules(gptoss_deploy.__path__):
        mod = import_module(f"gptoss_deploy.{info.name}")
        for attr, value in vars(mod).items():
            # An @operation wraps a generator; a @deploy wraps a plain function.
            inner = getattr(value, "_inner", None)
            if inner and inspect.isgeneratorfunction(inner) and inner.__module__ == mod.__name__:
                found.add(f"{info.name}.{attr}")
    have = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert found - have == set(), "operations without fixtures"
    assert have - found == set(), "fixture folders naming no operation (moved or renamed?)"
    for name in sorted(found):
        assert list((FIXTURES / name).glob("*.json")), f"{name}: no case"
