"""The package's shape: imports run one way (no cycles), functions fit on a screen (a few listed exceptions)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "retrieval"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the ``retrieval`` modules it imports: module level, inside functions and under ``if TYPE_CHECKING:``
    (an import kept for annotations only still makes the two modules depend on each other)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                stem = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{stem}.{alias.name}"
                    targets.add(full if full in modules else stem)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _is_package_init_edge(a: str, b: str) -> bool:
    # A package's __init__ re-exports its modules, and they import siblings through ``.``:
    # that is Python's package mechanism, not a dependency between concepts.
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_import_graph_has_no_cycles():
    graph = import_graph()
    concepts = {m: {t for t in ts if not _is_package_init_edge(m, t)} for m, ts in graph.items()}
    assert _cycle(concepts) is None, " → ".join(_cycle(concepts))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_pure_parts_stay_pure():
    graph = import_graph()
    reach = {}

    def closure(m: str) -> set[str]:
        if m not in reach:
            reach[m] = set()
            for t in graph[m]:
                reach[m] |= {t} | closure(t)
        return reach[m]

    assert not any(m.startswith(("retrieval.data", "retrieval.engine", "retrieval.index")) for m in
                   closure("retrieval.models.net")), "models must not import data, training or FAISS"
    assert closure("retrieval.metrics") <= {"retrieval.vectors"}, "metrics takes arrays and knows nothing else"
    entry_points = [m for m in graph if m.startswith("retrieval.cli") or m.endswith(".__main__")]
    assert not any(m.startswith("retrieval.cli") for m in set().union(*(closure(m) for m in graph
                                                                         if m not in entry_points)))


def _loaded_after(statement: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after ``statement`` runs in a fresh interpreter."""
    code = f"import sys; {statement}; import json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    return set(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize("module,heavy", [
    ("retrieval", {"torch", "pandas", "torchvision", "pytorch_metric_learning", "faiss"}),
    ("retrieval.config", {"torch", "pandas", "torchvision", "pytorch_metric_learning"}),  # registries load on use
    ("retrieval.schema", {"torch", "pandas", "yaml"}),
    ("retrieval.index", {"torch", "torchvision", "pytorch_metric_learning"}),  # FAISS and pandas, not torch
    # what query.py needs with a cached ONNX model (retrieval.onnx_cache): Pillow, numpy, FAISS, ONNX Runtime
    ("retrieval.gallery", {"torch", "torchvision", "pytorch_metric_learning"}),
    ("retrieval.onnx_cache", {"torch", "torchvision", "pytorch_metric_learning", "faiss"}),
    ("retrieval.data", {"torch", "torchvision"}),  # its names load their module on first use
    ("retrieval.cli.query", {"torch", "torchvision", "pytorch_metric_learning"}),
])
def test_light_imports_stay_light(module, heavy):
    loaded = heavy & _loaded_after(f"import {module}")
    assert not loaded, f"import {module} loads {sorted(loaded)}"


def test_the_schema_imports_nothing_of_the_project():
    assert import_graph()["retrieval.schema"] == set()


def test_config_validation_still_loads_the_registries():
    loaded = _loaded_after("from retrieval.config import load_config; load_config(None)")
    assert {"torch", "pytorch_metric_learning"} <= loaded


SCREEN = 40  # lines a function may take (STYLE.md 10: most functions fit on a screen)
# Longer functions, each with the reason it stays long; a function that is split leaves this list.
LONG_FUNCTIONS = {
    "cli/common.py:cli_main": "a decorator: its body is the two wrappers it returns (errors to exit codes, and "
                              "torchrun's record around them), which read best beside each other",
    "cli/demo.py:main": "the demo as a script read top to bottom (train, index, query, pictures, table), one call "
                        "per step",
    "cli/query.py:main": "flag checks, then one call per output (table, grid, explanations, --eval); not split in "
                         "issue 24, which named four other functions",
    "coerce.py:coerce": "the one coercion function (issue 24 item 6): one rule per target type, read as one table",
    "viz/attention.py:attention_figure": "one figure's layout (rows of images, gate maps, labels), drawn in order",
}


def _long_functions() -> dict[str, int]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > SCREEN:
                    found[f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"] = length
    return found


def test_functions_fit_on_a_screen():
    long = _long_functions()
    assert not {k: v for k, v in long.items() if k not in LONG_FUNCTIONS}, "split these into named steps, or add " \
        "them to LONG_FUNCTIONS with the reason they stay long"
    assert not set(LONG_FUNCTIONS) - set(long), "these now fit: remove them from LONG_FUNCTIONS"
