"""Packaging drift: pyproject.toml, environment.yml, the two pin files and CI must agree.

- environment.yml (conda/mamba) lists, from conda-forge, every package of pyproject's
  runtime dependencies and its `notebooks` and `test` extras, under the same name and with
  the same version range; then pip installs course_lib itself (`-e .`), which finds every
  dependency satisfied. A package added to, removed from or re-ranged in one file and not
  the other fails here.
- Every range has a lower bound. What the Colab setup cell installs (the dependencies and
  the `notebooks` extra) has no upper cap: Colab's own jax is kept as it is, and a cap below
  it would fail the install the day Colab moves past it. The test tools are capped above.
- The two ends of every range are tested: requirements.lock (what `make setup` installs,
  the newest end) pins a version inside every range; requirements-min.txt (CI's
  minimum-versions job) pins every package at exactly its lower bound.
- The supported Pythons (pyproject's classifiers) are the ones CI runs `make test` on, the
  floor of requires-python is the oldest of them, and the lower bounds are tested on it.
"""
from __future__ import annotations

import os
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


def assert_same_packages(left: dict, left_name: str, right: dict, right_name: str) -> None:
    """Both files name the same packages, each with the same version (range or pin)."""
    missing = sorted(set(left) - set(right))
    extra = sorted(set(right) - set(left))
    assert not missing, f"in {left_name}, not in {right_name}: {missing}"
    assert not extra, f"in {right_name}, not in {left_name}: {extra}"
    differ = {name: (str(left[name]), str(right[name])) for name in left if left[name] != right[name]}
    assert not differ, f"ranges differ ({left_name}, {right_name}): {differ}"


def test_environment_yml_lists_pyproject_packages_with_the_same_ranges():
    declared = declared_requirements()
    conda, _ = conda_requirements()
    listed = {name: spec for name, spec in conda.items() if name not in CONDA_ONLY}
    assert_same_packages(declared, "pyproject.toml", listed, "environment.yml")


def test_environment_yml_python_pip_and_channels():
    env = environment()
    conda, pip = conda_requirements()
    assert env["channels"] == ["conda-forge", "nodefaults"]
    assert set(conda) >= CONDA_ONLY
    assert conda["python"] == SpecifierSet(pyproject()["project"]["requires-python"])
    assert pip == ["-e ."], "pip installs course_lib only; its dependencies come from conda-forge"


def colab_installed() -> set[str]:
    """What the Colab setup cell installs: the runtime dependencies and the notebooks extra."""
    project = pyproject()["project"]
    return {canonicalize_name(Requirement(line).name)
            for line in project["dependencies"] + project["optional-dependencies"]["notebooks"]}


def test_every_declared_range_is_admissible():
    """Each range has a lower bound and admits a version (the lock's, the min file's).

    The test tools are bounded above too (no surprise major upgrades). What Colab installs
    takes a lower bound only: the setup cell pins Colab's own jax/jaxlib, and any upper cap
    (on jax, or on numpy, scipy... that Colab preinstalls) would make that install fail or
    downgrade Colab's packages the day Colab moves past it.
    """
    colab = colab_installed()
    assert {"jax", "flax", "optax", "numpy"} <= colab
    for name, spec in declared_requirements().items():
        check_range(name, spec, on_colab=name in colab)


def check_range(name: str, spec: SpecifierSet, *, on_colab: bool) -> None:
    """One lower bound, an upper bound unless Colab installs it, and a non-empty range: the
    lower bound itself must satisfy the whole specifier (``>=2,<1`` admits nothing)."""
    operators = [s.operator for s in spec]
    assert operators.count(">=") == 1, f"{name}: {spec} needs one lower bound (>=)"
    if on_colab:
        assert operators == [">="], f"{name}: {spec}: installed on Colab, so a lower bound only"
    else:
        assert sorted(operators) == ["<", ">="], f"{name}: {spec} needs a lower and an upper bound"
    assert lower_bound(spec) in spec, f"{name}: {spec} admits no version, not even its lower bound"


@pytest.mark.parametrize("spec, on_colab, expected", [
    (">=2,<1", False, "admits no version"),
    (">=2,<2", False, "admits no version"),
    (">=2,!=2", True, "lower bound only"),
    (">=2,!=2", False, "lower and an upper"),
    ("<3", False, "one lower bound"),
])
def test_range_check_fails_on_bad_ranges(spec, on_colab, expected):
    with pytest.raises(AssertionError, match=expected):
        check_range("pkg", SpecifierSet(spec), on_colab=on_colab)
    check_range("pkg", SpecifierSet(">=2" if on_colab else ">=2,<3"), on_colab=on_colab)


def pins(filename: str) -> dict[str, Version]:
    """A pin file's `name==version` lines as {name: version} (comments and blank lines skipped)."""
    found = {}
    for line in (ROOT / filename).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{filename}: {line!r} is not pinned with =="
            name = canonicalize_name(name)
            assert name not in found, f"{filename} pins {name} twice"
            found[name] = Version(version)
    return found


