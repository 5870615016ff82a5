"""Shared fixtures: the repository's layout, the book built once per session, a browser.

The end-to-end tests (book, browser, JupyterLab) are marked ``slow``; ``make test-fast``
leaves them out, ``make test`` runs them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

# Hypothesis draws its examples from a fixed seed (derandomize), so that a run in CI or on a
# learner's laptop tests exactly what the last green run tested, and a failure reproduces.
# HYPOTHESIS_PROFILE=explore draws fresh random examples (authors hunting for new failures).
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
VENDORED_JS = (ROOT / "_mathjax" / "mathjax" / "tex-mml-chtml.js",          # make mathjax
               ROOT / "_mathjax" / "widgets" / "require.js",
               ROOT / "_mathjax" / "widgets" / "html-manager" / "embed-amd.js")
BIN = Path(sys.executable).parent  # the venv's scripts: jupyter-book, jupyter, ...

# Chromium-like browsers, most preferred first. Debian names it `chromium`; GitHub's Ubuntu
# runners ship Google Chrome. COURSE_BROWSER overrides the search.
BROWSERS = ("chromium", "google-chrome", "google-chrome-stable", "chromium-browser")
BROWSER_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1280,900",
)


def course_notebooks() -> list[Path]:
    """Every ``notebooks/NN_*.ipynb``, in the order of their numbers."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def load_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


@dataclass(frozen=True)
class BookBuild:
    """One ``jupyter-book build`` of the repository (stored outputs, no execution)."""

    html: Path          # the site: html/index.html, html/notebooks/01_probability.html, ...
    returncode: int
    log: str            # stdout and stderr of the build
    seconds: float


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module.

    Every executable XLA:CPU compiles keeps about three memory mappings (code, constants,
    data) for as long as JAX caches it. One pytest process compiles tens of thousands of
    them, and Linux allows a process 65,530 mappings (``vm.max_map_count``): past that,
    LLVM's JIT gets no memory and the process dies with a segmentation fault inside XLA's
    compiler, in whichever test happens to compile next. Clearing the caches between
    modules keeps the count to one module's worth; a module that alone comes within half of
    the limit is reported here, by name, instead of crashing a later one.
    """
    yield
    if "jax" not in sys.modules:
        return
    import gc
    import jax
    jax.clear_caches()
    gc.collect()
    maps, limit = _memory_mappings()
    if limit and maps > limit // 2:
        pytest.fail(f"{maps} memory mappings after this module (the limit is {limit}): "
                    "something keeps compiled code alive across tests", pytrace=False)


def _memory_mappings() -> tuple[int, int]:
    """This process's memory mappings and the kernel's limit (0, 0 where not Linux)."""
    try:
        with open("/proc/self/maps") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except OSError:
        return 0, 0


@pytest.fixture(scope="session")
def book(tmp_path_factory) -> BookBuild:
    """Build the book once per session, the way ``make book`` does, into a temporary folder.

    Same flags as ``make book``: warnings are errors (``-W``), missing references are
    warnings (``-n``), every page is rebuilt (``--all``), and the notebooks' stored outputs
    are rendered instead of executing them (``execute_notebooks: "off"``).
    """
    missing = [str(path.relative_to(ROOT)) for path in VENDORED_JS if not path.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make mathjax` first")
    out = tmp_path_factory.mktemp("book")
    config = load_config()
    assert config["execute"]["execute_notebooks"] == "force", "make course must execute"
    config["execute"]["execute_notebooks"] = "off"
    config_path = out / "_config_stored.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [str(BIN / "jupyter-book"), "build", str(ROOT), "--config", str(config_path),
               "--path-output", str(out), "-W", "-n", "--keep-going", "--all"]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    print(f"\nbook build: {seconds:.1f} s")
    return BookBuild(out / "_build" / "html", proc.returncode, proc.stdout + proc.stderr, seconds)


def find_browser() -> str:
    override = os.environ.get("COURSE_BROWSER")
    if override:
        return override
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"no Chromium-like browser found (looked for {', '.join(BROWSERS)}): "
                "run `make system`, or set COURSE_BROWSER")


def run_browser(args: list[str], *, timeout: int = 60, tries: int = 2) -> subprocess.CompletedProcess:
    """Run headless Chromium once, under ``timeout``, retrying once if it hangs.

    About one start in eight hangs; each attempt has its own profile folder and process
    group, and the whole group is killed when the attempt ends.
    """
    browser = find_browser()
    failures = []
    for attempt in range(tries):
        profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"course-chromium-{os.getpid()}-{attempt}"
        shutil.rmtree(profile, ignore_errors=True)
        command = ["timeout", "-k", "5", str(timeout), browser, *BROWSER_FLAGS,
                   f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout + 15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        finally:
            try:  # renderer and GPU helper processes of this attempt, if any are left
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            shutil.rmtree(profile, ignore_errors=True)
        if proc.returncode == 0:
            return subprocess.CompletedProcess(command, 0, stdout, stderr)
        failures.append(f"attempt {attempt + 1}: exit {proc.returncode}\n{stderr[-2000:]}")
    pytest.fail(f"{browser} failed {tries} times:\n" + "\n".join(failures))
