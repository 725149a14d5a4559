"""The house rules, checked on the source: imports run one way through the layers, no module imports itself back
through others, imports inside functions are only the optional heavy dependencies listed here, and no function
is over 60 lines or file over 400.

The layers, bottom to top (a module may import its own layer and those below, never above):
``ensemble.base`` < ``ensemble.metrics`` < ``ensemble.data`` < ``ensemble.models`` < ``ensemble.schema`` <
``ensemble.training`` < ``ensemble.track`` < ``ensemble.cluster`` < ``ensemble.engine`` < the ensemble stage
(``ensemble`` itself) < ``specialists`` < ``distill``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ensemble", "specialists", "distill")
LAYERS = ("ensemble.base", "ensemble.metrics", "ensemble.data", "ensemble.models", "ensemble.schema",
          "ensemble.training", "ensemble.track", "ensemble.cluster", "ensemble.engine", "ensemble",
          "specialists", "distill")
# Imported where they are used, so that a run which never needs them never pays for them (or needs them installed).
LAZY_THIRD_PARTY = {
    "torchvision": "only the torchvision datasets and the ImageFolder reader",
    "sklearn": "only the digits dataset (the K-means of the specialists is imported where it runs)",
    "matplotlib": "only plots",
    "onnx": "an optional export format", "onnxruntime": "an optional export format",
    "onnxscript": "an optional export format",
    "pynvml": "only GPU system metrics",
    "mlflow": "only where a run is tracked or a model served",
    "ray": "only where actors start; a finished pipeline's rerun starts no Ray",
    "moto": "only the S3 test server",
    "pyarrow": "only an output_dir in object storage (ensemble/base/storage.py)",
    "boto3": "only the S3 lease's conditional writes", "botocore": "only the S3 lease's conditional writes",
    "PIL": "only image files read from disk",
    "sqlalchemy": "only to name a SQL store's error",
    "rich": "only the live progress table",
}
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import statement."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) not in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = absolute(module, path, node)
            names = [f"{target}.{alias.name}" for alias in node.names]
            found += [(name if name in MODULES else target, node.lineno, id(node) not in top) for name in names]
    return found


MODULES = modules()


def layer(module: str) -> int:
    """The index of the most specific layer holding ``module``."""
    matches = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return LAYERS.index(max(matches, key=len))


def own(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def module_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = set()
        for name, _, _ in imports_of(module, path):
            while own(name) and name not in MODULES:
                name = name.rsplit(".", 1)[0]
            if own(name) and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def test_no_import_from_a_higher_layer():
    upward = [f"{module} imports {target}" for module, targets in module_graph().items() for target in targets
              if layer(target) > layer(module)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph, state, cycles = module_graph(), {}, []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [module, target]) if target in trail
                              else f"{module} -> {target}")
            elif target not in state:
                visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)


def test_imports_inside_functions_are_only_the_listed_optional_dependencies():
    inner = [f"{path.relative_to(ROOT)}:{line} imports {name}" for module, path in MODULES.items()
             for name, line, nested in imports_of(module, path)
             if nested and name.split(".")[0] not in LAZY_THIRD_PARTY]
    assert not inner, "\n".join(inner)


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_functions_and_files_are_short():
    paths = sorted({*MODULES.values(), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")})
    too_long = [line for path in MODULES.values() for line in long_functions(path)]
    too_long += [f"{path.relative_to(ROOT)} has {n} lines" for path in paths
                 if path in MODULES.values() and (n := len(path.read_text().splitlines())) > MAX_FILE_LINES]
    assert not too_long, "\n".join(too_long)


@pytest.mark.parametrize("bad, expected", [
    ({"ensemble.base.errors": {"ensemble.training.trainer"}}, "higher"),
    ({"ensemble.data.rows": {"ensemble.data.split"}, "ensemble.data.split": {"ensemble.data.rows"}}, "cycle"),
])
def test_the_rules_catch_what_they_are_for(bad, expected, monkeypatch):
    """The checks above run on a made-up graph with one violation each, so a check that cannot fail is caught."""
    monkeypatch.setattr(sys.modules[__name__], "module_graph", lambda: bad)
    with pytest.raises(AssertionError):
        (test_no_import_from_a_higher_layer if expected == "higher" else test_no_import_cycle)()
