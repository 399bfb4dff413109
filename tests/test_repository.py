"""Project-wide contracts: the README's commands, CI, and the dependency direction of DESIGN.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert block, "README must start with a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_second() -> None:
    text = (REPO / "README.md").read_text()
    first_block = text.index("```bash")
    assert text[:first_block].count("\n") <= 2  # title, blank line, then the commands
    commands = _readme_commands()
    assert len(commands) == 2
    assert "workbench demo" in commands[0]
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), ".ci/run must run the README's test command verbatim"
    assert "pytest" in commands[1]


#: The faces: thin layers over the wings. No wing may import them (the arrows point into the wings).
FACES = ("workbench.__main__", "workbench.cli", "workbench.app", "workbench.app_pages", "workbench.app_data")

#: Where the no-SQL rule holds: everything that ships or measures, except storage/ itself. Tests may read
#: the catalog directly to check independently what a function stored.
NO_SQL_ROOTS = ("harmonize", "workbench", "benchmarks")

_SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+(OR\s+REPLACE\s+)?INTO|UPDATE\s+\w+(\s+\w+)?\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(OR\s+REPLACE\s+)?(TABLE|VIEW|INDEX|MACRO)|ALTER\s+TABLE|DROP\s+(TABLE|VIEW))\b",
    re.S,
)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, including lazy imports inside functions; for
    ``from a.b import c`` both ``a.b`` and ``a.b.c`` (c may be a submodule)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _within(name: str, packages: tuple[str, ...]) -> bool:
    """Whether module ``name`` is one of ``packages`` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in packages)


def _broken_rule(top: str, mod: str, imp: str) -> str | None:
    """The rule that module ``mod`` (in top-level package ``top``) breaks by importing ``imp``, if any."""
    head = imp.split(".")[0]
    if top == "harmonize" and head in ("storage", "workbench"):
        return "harmonize imports neither storage nor workbench"
    if top == "storage" and head == "workbench":
        return "storage never imports workbench"
    if _within(mod, ("workbench.model",)) and head == "workbench" and not _within(imp, ("workbench.model",)):
        return "workbench/model/ imports no other workbench module"
    if top == "workbench" and not _within(mod, FACES) and _within(imp, FACES):
        return "no wing imports cli, app, app_pages or app_data"
    return None


def import_violations(root: Path) -> list[str]:
    """The broken dependency rules of DESIGN.md under ``root`` (a checkout), one line per file and rule."""
    bad: dict[tuple[str, str], str] = {}
    for top in ("harmonize", "storage", "workbench"):
        for path in sorted((root / top).rglob("*.py")):
            mod = _module_name(path, root)
            for imp in sorted(_imported_modules(path)):
                rule = _broken_rule(top, mod, imp)
                if rule:
                    bad.setdefault((str(path.relative_to(root)), rule), imp)
    return [f"{file} imports {imp}: {rule}" for (file, rule), imp in bad.items()]


def sql_violations(root: Path) -> list[str]:
    """Files outside storage/ that import duckdb or hold SQL text, one line each."""
    bad = []
    for top in NO_SQL_ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            tree = ast.parse(path.read_text())
            if any(m.split(".")[0] == "duckdb" for m in _imported_modules(path)):
                bad.append(f"{rel} imports duckdb")
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.search(node.value):
                    bad.append(f"{rel}:{node.lineno} holds SQL: {node.value.strip()[:60]!r}")
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        text = nb.read_text()
        if "import duckdb" in text or _SQL.search(text.replace("\\n", " ")):
            bad.append(f"{nb.relative_to(root)} imports duckdb or holds SQL")
    return bad


def test_dependencies_point_one_way() -> None:
    bad = import_violations(REPO)
    assert bad == [], "\n".join(bad)


def test_sql_lives_only_in_storage() -> None:
    bad = sql_violations(REPO)
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize(
    ("path", "source", "rule"),
    [
        ("harmonize/bad.py", "import storage.catalog\n", "harmonize imports neither"),
        ("storage/bad.py", "from workbench.review import record_decision\n", "storage never imports"),
        ("workbench/model/bad.py", "from workbench.learning import split\n", "model/ imports no other"),
        ("workbench/review/bad.py", "def f():\n    from workbench import app_data\n", "no wing imports"),
        ("workbench/export/bad.py", "import workbench.cli\n", "no wing imports"),
        ("workbench/modeling_bad.py", "import workbench.app\n", "no wing imports"),
    ],
)
def test_the_import_rules_catch_a_break(tmp_path: Path, path: str, source: str, rule: str) -> None:
    target = tmp_path / path
    target.parent.mkdir(parents=True)
    target.write_text(source)
    (tmp_path / "workbench" / "app_data").mkdir(parents=True, exist_ok=True)
    (tmp_path / "workbench" / "app_data" / "fine.py").write_text("from workbench.review import queue\n")
    bad = import_violations(tmp_path)
    assert len(bad) == 1 and rule in bad[0] and path in bad[0]


@pytest.mark.parametrize(
    "source",
    [
        "import duckdb\n",
        'Q = "SELECT id FROM scan WHERE x = ?"\n',
        'def f(ws):\n    return ws.catalog.query("""\n        SELECT *\n        FROM review""")\n',
        'Q = "INSERT OR REPLACE INTO schema_meta VALUES (1, 2)"\n',
        'Q = "UPDATE uncertainty u SET score = 1"\n',
    ],
)
def test_the_sql_rule_catches_a_break(tmp_path: Path, source: str) -> None:
    (tmp_path / "workbench").mkdir()
    (tmp_path / "workbench" / "bad.py").write_text(source)
    (tmp_path / "workbench" / "fine.py").write_text('"""Select the items; insert them into the queue."""\n')
    bad = sql_violations(tmp_path)
    assert len(bad) == 1 and "workbench/bad.py" in bad[0]
