"""The shape of the code: no import cycles, no module too big to read in one sitting, and
a pure core that imports nothing from the shell around it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent.parent / "src" / "modelyard"
MAX_LINES = 500
# The pure core: no network I/O, no event loop; it imports only itself and libraries. The
# engines are in it: each says what its server needs, and asks the gateway for its HTTP
# calls (``engines.base.Http``); reading the file system (is the program there?) is all
# they do of their own.
CORE = {
    "modelyard.config",
    "modelyard.config.checks",
    "modelyard.config.loader",
    "modelyard.model_spec",
    "modelyard.config.schema",
    "modelyard.config.node_spec",
    "modelyard.balance",
    "modelyard.errors",
    "modelyard.routing",
    "modelyard.placement",
    "modelyard.lifecycle",
    "modelyard.estimate",
    "modelyard.units",
    "modelyard.openai_body",
}
ENGINES = {"modelyard.engines", "modelyard.engines.base", "modelyard.engines.catalog"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Modules of ours that ``path`` imports anywhere (in functions too), except for type
    checking only."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # A module's own packages are initialised before it: importing them is no cycle.
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    # Importing a module runs its packages' __init__ first: ``a.b.c`` imports ``a.b``.
    for target in list(out):
        while "." in target:
            target = target.rpartition(".")[0]
            if target in modules and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_no_import_cycle() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def test_no_module_over_500_lines() -> None:
    sizes = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in _modules().items()}
    assert not {n: s for n, s in sizes.items() if s > MAX_LINES}


def test_the_core_imports_nothing_from_the_shell() -> None:
    graph = _graph()
    core = CORE | {n for n in graph if n.startswith("modelyard.engines.")} | ENGINES
    leaks = {n: sorted(graph[n] - core) for n in core if graph[n] - core}
    assert not leaks


def test_every_engine_module_registers_an_engine() -> None:
    from modelyard.engines.catalog import ENGINES as FOUND

    modules = {n.rpartition(".")[2] for n in _modules() if n.startswith("modelyard.engines.")}
    assert modules - {"base", "catalog"} == {
        e.__module__.rpartition(".")[2] for e in FOUND.values()
    }
    for kind, engine in FOUND.items():
        assert engine.kind == kind and engine.config.model_fields["engine"].annotation is not str
