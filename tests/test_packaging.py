"""Packaging drift: pyproject.toml, environment.yml and requirements.lock must agree.

- environment.yml (conda/mamba) lists, from conda-forge, every package of pyproject's
  runtime dependencies and its `notebooks` and `test` extras, under the same name and with
  the same version range; then pip installs course_lib itself (`-e .`), which finds every
  dependency satisfied. A package added to, removed from or re-ranged in one file and not
  the other fails here.
- requirements.lock (what `make setup` installs) pins a version inside every range.
"""
from __future__ import annotations

import re
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT

# Listed in environment.yml beyond pyproject's packages, each for a stated reason.
CONDA_ONLY = {"python", "pip", "nodejs"}  # the interpreter, the installer, npm for MathJax
CONDA_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\s+(?P<spec>[^\s]+))?$")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared_requirements() -> dict[str, SpecifierSet]:
    """pyproject's dependencies plus the notebooks and test extras, self-references expanded."""
    project = pyproject()["project"]
    own = canonicalize_name(project["name"])
    extras = project["optional-dependencies"]
    found: dict[str, SpecifierSet] = {}

    def add(lines: list[str]):
        for line in lines:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            if name == own:
                for extra in sorted(req.extras):
                    add(extras[extra])
                continue
            assert name not in found or found[name] == req.specifier, f"{name} ranged twice"
            found[name] = req.specifier

    add(project["dependencies"])
    add(extras["notebooks"])
    add(extras["test"])
    return found


def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def conda_requirements() -> tuple[dict[str, SpecifierSet], list]:
    """environment.yml's conda packages as {name: range}, and its pip section."""
    conda, pip = {}, None
    for entry in environment()["dependencies"]:
        if isinstance(entry, dict):
            assert set(entry) == {"pip"}, f"unexpected section in environment.yml: {entry}"
            pip = entry["pip"]
            continue
        match = CONDA_SPEC.match(entry.strip())
        assert match, f"environment.yml: {entry!r} is not `name` or `name >=a,<b`"
        name = canonicalize_name(match["name"])
        assert name not in conda, f"environment.yml lists {name} twice"
        conda[name] = SpecifierSet(match["spec"] or "")
    return conda, pip


def test_environment_yml_lists_pyproject_packages_with_the_same_ranges():
    declared = declared_requirements()
    conda, _ = conda_requirements()
    listed = {name: spec for name, spec in conda.items() if name not in CONDA_ONLY}
    missing = sorted(set(declared) - set(listed))
    extra = sorted(set(listed) - set(declared))
    assert not missing, f"in pyproject.toml, not in environment.yml: {missing}"
    assert not extra, f"in environment.yml, not in pyproject.toml: {extra}"
    differ = {name: (str(declared[name]), str(listed[name]))
              for name in declared if declared[name] != listed[name]}
    assert not differ, f"ranges differ (pyproject, environment.yml): {differ}"


def test_environment_yml_python_pip_and_channels():
    env = environment()
    conda, pip = conda_requirements()
    assert env["channels"] == ["conda-forge", "nodefaults"]
    assert set(conda) >= CONDA_ONLY
    assert conda["python"] == SpecifierSet(pyproject()["project"]["requires-python"])
    assert pip == ["-e ."], "pip installs course_lib only; its dependencies come from conda-forge"


def test_every_declared_range_is_admissible():
    """Each range admits some version and is bounded above (no surprise major upgrades)."""
    for name, spec in declared_requirements().items():
        operators = {s.operator for s in spec}
        assert ">=" in operators and "<" in operators, f"{name}: {spec} needs a lower and an upper bound"


def test_requirements_lock_pins_a_version_inside_every_range():
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = Version(version)
    outside = {name: (str(pins.get(name)), str(spec)) for name, spec in declared_requirements().items()
               if name not in pins or pins[name] not in spec}
    assert not outside, f"requirements.lock (pin, range) disagrees with pyproject.toml: {outside}"


def _first_package_line(env: dict) -> int:
    return next(i for i, entry in enumerate(env["dependencies"])
                if isinstance(entry, str) and entry.split()[0] not in CONDA_ONLY)


@pytest.mark.parametrize("change, expected", [
    (lambda name, spec: f"{name} {spec},!=99.0", "ranges differ"),
    (lambda name, spec: f"{name}x {spec}", "not in environment.yml"),
    (lambda name, spec: None, "not in environment.yml"),
])
def test_drift_is_detected(monkeypatch, change, expected):
    """The comparison itself fails on a changed range, a renamed or a dropped package."""
    env = environment()
    i = _first_package_line(env)
    name, spec = env["dependencies"][i].split()
    replacement = change(name, spec)
    if replacement is None:
        del env["dependencies"][i]
    else:
        env["dependencies"][i] = replacement
    monkeypatch.setattr(sys.modules[__name__], "environment", lambda: env)
    with pytest.raises(AssertionError, match=expected):
        test_environment_yml_lists_pyproject_packages_with_the_same_ranges()


def _workflow(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_github_ci_runs_the_same_test_command_as_ci_run():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    runs = [step.get("run", "").strip() for step in _steps(_workflow("ci.yml"))]
    assert "make test" in runs


def test_github_pages_publishes_the_book_built_by_make_book():
    steps = _steps(_workflow("pages.yml"))
    assert "make book" in [step.get("run", "").strip() for step in steps]
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert uploads and uploads[0]["with"]["path"] == "_build/html"
    assert any(step.get("uses", "").startswith("actions/deploy-pages@") for step in steps)
