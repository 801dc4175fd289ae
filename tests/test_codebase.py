"""Checks on the code itself: a merge can silently drop a method when two branches add one of the same name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_name_is_defined_twice_in_one_class_or_module():
    twice = []
    for folder in ("hftl", "recipes"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
                seen = set()
                for node in scope.body:
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        if node.name in seen and not node.decorator_list:  # overloads and properties decorate
                            twice.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
                        seen.add(node.name)
    assert not twice, twice
