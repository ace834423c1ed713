"""The shape of sim/: no import cycle between its modules, no cifar, argparse only in the
command line, and neither `import sim` nor `import sim.cli` loads torch."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parents[2] / "sim"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SIM.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SIM.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the sim modules it imports (every import statement, also those inside
    functions; `from PKG import NAME` counts as PKG.NAME when that is a module, else PKG)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in mods and t != name)
        graph[name] = edges
    return graph


def find_cycle(graph):
    """A list of modules forming a cycle, or None (depth-first search)."""
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_sim():
    graph = import_graph()
    assert len(graph) > 40 and graph["sim.experiments.verify"]  # the walk sees the modules and their imports
    assert "sim.certify.exact" in graph["sim.certify.diagnosis"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_sim_never_imports_cifar_and_only_the_cli_parses_arguments():
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for n in names:
                assert n.split(".")[0] != "cifar", f"{name} imports {n}"
                if n == "argparse":
                    assert name == "sim.cli", f"{name} imports argparse: options belong in sim/cli.py"


@pytest.mark.parametrize("stmt", ["import sim", "import sim.cli", "import sim.cli; sim.cli.main(['verify', '--help'])"])
def test_importing_sim_does_not_load_torch(stmt):
    code = f"import sys\ntry:\n    {stmt}\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch loaded'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=SIM.parent)
    assert res.returncode == 0, res.stderr


def test_no_module_is_too_long():
    """About 600 lines at most, unless the module is one algorithm (the exact verifier)."""
    allowed = {"sim.certify.exact": 650}
    for name, path in _modules().items():
        n = len(path.read_text().splitlines())
        assert n <= allowed.get(name, 620), f"{name}: {n} lines"
