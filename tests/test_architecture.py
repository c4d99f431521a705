"""The package's import graph (read with ``ast``): floors, no cycles, imports at the top.

Floors, from the top: **entry** (``adasched.cli``, the ``adasched.workflow`` package, ``__main__``) -> **stages**
(``adasched.stages``) -> **library** (everything else) -> **base** (errors, io, dispatch, download, registry,
progress, limits, and the package itself for ``__version__``).  A module imports only its own floor or lower ones,
the entry modules never each other, and the base floor nothing above it.  In-package imports stand at module
level, so every edge is visible here; a deferred import is allowed only for an optional or heavy third-party
package or plugin loading, with a comment saying so.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "adasched"

ENTRY = ("adasched.cli", "adasched.workflow", "adasched.__main__")
STAGES = ("adasched.stages",)
BASE = ("adasched.errors", "adasched.io", "adasched.dispatch", "adasched.download", "adasched.registry",
        "adasched.progress", "adasched.limits")
FLOORS = {"entry": 3, "stages": 2, "library": 1, "base": 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> str:
    if module == "adasched":
        return "base"
    for prefix, name in ((ENTRY, "entry"), (STAGES, "stages"), (BASE, "base")):
        if any(module == p or module.startswith(p + ".") for p in prefix):
            return name
    return "library"


def imports(module: str):
    """``(imported module, line, deferred)`` of every in-package import of ``module``, and its other imports."""
    tree = ast.parse(MODULES[module].read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out, external = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
                base = ".".join([pkg.rsplit(".", node.level - 1)[0]] + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        up, deferred = parents.get(node), False
        while up is not None:
            deferred |= isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            up = parents.get(up)
        for name in dict.fromkeys(names):
            target = next((m for m in sorted(MODULES, key=len, reverse=True)
                           if name == m or name.startswith(m + ".")), None)
            if target is not None and target != module and name.split(".")[0] == "adasched":
                out.append((target, node.lineno, deferred))
            elif name.split(".")[0] != "adasched":
                external.append((name, node.lineno, deferred))
    return out, external


GRAPH = {m: imports(m)[0] for m in MODULES}


def test_the_graph_was_read():
    """Not vacuous: the modules and the edges everyone knows are there."""
    assert {"adasched.cli", "adasched.stages", "adasched.dispatch", "adasched.workflow.run"} <= set(MODULES)
    edges = {(m, t) for m, ts in GRAPH.items() for t, _, _ in ts}
    assert ("adasched.cli", "adasched.stages") in edges and ("adasched.stages", "adasched.samplers") in edges
    assert ("adasched.workflow.run", "adasched.dispatch") in edges


def entry_group(module: str) -> str:
    """The command line (``cli`` and ``python -m adasched``) or the workflow package."""
    return "workflow" if module.startswith("adasched.workflow") else "cli"


def upward_edges(graph) -> list[str]:
    """Edges that go up the floors, or between two entry modules."""
    bad = []
    for module, targets in graph.items():
        for target, line, _ in targets:
            here, there = floor(module), floor(target)
            if FLOORS[there] > FLOORS[here]:
                bad.append(f"{module}:{line} imports {target}: the {there} floor is above the {here} floor")
            elif here == there == "entry" and entry_group(target) != entry_group(module):
                bad.append(f"{module}:{line} imports {target}: entry modules import each other")
    return bad


def cycles(graph) -> list[list[str]]:
    """Every cycle a depth-first search meets (the package's own ``__init__`` only defines ``__version__``)."""
    state, stack, found = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t, _, _ in graph.get(m, ()):
            if "adasched" in (t, m):
                continue
            if state.get(t) == "open":
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m)
    return found


def test_imports_go_down_the_floors():
    """Nothing outside the entry floor imports the CLI or the workflow, nothing below the stages imports them,
    the entry modules do not import each other, and the base floor imports only the base floor."""
    assert not upward_edges(GRAPH), "\n".join(upward_edges(GRAPH))


def test_no_import_cycles():
    """The package's import graph, deferred imports included, is a DAG."""
    assert not cycles(GRAPH), " ; ".join(" -> ".join(c) for c in cycles(GRAPH))


def test_the_checks_catch_a_wrong_edge_and_a_cycle():
    graph = {m: list(ts) for m, ts in GRAPH.items()}
    graph["adasched.samplers"].append(("adasched.cli", 1, False))
    graph["adasched.dispatch"].append(("adasched.stages", 1, True))
    graph["adasched.workflow.run"].append(("adasched.cli", 1, False))
    assert len(upward_edges(graph)) == 3
    graph = {m: list(ts) for m, ts in GRAPH.items()}
    graph["adasched.errors"].append(("adasched.samplers", 1, False))  # samplers -> ... -> errors -> samplers
    assert any(c[0] == c[-1] and "adasched.errors" in c for c in cycles(graph))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_in_package_imports_are_at_module_level(module):
    deferred = [f"{module}:{line} imports {target}" for target, line, late in GRAPH[module] if late]
    assert not deferred, "; ".join(deferred)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_deferred_third_party_import_says_why(module):
    """An import inside a function (an optional or heavy package) has a comment on its line or the line above."""
    lines = MODULES[module].read_text().splitlines()
    _, external = imports(module)
    silent = [f"{module}:{line} imports {name}" for name, line, late in external
              if late and "#" not in lines[line - 1] and "#" not in lines[line - 2]]
    assert not silent, "; ".join(silent)
