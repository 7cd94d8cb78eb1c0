"""Every custom pyinfra fact of the deploy, tested the way pyinfra tests its own
(https://github.com/pyinfra-dev/pyinfra/blob/3.x/tests/test_facts.py): the command a host runs,
the lines it prints, the value the deploy reads.

One folder per fact, `tests/fixtures/facts/<module>.<Fact>/`, named after the module of
`deploys/gptoss_deploy/` the fact lives in; one JSON file per case:

- `args`: the keyword arguments of the fact's `command()` (JSON lists where it takes tuples);
- `command`: the exact shell command;
- `output`: the lines the host prints, or null for a host that printed nothing at all (pyinfra
  then uses the fact's `default()`);
- `fact`: the value (sets as sorted lists).

Besides: each fixture's command parses as POSIX sh (`sh -n`), and runs on this machine with
`process()` taking its real output (the facts only read).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
from pyinfra.api import FactBase

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploys"))

FIXTURES = Path(__file__).parent / "fixtures" / "facts"


def fact_class(folder: str) -> type[FactBase]:
    module, name = folder.split(".")
    return getattr(import_module(f"gptoss_deploy.{module}"), name)


def jsonable(value):
    """A fact value as JSON holds it: sets become sorted lists, tuples lists."""
    return json.loads(json.dumps(value, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else list(v)))


def cases():
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        for case in sorted(folder.glob("*.json")):
            yield pytest.param(folder.name, case, id=f"{folder.name}/{case.stem}")


CASES = list(cases())


@pytest.mark.parametrize(("fact_name", "case"), CASES)
def test_fact(fact_name, case):
    fact = fact_class(fact_name)()
    data = json.loads(case.read_text())
    assert fact.command(**data.get("args", {})) == data["command"]
    value = fact.default() if data["output"] is None else fact.process(data["output"])
    assert jsonable(value) == data["fact"], json.dumps(jsonable(value), indent=2)


@pytest.mark.parametrize(("fact_name", "case"), CASES)
def test_fact_command_runs_here(fact_name, case):
    """The command is valid sh, and what it prints on this machine is read without error
    into a value of the fixture's type."""
    fact = fact_class(fact_name)()
    data = json.loads(case.read_text())
    command = fact.command(**data.get("args", {}))
    assert subprocess.run(["sh", "-n", "-c", command], capture_output=True).returncode == 0
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    value = jsonable(fact.process(out.stdout.splitlines()))
    assert type(value) is type(data["fact"])


def test_every_fact_has_fixtures():
    """Each FactBase of the deploy package has its folder of cases."""
    import inspect
    import pkgutil

    import gptoss_deploy

    found = set()
    for info in pkgutil.iter_modules(gptoss_deploy.__path__):
        mod = import_module(f"gptoss_deploy.{info.name}")
        for attr, value in vars(mod).items():
            if inspect.isclass(value) and issubclass(value, FactBase) and value.__module__ == mod.__name__:
                found.add(f"{info.name}.{attr}")
    have = {p.name for p in FIXTURES.iterdir() if p.is_dir()}
    assert found - have == set(), "facts without fixtures"
    assert have - found == set(), "fixture folders naming no fact (moved or renamed?)"
