"""One convention across course_lib's modules (written in course_lib/__init__.py), checked on
every public function, so that a new module cannot drift from it unnoticed."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import course_lib

PACKAGE = Path(course_lib.__file__).parent
CORE = ("runtime", "data", "train")
TOPICS = tuple(sorted(p.stem for p in PACKAGE.glob("*.py")
                      if not p.stem.startswith("_") and p.stem not in CORE))
MODULES = CORE + TOPICS

# Names of the model or its parameters, and of the data, in the order the convention wants.
MODEL_NAMES = {"params", "model", "fit", "net", "mean", "cov", "mean0", "cov0", "mean1", "cov1"}
DATA_NAMES = {"x", "obs", "y", "windows", "tokens", "labels", "inputs", "targets", "ids"}
# Spellings the convention replaced: one name for each count and for a temperature.
RETIRED = {"T": "temperature or length", "num_steps": "length (or steps)", "num_iters": "max_iter",
           "n_iter": "max_iter", "n_samples": "n", "num_samples": "n", "n_steps": "steps",
           "num_restarts": "n_restarts", "k_components": "n_components"}


def public_functions():
    for name in MODULES:
        module = importlib.import_module(f"course_lib.{name}")
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if inspect.isfunction(obj):
                yield f"{name}.{attr}", obj


FUNCTIONS = dict(public_functions())


def test_topics_are_the_expected_modules():
    assert {"prob", "gmm", "hmm", "ar", "ngram", "nets"} <= set(TOPICS)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_lists_existing_public_names(name):
    module = importlib.import_module(f"course_lib.{name}")
    assert hasattr(module, "__all__"), f"course_lib.{name} has no __all__"
    missing = [a for a in module.__all__ if not hasattr(module, a)]
    assert not missing, f"course_lib.{name}.__all__ names what does not exist: {missing}"
    private = [a for a in module.__all__ if a.startswith("_")]
    assert not private, f"course_lib.{name}.__all__ exports private names: {private}"


@pytest.mark.parametrize("name", TOPICS)
def test_topic_modules_never_import_each_other(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "course_lib":
                imported |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
            elif node.level and node.module:
                imported.add(parts[0])
        elif isinstance(node, ast.ImportFrom) and node.level:
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name.split(".")[1] for a in node.names if a.name.startswith("course_lib.")}
    others = imported & (set(TOPICS) - {name})
    assert not others, f"course_lib.{name} imports the topic module(s) {sorted(others)}"


@pytest.mark.parametrize("qualname", sorted(FUNCTIONS))
def test_argument_order_and_names(qualname):
    params = list(inspect.signature(FUNCTIONS[qualname]).parameters.values())
    names = [p.name for p in params]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if "key" in positional:      # a keyword-only key (train.fit's options) may come anywhere
        assert positional[0] == "key", f"{qualname}{names}: a PRNG key comes first"
    model = [i for i, n in enumerate(names) if n in MODEL_NAMES]
    data = [i for i, n in enumerate(names) if n in DATA_NAMES]
    if model and data:
        assert max(model) < min(data), f"{qualname}{names}: the model's parameters come before the data"
    retired = {n: RETIRED[n] for n in names if n in RETIRED}
    assert not retired, f"{qualname}: rename {retired} (course_lib's conventions)"
    positional_options = [p.name for p in params
                          if p.default is not p.empty and p.kind == p.POSITIONAL_OR_KEYWORD
                          and p.name in {"tol", "max_iter", "reg_covar", "temperature", "n_restarts"}]
    assert not positional_options, f"{qualname}: options {positional_options} must be keyword-only"


@pytest.mark.parametrize("qualname", sorted(FUNCTIONS))
def test_public_functions_are_documented(qualname):
    doc = inspect.getdoc(FUNCTIONS[qualname]) or ""
    assert len(doc) >= 20, f"{qualname} has no docstring worth the name"


def test_the_convention_check_fails_on_a_drifting_function():
    def bad(x, params, *, T=1.0):
        """A function that breaks two rules: data before parameters, T for a temperature."""
    FUNCTIONS["fake.bad"] = bad
    try:
        with pytest.raises(AssertionError, match="come before the data"):
            test_argument_order_and_names("fake.bad")
    finally:
        del FUNCTIONS["fake.bad"]
