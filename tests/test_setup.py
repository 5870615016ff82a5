"""Setup installs only what is missing and only what the command needs (tools/system_deps.py).

Every test runs the helper on a fake machine: PATH holds nothing but stub executables
(npm, browsers, apt-get, sudo, nvidia-smi, a python without ensurepip), the user id is faked
with COURSE_SETUP_EUID, and the stubs of apt-get and sudo write down how they were called
instead of installing anything. No root, no network, no real package manager.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import BROWSERS, ROOT

SCRIPT = ROOT / "tools" / "system_deps.py"
LOCK = ROOT / "requirements.lock"
PINNED_JAX = re.search(r"^jax==(\S+)$", LOCK.read_text(), re.MULTILINE).group(1)
CUDA_WHEELS = platform.system() == "Linux" and platform.machine().lower() in ("x86_64", "aarch64")
VENDORED = ("_mathjax/mathjax/tex-mml-chtml.js", "_mathjax/widgets/html-manager/embed-amd.js")
HELD_BROKEN = "E: Unable to correct problems, you have held broken packages."

# apt-get's stub: logs its call; `install PKG` fails for the packages in STUB_APT_FAIL and
# otherwise makes PKG's tool appear (chromium, npm on PATH; python3.X-venv: ensurepip).
APT_GET = f"""\
echo "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "$STUB_LOG"
[ "$1" = install ] || exit 0
for pkg; do :; done
case " $STUB_APT_FAIL " in *" $pkg "*) echo "{HELD_BROKEN}" >&2; exit 100;; esac
case "$pkg" in
  python3*-venv) : > "$STUB_ENSUREPIP";;
  *) printf '#!/bin/sh\\nexit 0\\n' > "$STUB_BIN/$pkg"; /bin/chmod +x "$STUB_BIN/$pkg";;
