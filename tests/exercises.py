"""Load a notebook's exercise checkers so that tests can feed them wrong answers.

Convention (notebooks/README.md, "Exercises"): the cell after each ``# Solution`` cell
defines one or more functions named ``check_*`` and then calls them on the learner's
answer. A checker is self-contained: its body reads only its arguments, Python's builtins
and modules the notebook imports (``np``, ``jnp``, ``jax``, ``course_lib`` modules, ...), never
a notebook variable. That makes it testable without executing the notebook:
:func:`checkers` executes the notebook's import statements and the ``check_*`` definitions
only (milliseconds), and ``tests/test_exercises_NN.py`` calls each checker with the right
answer (it must pass) and with the obvious wrong answers (each must raise
``AssertionError``).
"""
from __future__ import annotations

import ast
import builtins
import symtable
import types
from pathlib import Path

import nbformat

from conftest import NOTEBOOKS

PREFIX = "check_"


def notebook_path(stem: str) -> Path:
    """``"01"`` or ``"01_probability"`` -> the notebook's path."""
    matches = sorted(NOTEBOOKS.glob(f"{stem}*.ipynb"))
    assert len(matches) == 1, f"{stem!r} names {len(matches)} notebooks"
    return matches[0]


def _code_cells(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def _imports_and_checkers(path: Path) -> tuple[list[ast.stmt], list[ast.FunctionDef]]:
    imports, functions = [], []
    for source in _code_cells(path):
        try:
            tree = ast.parse(source)
        except SyntaxError:         # IPython magics; the course's cells have none
            continue
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports.append(node)
            elif isinstance(node, ast.FunctionDef) and node.name.startswith(PREFIX):
                functions.append(node)
    return imports, functions


def _free_globals(source: str, name: str) -> set[str]:
    """Names that function ``name`` (and any function nested in it) reads as globals."""
    table = next(t for t in symtable.symtable(source, "<check>", "exec").get_children()
                 if t.get_name() == name)
    found, stack = set(), [table]
    while stack:
        t = stack.pop()
        if t.get_type() == "function":
            found.update(t.get_globals())
        stack.extend(t.get_children())
    return found


def checker_names(stem: str) -> list[str]:
    """The ``check_*`` functions a notebook defines, in order."""
    return [f.name for f in _imports_and_checkers(notebook_path(stem))[1]]


def checkers(stem: str) -> types.SimpleNamespace:
    """The notebook's ``check_*`` functions, defined on the notebook's imports only.

    Raises ``AssertionError`` when a checker reads a notebook variable (anything that is
    not an argument, a builtin or an imported name): it would then test the notebook's
    state rather than the answer it is given.
    """
    imports, functions = _imports_and_checkers(notebook_path(stem))
    namespace: dict = {}
    exec(compile(ast.Module(body=imports, type_ignores=[]), "<imports>", "exec"), namespace)
    for function in functions:
        source = ast.unparse(function)
        unknown = {g for g in _free_globals(source, function.name)
                   if g not in namespace and not hasattr(builtins, g)}
        assert not unknown, (f"{function.name} reads notebook variables {sorted(unknown)}: "
                             "pass them as arguments")
        exec(compile(source, f"<{function.name}>", "exec"), namespace)
    return types.SimpleNamespace(**{f.name: namespace[f.name] for f in functions})
