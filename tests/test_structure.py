"""The package's structure: its layers, no import cycle, SQL only in the store, and the learning process does not
load the web stack."""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ranker"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """For each module of ranker, the ranker modules it imports (at any depth of its code)."""
    modules = {_module(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{alias.name}" for alias in node.names]
                if not all(target in modules for target in targets):  # a name of the module itself, not a submodule
                    targets.append(base)
            else:
                continue
            found.update(target for target in targets if target in modules and target != name)
        graph[name] = found
    return graph


def test_no_import_cycle_inside_the_package():
    graph = imports()
    assert "ranker.evaluation.jobs" in graph["ranker.learning.trainer"]  # the walk sees relative imports
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


# The layers, lowest first: a module imports only from its own layer and those below it. Each folder of the
# package is in one layer, ranker/ itself (app, cli, ...) in the highest; a feature package's settings
# (definitions), HTTP blueprint and OpenAPI part (api, openapi) and commands sit in the layer of their kind,
# whatever their folder. README's "Architecture" gives the same order.
LAYERS = {
    "core": ["ranker.core"],  # and ranker/__init__.py, which holds only the version
    "store": ["ranker.store"],
    "signals": ["ranker.signals"],
    "serving": ["ranker.serving"],
    "logdata": ["ranker.logdata"],
    "evaluation": ["ranker.evaluation"],
    "features": ["ranker.triage", "ranker.outbox"],
    "learning": ["ranker.learning"],
    "server": ["ranker.server"],
    "web": ["ranker.web"],
    "entry": [],  # the modules of ranker/ itself
}
ROLES = {
    "ranker.*.definitions": "core",
    "ranker.*.api": "server",
    "ranker.*.openapi": "server",
    "ranker.*.commands": "entry",
    "ranker.triage.demo": "entry",
}
ORDER = list(LAYERS)


def layer(module: str) -> str:
    """The module's layer: its role's, else its folder's."""
    for pattern, name in ROLES.items():
        if fnmatch.fnmatchcase(module, pattern):
            return name
    if module == "ranker":
        return "core"
    for name, packages in LAYERS.items():
        if any(module == package or module.startswith(package + ".") for package in packages):
            return name
    assert module.count(".") == 1, f"{module}: its folder is in no layer; add it to LAYERS"
    return "entry"


def test_no_module_imports_from_a_layer_above_its_own():
    graph = imports()
    assert [layer(m) for m in ("ranker.triage.definitions", "ranker.serving.service", "ranker.signals.api")] == [
        "core",
        "serving",
        "server",
    ]
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if ORDER.index(layer(target)) > ORDER.index(layer(module))
    ]
    assert upward == []


def test_the_learning_process_does_not_load_the_web_stack():
    """The trainer runs as `python -m ranker train`: the CLI, the supervisor, the trainer and the job runner."""
    probe = "import sys, ranker.cli, ranker.learning.supervisor; print(sorted(m for m in sys.modules if m == 'flask'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


SQL = re.compile(
    r"^[rbuf]*[\"']{1,3}\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|BEGIN|COMMIT|ROLLBACK|SAVEPOINT|CREATE|PRAGMA)\b"
)


def test_sql_is_spoken_only_by_the_store():
    """Every SQL statement of the package is under ranker/store, the one place a second engine replaces."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "store":
            continue
        with open(path, "rb") as file:
            for token in tokenize.tokenize(file.readline):
                if token.type == tokenize.STRING and SQL.match(token.string):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{token.start[0]}")
    assert found == []
