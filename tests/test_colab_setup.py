"""The notebooks' Colab setup cell (tools/sync_notebooks.py writes it), executed for real.

Each test runs the generated cell in a fresh Python process, as Colab's kernel would:
`google.colab` is faked in ``sys.modules``, the install folder is redirected to a temporary
one (``COURSE_DIR``), and ``subprocess.run`` is replaced by a recorder that plays git, pip and
data/prepare.py (creating what a clone would) and fails on demand. Nothing touches the network.

What the cell promises: on Colab, the first run clones, installs course_lib with Colab's own
jax and jaxlib pinned (read without importing jax), prepares the data, and only then writes a
marker; later runs do nothing but change directory; a failed step prints which step failed
with the tail of its output, writes no marker, and running the cell again repairs the
install. Outside Colab it does nothing and prints nothing.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import ROOT

# Runs in the child process: the fake Colab, the recorder, then the cell, then a report.
DRIVER = textwrap.dedent('''
    import json, os, subprocess, sys, types
    from pathlib import Path

    cell, log, report, colab = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "colab"
    fail = os.environ.get("FAKE_FAIL", "")        # "git", "pip" or "prepare": that step fails
    if colab:
        sys.modules["google"] = types.ModuleType("google")
        sys.modules["google.colab"] = types.ModuleType("google.colab")

    def fake_run(command, *args, **kwargs):
        command = [str(part) for part in command]
        with log.open("a") as f:
            f.write(json.dumps(command) + "\\n")
        kind = ("git" if command[0] == "git" else "pip" if command[1:3] == ["-m", "pip"]
                else "prepare" if command[-1].endswith("data/prepare.py") else "other")
        if kind == fail:
            return subprocess.CompletedProcess(command, 1, "some progress\\n",
                                               f"ERROR: {kind} broke\\n")
        if kind == "git":                        # what a clone leaves: the course's folders
            dest = Path(command[-1])
            assert not dest.exists(), "git clone into an existing folder fails"
            for sub in ("notebooks", "data", ".git"):
                (dest / sub).mkdir(parents=True)
        return subprocess.CompletedProcess(command, 0, "", "")

    subprocess.run = fake_run
    had_jax = "jax" in sys.modules
    path_before, cwd_before = list(sys.path), os.getcwd()
    try:
        exec(compile(Path(cell).read_text(), "<setup cell>", "exec"), {"__name__": "__main__"})
    finally:
        report.write_text(json.dumps({
            "had_jax": had_jax, "has_jax": "jax" in sys.modules,
            "has_jaxlib": "jaxlib" in sys.modules, "cwd": os.getcwd(), "cwd_before": cwd_before,
            "path_added": [p for p in sys.path if p not in path_before],
        }))
''')


@pytest.fixture(scope="module")
def cell_source() -> str:
    spec = importlib.util.spec_from_file_location("sync_notebooks", ROOT / "tools" / "sync_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.setup_source(module.repository())


class Colab:
    """Runs the setup cell in child processes that share one install folder."""

    def __init__(self, tmp_path: Path, source: str):
        self.tmp = tmp_path
        self.dest = tmp_path / "content" / "course"
        self.cell = tmp_path / "cell.py"
        self.cell.write_text(source)
        self.driver = tmp_path / "driver.py"
        self.driver.write_text(DRIVER)
        self.runs = 0

    def run(self, *, colab: bool = True, fail: str = "") -> dict:
        self.runs += 1
        log, report = self.tmp / f"calls{self.runs}.jsonl", self.tmp / f"report{self.runs}.json"
        env = {k: v for k, v in os.environ.items() if k not in ("COURSE_DIR", "FAKE_FAIL")}
        env.update(COURSE_DIR=str(self.dest), FAKE_FAIL=fail, PYTHONPATH="")
        proc = subprocess.run([sys.executable, str(self.driver), str(self.cell), str(log), str(report),
                               "colab" if colab else "local"],
                              cwd=self.tmp, env=env, capture_output=True, text=True, timeout=120)
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return dict(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr, calls=calls,
                    report=json.loads(report.read_text()) if report.exists() else None)

    @property
    def marker(self) -> Path:
        return self.dest / ".course-installed"


@pytest.fixture
def colab(tmp_path, cell_source) -> Colab:
    return Colab(tmp_path, cell_source)


def kinds(calls: list[list[str]]) -> list[str]:
    return ["git" if c[0] == "git" else "pip" if c[1:3] == ["-m", "pip"] else "prepare" for c in calls]


def test_first_run_clones_installs_with_colabs_jax_pinned_prepares_data_then_marks(colab, cell_source):
    out = colab.run()
    assert out["returncode"] == 0, out["stderr"]
    assert kinds(out["calls"]) == ["git", "pip", "prepare"]
    clone, pip, prepare = out["calls"]
    config = (ROOT / "_config.yml").read_text()
    url, branch = clone[-2], clone[clone.index("--branch") + 1]
    assert clone[:2] == ["git", "clone"] and clone[-1] == str(colab.dest)
    assert f"url: {url}" in config and f"branch: {branch}" in config, "not the repository of _config.yml"
    # pip: course_lib with the notebooks' extras, and Colab's own jax/jaxlib kept at their versions
    assert pip[0] == sys.executable and pip[3] == "install"
    assert f"{colab.dest}[notebooks]" in pip
    assert f"jax=={version('jax')}" in pip and f"jaxlib=={version('jaxlib')}" in pip
    assert prepare == [sys.executable, f"{colab.dest}/data/prepare.py"]
    assert colab.marker.is_file()
    report = out["report"]
    assert report["cwd"] == str(colab.dest / "notebooks")
    assert report["path_added"] == [str(colab.dest)]
    assert "Course setup: done." in out["stdout"]


def test_nothing_is_imported_before_pip(colab, cell_source):
    """Colab's versions are read from package metadata: jax itself is not imported by the cell."""
    out = colab.run()
    assert out["returncode"] == 0, out["stderr"]
    assert not out["report"]["had_jax"]
    assert not out["report"]["has_jax"] and not out["report"]["has_jaxlib"]
    assert not any(line.strip().startswith(("import jax", "from jax")) for line in cell_source.splitlines())


