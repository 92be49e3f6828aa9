"""The design's import rules, read from the source with ``ast``:

* ``baselines/`` imports from the project only the method-facing API of ``harness.models``
  (the method protocol, plan and selector types, token types, calibration helpers), never the
  instrument (``harness.*`` outside ``harness.models``);
* ``harness/`` imports no concrete method and names no registered method: no string that is a
  method name or a stack, no function named after one (the registry and the suites' YAML are the
  only places that name methods).  The papers' FLOPs conventions (``fastv``, ``shortv``; the
  visual sides ``yopo`` and ``vica``) share their names with methods and are allowed as convention
  names, where they are defined.
"""

from __future__ import annotations

import ast
from pathlib import Path

from harness.baselines.registry import METHODS
from harness.flops.model import CONVENTIONS, VISUAL_CONVENTIONS

ROOT = Path(__file__).resolve().parent.parent
METHOD_API = {
    "harness.models.method",
    "harness.models.plan",
    "harness.models.selection",
    "harness.models.batch",
    "harness.models.calibration",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("harness", "harness.models", "harness.baselines"):  # a module by name
                out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def test_baselines_import_only_the_method_api():
    bad = []
    for py in sorted((ROOT / "baselines").glob("*.py")):
        for line, mod in _imports(py):
            if mod.startswith("harness") and mod not in METHOD_API and py.name != "registry.py":
                bad.append(f"baselines/{py.name}:{line} imports {mod}")
    assert not bad, bad


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            ids.add(id(first.value))
    return ids


def _defines_them(path: Path) -> bool:
    return path.name in ("model.py", "paper.py") and path.parent.name == "flops"


def method_names_in(path: Path) -> list[str]:
    """Where a file names a registered method: imports of a method module, strings that are a
    method name or a stack (docstrings aside), functions and classes named after one."""
    names = set(METHODS)
    concrete = {spec.partition(":")[0] for spec in METHODS.values()}
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    found = [f"{line}: imports {mod}" for line, mod in _imports(path) if mod in concrete]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            parts = node.value.split("+")
            if node.value in CONVENTIONS or (node.value in VISUAL_CONVENTIONS and _defines_them(path)):
                continue
            if all(p in names for p in parts):
                found.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.lower() in names:
            found.append(f"{node.lineno}: def {node.name}")
    return found


def test_harness_names_no_method():
    bad = {}
    for py in sorted((ROOT / "harness").rglob("*.py")):
        rel = py.relative_to(ROOT / "harness").as_posix()
        found = method_names_in(py)
        if found:
            bad[rel] = found
    assert not bad, bad


def test_the_rule_catches_a_method_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        '"""Docstrings may say fastv."""\n'
        "from harness.baselines.fastv import FastV\n"
        "def pick(m):\n    return m == 'vica' or m in ('vica+pdrop',)\n"
    )
    assert [f.split(":", 1)[1].strip() for f in method_names_in(probe)] == [
        "imports harness.baselines.fastv",
        "'vica'",
        "'vica+pdrop'",
    ]
