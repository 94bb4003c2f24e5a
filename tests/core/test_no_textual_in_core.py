"""The core library never imports the UI toolkit (SPEC §1-§3: the app links core only)."""

from __future__ import annotations

import ast
from pathlib import Path

import relayctl.core

CORE_DIR = Path(relayctl.core.__file__).parent
FORBIDDEN = ("textual",)


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module",
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_core_package_has_python_modules_to_check():
    assert len(list(CORE_DIR.rglob("*.py"))) >= 5


def test_no_module_under_relayctl_core_imports_textual():
    offenders = []
    for path in sorted(CORE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for lineno, module in _imported_modules(tree):
            if _is_forbidden(module):
                offenders.append(f"{path.relative_to(CORE_DIR.parent)}:{lineno} imports {module}")
    assert offenders == []


def test_the_import_detector_catches_every_import_form():
    source = (
        "import textual\n"
        "import textual.app as app\n"
        "from textual.widgets import Static\n"
        "def f():\n"
        "    import textual.containers\n"
        "    __import__('textual')\n"
        "    importlib.import_module('textual.screen')\n"
        "import textualize_not_it\n"
    )
    modules = [m for _, m in _imported_modules(ast.parse(source))]
    assert [m for m in modules if _is_forbidden(m)] == [
        "textual", "textual.app", "textual.widgets", "textual.containers", "textual",
        "textual.screen",
    ]
