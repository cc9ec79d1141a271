"""The package import graph of streetvision has no cycles, between modules or between subpackages."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"


def module_imports() -> dict[str, set[str]]:
    """module name -> the streetvision modules it imports (any import statement, at any depth)."""
    names = {}
    for file in (ROOT / "streetvision").rglob("*.py"):
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        package = parts[:-1]  # what relative imports start from
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = (file, package)
    graph = {}
    for name, (file, package) in names.items():
        targets = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                found = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            targets |= {t for t in found if t in names and t != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_of(module: str) -> str:
    """streetvision.training.loop -> streetvision.training; top-level modules are their own unit."""
    return ".".join(module.split(".")[:2])


def test_the_parser_sees_a_cycle_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back():
    graph = module_imports()
    assert "streetvision.io" in graph and graph["streetvision.phases.ingest"]  # the parse found real edges
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_subpackage_imports_itself_back():
    packages: dict[str, set[str]] = {}
    for module, targets in module_imports().items():
        # A package's __init__ naming its own submodules is not a cycle between packages.
        packages.setdefault(package_of(module), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(module) and t != "streetvision"
        )
    cycle = find_cycle(packages)
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def test_the_io_module_is_at_the_bottom():
    assert module_imports()["streetvision.io"] == set()
