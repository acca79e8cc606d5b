"""The package's structure: no import cycle, and the learning process does not load the web stack."""

from __future__ import annotations

import ast
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
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
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