def lower_bound(spec: SpecifierSet) -> Version:
    [bound] = [Version(s.version) for s in spec if s.operator == ">="]
    return bound


def test_requirements_lock_pins_a_version_inside_every_range():
    locked = pins("requirements.lock")
    outside = {name: (str(locked.get(name)), str(spec)) for name, spec in declared_requirements().items()
               if name not in locked or locked[name] not in spec}
    assert not outside, f"requirements.lock (pin, range) disagrees with pyproject.toml: {outside}"


def test_requirements_min_pins_every_package_at_its_lower_bound():
    """The lower bounds declared are the versions the minimum-versions CI job installs."""
    declared = {name: lower_bound(spec) for name, spec in declared_requirements().items()}
    oldest = pins("requirements-min.txt")
    assert_same_packages(declared, "pyproject.toml (lower bounds)", oldest, "requirements-min.txt")


def supported_pythons() -> list[str]:
    """The Python versions pyproject's classifiers name, oldest first: the support matrix."""
    prefix = "Programming Language :: Python :: "
    found = [c.removeprefix(prefix) for c in pyproject()["project"].get("classifiers", [])
             if c.startswith(prefix) and re.fullmatch(r"3\.\d+", c.removeprefix(prefix))]
    return sorted(found, key=Version)


def test_requires_python_starts_at_the_oldest_supported_python():
    supported = supported_pythons()
    assert len(supported) >= 2, f"classifiers name too few Python versions: {supported}"
    spec = SpecifierSet(pyproject()["project"]["requires-python"])
    assert all(Version(v) in spec for v in supported), f"requires-python {spec} excludes one of {supported}"
    major, minor = map(int, supported[0].split("."))
    assert Version(f"{major}.{minor - 1}") not in spec, \
        f"requires-python {spec} admits Python {major}.{minor - 1}, which is not tested"
    assert [int(v.split(".")[1]) for v in supported] == list(range(minor, minor + len(supported))), \
        f"the supported Pythons have a gap: {supported}"


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


def _jobs_running(workflow: dict, predicate) -> list[dict]:
    return [job for job in workflow["jobs"].values()
            if any(predicate(step.get("run", "").strip()) for step in job.get("steps", []))]


def _setup_python_version(job: dict) -> str:
    [setup] = [step for step in job["steps"] if step.get("uses", "").startswith("actions/setup-python@")]
    return str(setup["with"]["python-version"])


def test_github_ci_runs_make_test_on_every_supported_python():
    [job] = _jobs_running(_workflow("ci.yml"), lambda run: run == "make test")
    assert job["runs-on"] == "ubuntu-24.04"
    matrix = [str(v) for v in job["strategy"]["matrix"]["python-version"]]
    assert matrix == supported_pythons(), f"CI's Pythons {matrix} != pyproject's classifiers"
    assert _setup_python_version(job) == "${{ matrix.python-version }}"
    assert job["strategy"].get("fail-fast") is False, "one Python failing must not cancel the others"


def test_github_ci_tests_the_lower_bounds_on_the_oldest_python():
    workflow = _workflow("ci.yml")
    [job] = _jobs_running(workflow, lambda run: "-r requirements-min.txt" in run)
    assert job["runs-on"] == "ubuntu-24.04"
    assert _setup_python_version(job) == supported_pythons()[0]
    runs = [step.get("run", "").strip() for step in job["steps"]]
    install = next(i for i, run in enumerate(runs) if "-r requirements-min.txt" in run)
    assert "requirements.lock" not in runs[install], "the lower bounds, not the lock"
    assert '-e ".[test]"' in runs[install]
    prepare = next(i for i, run in enumerate(runs) if "data/prepare.py" in run)
    tests = next(i for i, run in enumerate(runs) if "-m pytest tests" in run and '-m "not slow"' in run)
    assert install < prepare < tests


def test_github_pages_publishes_the_book_built_by_make_book():
    steps = _steps(_workflow("pages.yml"))
    assert "make book" in [step.get("run", "").strip() for step in steps]
    uploads = [step for step in steps if step.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert uploads and uploads[0]["with"]["path"] == "_build/html"
    assert any(step.get("uses", "").startswith("actions/deploy-pages@") for step in steps)


def test_hypothesis_runs_derandomised_unless_asked_to_explore():
    """CI and learners test the same examples as the last green run (tests/conftest.py)."""
    from hypothesis import settings
    if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci":
        assert settings.default.derandomize and settings.default.deadline is None


def test_every_test_has_a_timeout():
    """pytest-timeout is installed (the test extra) and configured in pyproject.toml."""
    options = pyproject()["tool"]["pytest"]["ini_options"]
    assert 0 < int(options["timeout"]) <= 1800
    assert any(Requirement(r).name == "pytest-timeout"
               for r in pyproject()["project"]["optional-dependencies"]["test"])