esac
"""
# sudo's stub: logs its call, then runs the command (after `env VAR=value ...`) from PATH.
SUDO = """\
echo "sudo $*" >> "$STUB_LOG"
[ "$1" = env ] && shift
while case "$1" in *=*) export "$1";; *) false;; esac; do shift; done
exec "$@"
"""
# An interpreter of the given version whose ensurepip is there only once python3.X-venv is.
PYTHON = """\
echo {version}
[ -e "$STUB_ENSUREPIP" ] && exit 0
echo "ModuleNotFoundError: No module named 'ensurepip'" >&2; exit 1
"""


@dataclass
class Machine:
    """A fake machine in a temporary folder: a repository, a PATH of stubs, a user id."""

    root: Path
    euid: int = 0
    env: dict = field(default_factory=dict)

    def __post_init__(self):
        self.bin = self.root / "bin"
        self.repo = self.root / "repo"
        self.log = self.root / "calls.log"
        self.ensurepip = self.root / "ensurepip"
        self.os_release = self.root / "os-release"
        self.bin.mkdir()
        self.repo.mkdir()
        self.log.touch()
        self.os_release.write_text('ID=debian\nVERSION_ID="12"\n')
        self.python = self.stub("python-for-venv", PYTHON.format(version="3.12"), folder=self.root)
        self.ensurepip.touch()  # a python that can make venvs, unless a test says otherwise

    def stub(self, name: str, body: str = "exit 0", folder: Path | None = None) -> Path:
        path = (folder or self.bin) / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return path

    def has(self, *names: str) -> "Machine":
        for name in names:
            self.stub(name, {"apt-get": APT_GET, "sudo": SUDO}.get(name, "exit 0"))
        return self

    def vendored(self) -> "Machine":
        for path in VENDORED:
            (self.repo / path).parent.mkdir(parents=True, exist_ok=True)
            (self.repo / path).write_text("// vendored\n")
        return self

    def with_venv(self) -> "Machine":
        self.stub("pip", folder=(self.repo / ".venv" / "bin").mkdir(parents=True) or self.repo / ".venv" / "bin")
        return self

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        environ = {"PATH": str(self.bin), "HOME": str(self.root), "COURSE_SETUP_EUID": str(self.euid),
                   "STUB_LOG": str(self.log), "STUB_BIN": str(self.bin), "STUB_ENSUREPIP": str(self.ensurepip),
                   "STUB_APT_FAIL": "", **self.env, **env}
        if args[0] in ("plan", "install"):
            args = (*args, "--root", str(self.repo), "--python", str(self.python),
                    "--os-release", str(self.os_release))
        return subprocess.run([sys.executable, str(SCRIPT), *args], env=environ,
                              capture_output=True, text=True, timeout=60)

    def plan(self, *args: str, **env: str) -> dict:
        proc = self.run("plan", "--json", *args, **env)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def machine(tmp_path) -> Machine:
    return Machine(tmp_path)


def planned(plan: dict) -> list[str]:
    return [" ".join(item["command"]) for item in plan["install"]]


# ---------------------------------------------------------------- the decisions (plan)

def test_browser_list_is_the_tests_list():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import system_deps
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert system_deps.BROWSERS == BROWSERS


def test_everything_present_nothing_to_install(machine):
    machine.has("npm", "chromium", "apt-get").with_venv()
    plan = machine.plan("--for", "test")
    assert plan["missing"] == [] and plan["install"] == [] and plan["hints"] == {}
    proc = machine.run("install", "--for", "test")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [proc.stdout.strip()], "one line"
    assert proc.stdout.startswith("system: nothing to install (.venv exists; npm ")
    assert machine.calls() == [], "apt-get was called"


def test_nodesource_machine_without_browser_asks_apt_for_chromium_only(machine):
    """The case of the issue: npm from NodeSource is there; apt must never be asked for npm."""
    machine.has("npm", "apt-get").with_venv()
    plan = machine.plan("--for", "test")
    assert plan["missing"] == ["browser"]
    assert planned(plan) == ["apt-get install -y chromium"]
    assert plan["update"] == ["apt-get", "update"]


def test_course_needs_no_browser(machine):
    machine.has("npm", "apt-get").with_venv()
    assert machine.plan("--for", "course")["missing"] == []
    proc = machine.run("install", "--for", "course")
    assert proc.returncode == 0 and proc.stdout.startswith("system: nothing to install")
    assert machine.calls() == []


def test_npm_is_needed_only_while_mathjax_is_not_vendored(machine):
    machine.has("chromium", "apt-get").with_venv()
    assert planned(machine.plan("--for", "course")) == ["apt-get install -y npm"]
    machine.vendored()
    assert machine.plan("--for", "course")["missing"] == []
    assert machine.plan("--for", "test")["missing"] == []
    # Named explicitly (the Makefile's MathJax step, which runs only when not vendored): checked.
    assert planned(machine.plan("npm")) == ["apt-get install -y npm"]


def test_each_missing_tool_is_its_own_apt_command(machine):
    machine.has("apt-get")
    plan = machine.plan("--for", "test")
    assert plan["missing"] == ["npm", "browser"]  # the venv exists? no, but this python can make one
    assert planned(plan) == ["apt-get install -y npm", "apt-get install -y chromium"]


def test_not_root_goes_through_sudo(machine):
    machine.euid = 1000
    machine.has("npm", "apt-get", "sudo").with_venv()
    plan = machine.plan("--for", "test")
    assert planned(plan) == ["sudo apt-get install -y chromium"]
    assert plan["update"] == ["sudo", "apt-get", "update"]


@pytest.mark.parametrize("situation, tools, reason", [
    ("not root, no sudo", ("npm", "apt-get"), "not root, and no sudo"),
    ("no apt-get (macOS)", ("npm", "sudo"), "apt-get is not available"),
])
def test_cannot_install_says_what_to_install_by_hand(machine, situation, tools, reason):
    machine.euid = 1000
    machine.has(*tools).with_venv()
    plan = machine.plan("--for", "test")
    assert plan["install"] == [] and list(plan["hints"]) == ["browser"]
    proc = machine.run("install", "--for", "test")
    assert proc.returncode == 1, situation
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"one line, not: {lines}"
    line = lines[0]
    assert reason in line
    for hint in ("sudo apt-get install chromium", "sudo snap install chromium", "Google Chrome",
                 "brew install --cask chromium", "COURSE_BROWSER"):
        assert hint in line, f"{hint!r} missing from: {line}"
    assert machine.calls() == []


def test_missing_npm_that_cannot_be_installed_names_node_per_platform(machine):
    machine.euid = 1000
    machine.has("chromium", "apt-get").with_venv()
    proc = machine.run("install", "--for", "course")
    assert proc.returncode == 1
    [line] = proc.stdout.splitlines()
    for hint in ("sudo apt-get install npm", "NodeSource", "brew install node", "MathJax"):
        assert hint in line


def test_ubuntu_chromium_is_a_snap_so_apt_is_not_asked_for_it(machine):
    machine.os_release.write_text('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n')
    machine.has("apt-get").with_venv()
    plan = machine.plan("--for", "test")
    assert planned(plan) == ["apt-get install -y npm"], "npm still from apt"
    assert "snap" in plan["hints"]["browser"] and "sudo snap install chromium" in plan["hints"]["browser"]
    machine.os_release.write_text("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n")
    assert "browser" in machine.plan("--for", "test")["hints"]


def test_any_chromium_like_browser_will_do(machine):
    machine.has("npm", "apt-get").with_venv()
    for name in BROWSERS[1:]:
        machine.stub(name)
        assert machine.plan("--for", "test")["missing"] == [], name
        (machine.bin / name).unlink()


def test_course_browser_overrides_the_search(machine):
    machine.has("npm", "apt-get").with_venv()
    chrome = machine.stub("my-chrome", folder=machine.root)
    plan = machine.plan("--for", "test", COURSE_BROWSER=str(chrome))
    assert plan["missing"] == [] and "COURSE_BROWSER" in plan["present"]["browser"]
    plan = machine.plan("--for", "test", COURSE_BROWSER="/nowhere/chrome")
    assert plan["install"] == [], "apt is not asked to replace an explicit choice"
    assert "COURSE_BROWSER=/nowhere/chrome is not an executable" in plan["hints"]["browser"]


def test_python_without_ensurepip_gets_its_own_venv_package(machine):
    machine.has("npm", "chromium", "apt-get")
    machine.ensurepip.unlink()
    plan = machine.plan("--for", "course")
    assert planned(plan) == ["apt-get install -y python3.12-venv"]
    assert "no ensurepip" in plan["install"][0]["why"]
    machine.with_venv()  # once .venv has pip, the interpreter no longer matters
    assert machine.plan("--for", "course")["missing"] == []


def test_python_without_ensurepip_and_no_apt_says_what_to_install(machine):
    machine.euid = 1000
    machine.has("npm")
    machine.ensurepip.unlink()
    proc = machine.run("install", "venv")
    assert proc.returncode == 1
    [line] = proc.stdout.splitlines()
    assert "python3.12 cannot create .venv (no ensurepip)" in line
    assert "sudo apt-get install python3.12-venv" in line and "ensurepip" in line


def test_plan_as_text(machine):
    machine.euid = 1000
    machine.has("apt-get", "sudo").with_venv()
    proc = machine.run("plan", "--for", "test")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == "plan: sudo apt-get update"
    assert lines[1].startswith("plan: sudo apt-get install -y npm")
    assert lines[2].startswith("plan: sudo apt-get install -y chromium")
    assert machine.calls() == [], "plan runs nothing"


# ---------------------------------------------------------------- doing it (install)

def test_install_runs_apt_for_the_missing_tool_only(machine):
    machine.has("npm", "apt-get").with_venv()
    proc = machine.run("install", "--for", "test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert machine.calls() == [
        "apt-get update -qq DEBIAN_FRONTEND=noninteractive",
        "apt-get install -y -qq -o DPkg::Lock::Timeout=300 chromium DEBIAN_FRONTEND=noninteractive",
    ]
    assert proc.stdout.splitlines()[-1] == f"system: chromium installed (browser {machine.bin / 'chromium'})"


def test_install_through_sudo_when_not_root(machine):
    machine.euid = 1000
    machine.has("npm", "apt-get", "sudo").with_venv()
    assert machine.run("install", "--for", "test").returncode == 0
    calls = machine.calls()
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 chromium" in calls
    assert not [call for call in calls if call.startswith("apt-get") and "install" in call
                and "DEBIAN_FRONTEND=noninteractive" not in call]


def test_a_failing_package_does_not_stop_the_others_and_says_why(machine):
    machine.has("apt-get").with_venv()
    proc = machine.run("install", "--for", "test", STUB_APT_FAIL="npm")
    assert proc.returncode == 1
    installs = [call for call in machine.calls() if " install " in call]
    assert [call.split()[-2] for call in installs] == ["npm", "chromium"], "one apt-get call per tool"
    assert (machine.bin / "chromium").exists()
    [hint] = [line for line in proc.stdout.splitlines() if "by hand" in line]
    assert "`apt-get install npm` failed: " + HELD_BROKEN in hint and "brew install node" in hint


def test_install_venv_package_then_python_can_make_venvs(machine):
    machine.has("npm", "chromium", "apt-get")
    machine.ensurepip.unlink()
    proc = machine.run("install", "--quiet", "venv")
    assert proc.returncode == 0, proc.stdout
    assert machine.calls()[-1].startswith("apt-get install -y -qq -o DPkg::Lock::Timeout=300 python3.12-venv")
    assert "python3.12-venv installed (python3.12 can create .venv)" in proc.stdout


def test_quiet_install_says_nothing_when_present(machine):
    machine.has("npm", "apt-get")
    proc = machine.run("install", "--quiet", "npm")
    assert proc.returncode == 0 and proc.stdout == "" and machine.calls() == []


# ---------------------------------------------------------------- jax on an NVIDIA GPU

def nvidia_smi(machine: Machine, *gpus: str, status: int = 0, error: str = "") -> None:
    lines = "".join(f"echo '{gpu}'\n" for gpu in gpus)
    machine.stub("nvidia-smi", f'echo "nvidia-smi $*" >> "$STUB_LOG"\n{lines}'
                               f'{f"echo {error!r}" if error else ""}\nexit {status}\n')


def jax_dry_run(machine: Machine, **env: str) -> str:
    proc = machine.run("jax", "--python", "/venv/bin/python", "--lock", str(LOCK), "--dry-run", **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = proc.stdout.splitlines()
    return line


def pip_command(extra: str) -> str:
    return f"would run: /venv/bin/python -m pip install --quiet -c {LOCK} 'jax[{extra}]=={PINNED_JAX}'"


def test_no_gpu_keeps_the_cpu_jax_of_the_lock(machine):
    assert jax_dry_run(machine) == "jax: no nvidia-smi: the CPU jax of requirements.lock"
    nvidia_smi(machine, status=6, error="No devices were found")
    line = jax_dry_run(machine)
    assert "nvidia-smi lists no GPU (No devices were found)" in line and "would run" not in line


@pytest.mark.skipif(not CUDA_WHEELS, reason="jax's CUDA wheels exist for Linux x86_64/aarch64 only")
@pytest.mark.parametrize("driver, extra", [("525.60.13", "cuda12"), ("570.133.20", "cuda12"),
                                           ("580.65.06", "cuda13"), ("590.10", "cuda13")])
def test_gpu_gets_the_cuda_build_of_the_pinned_jax(machine, driver, extra):
    nvidia_smi(machine, f"NVIDIA H100 80GB HBM3, {driver}")
    line = jax_dry_run(machine)
    assert line == f"jax: NVIDIA H100 80GB HBM3, driver {driver}: " + pip_command(extra)
    assert machine.calls() == ["nvidia-smi --query-gpu=name,driver_version --format=csv,noheader"]


@pytest.mark.skipif(not CUDA_WHEELS, reason="jax's CUDA wheels exist for Linux x86_64/aarch64 only")
def test_several_gpus_and_an_old_driver(machine):
    nvidia_smi(machine, "NVIDIA A100-SXM4-40GB, 535.183.01", "NVIDIA A100-SXM4-40GB, 535.183.01")
    assert jax_dry_run(machine).startswith("jax: 2 x NVIDIA A100-SXM4-40GB, driver 535.183.01: would run")
    nvidia_smi(machine, "Tesla K80, 470.256.02")
    line = jax_dry_run(machine)
    assert "driver 470.256.02, older than the 525.60.13" in line and "update the NVIDIA driver" in line
    assert "would run" not in line


def test_course_jax_overrides_the_detection(machine):
    nvidia_smi(machine, "NVIDIA L4, 570.1")
    assert jax_dry_run(machine, COURSE_JAX="cpu") == "jax: COURSE_JAX=cpu: the CPU jax of requirements.lock"
    (machine.bin / "nvidia-smi").unlink()
    assert jax_dry_run(machine, COURSE_JAX="cuda13") == "jax: COURSE_JAX=cuda13: " + pip_command("cuda13")
    proc = machine.run("jax", "--python", "python", "--lock", str(LOCK), COURSE_JAX="rocm")
    assert proc.returncode != 0 and "COURSE_JAX=rocm is not one of" in proc.stdout + proc.stderr


@pytest.mark.skipif(not CUDA_WHEELS, reason="jax's CUDA wheels exist for Linux x86_64/aarch64 only")
@pytest.mark.parametrize("backend, status", [("gpu", 0), ("cpu", 1)])
def test_install_runs_that_pip_command_then_checks_the_backend(machine, backend, status):
    nvidia_smi(machine, "NVIDIA H100 80GB HBM3, 570.133.20")
    python = machine.stub("python", f'echo "python $*" >> "$STUB_LOG"\n'
                                    f'[ "$1" = -c ] && echo "{backend} 1"\nexit 0\n', folder=machine.root)
    proc = machine.run("jax", "--python", str(python), "--lock", str(LOCK))
    assert proc.returncode == status, proc.stdout
    calls = machine.calls()
    assert calls[1] == f"python -m pip install --quiet -c {LOCK} jax[cuda12]=={PINNED_JAX}"
    assert calls[2].startswith("python -c import jax;")
    assert proc.stdout.splitlines()[-1] == ("jax: backend=gpu, 1 device(s)" if backend == "gpu" else
        f"jax: jax[cuda12]=={PINNED_JAX} is installed but jax sees backend=cpu (cpu 1); check the "
        "NVIDIA driver, or `COURSE_JAX=cpu make setup` to keep the CPU build")


def test_cuda_extra_exists_for_the_pinned_jax():
    """jax's own metadata offers the extras the helper asks for, at the pinned version."""
    from importlib.metadata import PackageNotFoundError, metadata, version

    try:
        installed = version("jax")
    except PackageNotFoundError:
        pytest.skip("jax is not installed here")
    if installed != PINNED_JAX:
        pytest.skip(f"jax {installed} installed, {PINNED_JAX} pinned")
    requires = metadata("jax").get_all("Requires-Dist")
    for extra in ("cuda12", "cuda13"):
        assert f"jax-{extra}-plugin[with-cuda]<={PINNED_JAX},>={PINNED_JAX}; extra == \"{extra}\"" in requires


