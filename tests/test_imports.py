"""DESIGN.md's import rules, enforced.

1. runtime never imports typer, rich, textual or aiohttp.
2. llama_cpp, mlx, mlx_lm, textual and aiohttp are imported lazily: `impetus --help` and
   `impetus list` load none of them.
3. errors.py and runtime/types.py are leaves.
4. the TUI talks to the server through client.py, never to the manager.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "impetus_cli"
HEAVY = ("llama_cpp", "mlx", "mlx_lm", "textual", "aiohttp")
PRESENTATION = ("typer", "rich", "textual", "aiohttp", "click")


def imported_modules(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules a file imports; with top_level_only, only those executed at import time."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _root(module: str) -> str:
    return module.split(".")[0]


def test_runtime_never_imports_presentation_or_http() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            m for m in imported_modules(path, top_level_only=False) if _root(m) in PRESENTATION
        )
        for path in (PACKAGE / "runtime").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_heavy_modules_are_never_imported_at_module_level_outside_their_homes() -> None:
    # The server package may import aiohttp at the top and the tui package textual: both are
    # only imported by the commands that need them, inside the command function.
    homes = {"aiohttp": "server", "textual": "tui"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        for module in imported_modules(path, top_level_only=True):
            root = _root(module)
            if root in HEAVY and rel.parts[0] != homes.get(root):
                offenders.append(f"{rel}: {module}")
    assert offenders == []


@pytest.mark.parametrize("leaf", ["errors.py", "runtime/types.py"])
def test_leaf_modules_import_nothing_of_ours(leaf: str) -> None:
    ours = [
        m
        for m in imported_modules(PACKAGE / leaf, top_level_only=False)
        if _root(m) == "impetus_cli"
    ]
    assert ours == []


def test_tui_reaches_the_server_only_through_the_client() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in (PACKAGE / "tui").rglob("*.py")
        for module in imported_modules(path, top_level_only=False)
        if module.startswith(
            ("impetus_cli.runtime.manager", "impetus_cli.runtime.engines", "impetus_cli.server")
        )
    ]
    assert offenders == []


PROBE = """
import json, sys
from impetus_cli.cli import app
for argv in (["--help"], ["list"]):
    try:
        app(argv, prog_name="impetus")
    except SystemExit as exc:
        assert exc.code in (0, None), (argv, exc.code)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print("\\n" + json.dumps(heavy))
"""


def test_help_and_list_import_no_heavy_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.replace("{heavy!r}", repr(set(HEAVY)))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _our_imports(path: Path, known: set[str]) -> set[str]:
    """Our modules a file imports, lazily or not; imports under TYPE_CHECKING do not run."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    """Two modules that import each other (directly or around a loop) are one idea split
    badly (STYLE.md); farm-studio-style circles stay at zero."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _our_imports(path, set(files)) - {name} for name, path in files.items()}
    circles = set()
    for start in graph:
        stack, seen = [(start, [start])], {start}
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.add(" -> ".join(sorted(trail)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert sorted(circles) == []


def test_no_module_is_much_over_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420
    }
    assert long == {}
