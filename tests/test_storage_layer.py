"""SQL lives in ``pipelines.storage`` only: no other module of ``pipelines`` or ``flows`` imports a
database library or executes a statement, so DuckDB/PostgreSQL differences stay in one place."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STORAGE = REPO_ROOT / "pipelines" / "storage"
DATABASE_LIBRARIES = ("sqlalchemy", "duckdb", "psycopg", "psycopg2")


def _modules_outside_storage() -> list[Path]:
    files = [*(REPO_ROOT / "pipelines").rglob("*.py"), *(REPO_ROOT / "flows").rglob("*.py")]
    return sorted(path for path in files if STORAGE not in path.parents)


def _violations(path: Path, root: Path = REPO_ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in DATABASE_LIBRARIES:
                found.append((node.lineno, f"imports {name}"))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "execute"
        ):
            found.append((node.lineno, "calls .execute("))
    return [f"{path.relative_to(root)}:{line}: {what}" for line, what in sorted(found)]


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text(
        "import duckdb\nfrom sqlalchemy import select\n\n"
        "def f(c):\n    return c.execute(select(1))\n",
        encoding="utf-8",
    )
    assert _violations(module, tmp_path) == [
        "bad.py:1: imports duckdb",
        "bad.py:2: imports sqlalchemy",
        "bad.py:5: calls .execute(",
    ]


def test_no_sql_outside_storage() -> None:
    modules = _modules_outside_storage()
    assert len(modules) > 50, "the scan found too few modules: wrong root?"
    violations = [line for path in modules for line in _violations(path)]
    assert not violations, "SQL outside pipelines/storage:\n" + "\n".join(violations)
