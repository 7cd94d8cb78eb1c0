"""Layers one way: no import circle inside deploys/, doctor/ or testbed/, function-level imports
included (docs/design.md shows the layers). The graph is read from the source with ast, so an
import inside a function counts as much as one at the top: a circle that only holds together
because one side imports late is still a circle for the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# (source root, top-level package) of each package whose graph must be acyclic
PACKAGES = {
    "deploys": (REPO / "deploys", "gptoss_deploy"),
    "doctor": (REPO / "doctor", "gptoss_doctor"),
    "testbed": (REPO / "testbed", "gptoss_testbed"),
}


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (its __init__ as the package's name)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules that `name` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from x import y`: y may be a module of x or a name in it
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a name inside a module: the module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    mods = modules(root, package)
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, colours)."""
    colour = {n: 0 for n in graph}  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if colour[m] == 1:
                return stack[stack.index(m):] + [m]
            if colour[m] == 0:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if colour[n] == 0:
            found = visit(n)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_function_level_circle(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("import p.a\n")
    graph = import_graph(tmp_path, "p")
    assert graph["p.a"] == {"p.b"} and graph["p.b"] == {"p.c"} and graph["p.c"] == {"p.a"}
    assert find_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    (pkg / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(tmp_path, "p")) is None


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_no_import_circle(name):
    root, package = PACKAGES[name]
    graph = import_graph(root, package)
    assert len(graph) > 3, f"{package}: no modules found under {root}"
    cycle = find_cycle(graph)
    assert cycle is None, f"{name}/: import circle {' -> '.join(cycle)}"


def test_the_deploy_config_sits_below_the_units_and_the_layout_below_everything():
    deploy = import_graph(*PACKAGES["deploys"])
    below_config = {"gptoss_deploy.fields", "gptoss_deploy.host_checks", "gptoss_deploy.keys",
                    "gptoss_deploy.airgap", "gptoss_deploy.jit_cache"}
    for mod in below_config:
        assert "gptoss_deploy.config" not in deploy[mod], f"{mod} imports config: it must sit below it"
    assert not deploy["gptoss_deploy.rollout"] & {"gptoss_deploy.plan"}, "the rollout must not reach up to the builder"
    layout = (REPO / "doctor" / "gptoss_doctor" / "layout.py").read_text()
    assert not [n for n in ast.walk(ast.parse(layout)) if isinstance(n, (ast.Import, ast.ImportFrom))]
