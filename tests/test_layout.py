"""The package's layout holds: imports run one way, and files and functions stay small."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "graphprune"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """graphprune modules that importing ``path`` runs (not under ``if
    TYPE_CHECKING:``, not inside functions).

    ``from a.b import c`` runs ``a``, ``a.b`` and, if it is a module, ``a.b.c``;
    packages the importing module lives in are already running, so they are
    not edges."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    found: set[str] = set()

    def add(target: str) -> None:
        parts = target.split(".")
        found.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p not in ancestors)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue  # an import in a function runs when it is called, not when the module loads
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("graphprune"):
                        add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("graphprune"):
                    add(target)
                    for alias in child.names:
                        add(f"{target}.{alias.name}")
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in runtime_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    # A package's __init__ re-exports its modules; a module importing a sibling
    # through its package is an edge to the package, which is what a cycle needs.
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)


def test_the_import_graph_is_what_the_test_reads():
    graph = import_graph()  # a check that the walker sees real edges, so the cycle test can fail
    assert "graphprune.ids" in graph["graphprune.analysis"]
    assert "graphprune.pipeline" in graph["graphprune.passes.select"]
    assert not graph["graphprune.errors"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_files_and_functions_are_small(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_FILE_LINES, f"{path.name} has {len(lines)} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {path.name}: {', '.join(long)}"