def test_second_run_executes_nothing_and_only_changes_directory(colab):
    assert colab.run()["returncode"] == 0
    out = colab.run()
    assert out["returncode"] == 0, out["stderr"]
    assert out["calls"] == []
    assert out["stdout"] == "" and out["stderr"] == ""
    assert out["report"]["cwd"] == str(colab.dest / "notebooks")
    assert out["report"]["path_added"] == [str(colab.dest)]


@pytest.mark.parametrize("step, done_before, words", [
    ("git", [], "cloning"),
    ("pip", ["git"], "installing course_lib"),
    ("prepare", ["git", "pip"], "preparing the data"),
])
def test_a_failed_step_says_which_leaves_no_marker_and_a_rerun_repairs(colab, step, done_before, words):
    out = colab.run(fail=step)
    assert out["returncode"] != 0
    assert kinds(out["calls"]) == done_before + [step], "the steps after a failure must not run"
    assert not colab.marker.exists()
    message = out["stderr"]
    assert f"Course setup failed while {words}" in message and "(exit 1)" in message
    assert f"ERROR: {step} broke" in message, "the tail of the failed command's output is shown"
    assert "run this cell again" in message
    assert "CalledProcessError" not in message and "Traceback" not in message

    again = colab.run()
    assert again["returncode"] == 0, again["stderr"]
    assert kinds(again["calls"]) == ["git", "pip", "prepare"]
    assert colab.marker.is_file()
    assert colab.run()["calls"] == []


def test_a_half_done_clone_without_marker_is_replaced(colab):
    """A folder left by an interrupted attempt (no marker) is cloned afresh, not trusted."""
    (colab.dest / "notebooks").mkdir(parents=True)
    stale = colab.dest / "half-written-file"
    stale.write_text("partial")
    out = colab.run()
    assert out["returncode"] == 0, out["stderr"]
    assert kinds(out["calls"]) == ["git", "pip", "prepare"]
    assert not stale.exists() and colab.marker.is_file()


def test_outside_colab_the_cell_does_nothing_and_prints_nothing(colab):
    out = colab.run(colab=False)
    assert out["returncode"] == 0, out["stderr"]
    assert out["calls"] == []
    assert out["stdout"] == "" and out["stderr"] == ""
    report = out["report"]
    assert report["cwd"] == report["cwd_before"] and report["path_added"] == []
    assert not colab.dest.exists()