# ---------------------------------------------------------------- the Makefile's wiring

@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("goal, wanted, unwanted", [
    ("course", ["tools/system_deps.py install --for course"], ["--for test", "browser"]),
    ("setup", ["tools/system_deps.py install --for course"], ["--for test", "browser"]),
    ("test", ["tools/system_deps.py install --for test", "tools/system_deps.py install --quiet browser"], []),
    ("system", ["tools/system_deps.py install --for test"], []),
    ("test-fast", ["data/prepare.py"], ["install --for", "browser"]),
])
def test_make_asks_for_what_each_command_needs(goal, wanted, unwanted):
    """`make -n -B`: every recipe the goal could run, whatever is already in place here."""
    proc = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), goal], capture_output=True, text=True,
                          env={**os.environ, "MAKEFLAGS": ""}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for text in wanted:
        assert text in proc.stdout, f"make {goal}: {text!r} not in\n{proc.stdout}"
    for text in unwanted:
        assert text not in proc.stdout, f"make {goal}: {text!r} in\n{proc.stdout}"
    if goal == "test-fast":
        assert proc.stdout.index("data/prepare.py") < proc.stdout.index("pytest")
    if "npm install" in proc.stdout:  # MathJax's step makes sure of npm first
        assert proc.stdout.index("system_deps.py install --quiet npm") < proc.stdout.index("npm install")
