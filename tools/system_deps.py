#!/usr/bin/env python3
"""The course's needs beyond Python packages: installed only when missing, only when needed.

    python3 tools/system_deps.py plan    [--for course|test] [--json] [TOOL ...]   # say, do nothing
    python3 tools/system_deps.py install [--for course|test] [--quiet] [TOOL ...]  # install what is missing
    python3 tools/system_deps.py jax --python .venv/bin/python [--dry-run]       # CUDA jax on a GPU

The Makefile calls it; ``plan`` prints what ``install`` would do, so the decisions can be
checked without root (tests/test_setup.py runs it against stub executables). Standard library
only: it runs with the system's ``python3`` before the course's virtual environment exists.

TOOLs, and which command needs each (``--for``):

    venv     ``python3 -m venv`` works (Debian/Ubuntu ship ensurepip apart, in python3.X-venv);
             needed while .venv has no pip                              course, test
    npm      vendors MathJax into _mathjax/ once; needed while it is not vendored   course, test
    browser  a Chromium-like browser for the page test (COURSE_BROWSER overrides)   test

A missing tool is installed on its own with apt-get (as root, or through sudo when it exists);
nothing is asked of apt for a tool that is present. When that cannot be done (no apt-get, no
root and no sudo, apt-get fails, Ubuntu's snap-only Chromium), one line says what to install by
hand and the command exits with status 1.

``jax``: when ``nvidia-smi`` lists an NVIDIA GPU, install the CUDA build of the jax version
pinned in requirements.lock (``jax[cuda13]`` for drivers >= 580, ``jax[cuda12]`` for drivers
>= 525.60.13) into the course's venv, then check that jax sees the GPU. COURSE_JAX=cpu keeps the
CPU build; COURSE_JAX=cuda12 or cuda13 forces a build.

Environment read: PATH (what is installed), COURSE_BROWSER, COURSE_JAX, and for tests
COURSE_SETUP_EUID (the user id to assume instead of the real one).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Chromium-like browsers, most preferred first: the same list as tests/conftest.py (a test checks).
BROWSERS = ("chromium", "google-chrome", "google-chrome-stable", "chromium-browser")
# What `make mathjax` vendors; npm is needed only while one of them is missing.
VENDORED = ("_mathjax/mathjax/tex-mml-chtml.js", "_mathjax/widgets/html-manager/embed-amd.js")
NEEDS = {"course": ("venv", "npm"), "test": ("venv", "npm", "browser")}
TOOLS = ("venv", "npm", "browser")
APT_PACKAGE = {"npm": "npm", "browser": "chromium"}  # venv: python3.X-venv, from the interpreter

# Oldest NVIDIA driver for each CUDA build of jaxlib on Linux (jax's installation guide).
CUDA_DRIVERS = (("cuda13", (580,)), ("cuda12", (525, 60, 13)))
PYTHON_CHECK = "import sys; print('%d.%d' % sys.version_info[:2]); import venv, ensurepip"


def say(line: str) -> None:
    print(line, flush=True)


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", os.defpath))


def euid() -> int:
    return int(os.environ.get("COURSE_SETUP_EUID", os.geteuid()))


def os_release(path: Path) -> dict[str, str]:
    fields = {}
    try:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = value.strip().strip('"')
    except OSError:
        pass
    return fields


def is_ubuntu(release: dict[str, str]) -> bool:
    ids = {release.get("ID", "")} | set(release.get("ID_LIKE", "").split())
    return "ubuntu" in ids


# ---------------------------------------------------------------- what is there

def probe(tool: str, args) -> tuple[bool, str, str | None]:
    """(present, what was found or why it is needed, apt package that would provide it)."""
    root = Path(args.root)
    if tool == "venv":
        venv = root / args.venv
        if os.access(venv / "bin" / "pip", os.X_OK):
            return True, f"{args.venv} exists", None
        try:
            proc = subprocess.run([args.python, "-c", PYTHON_CHECK], capture_output=True, text=True)
        except OSError as error:
            return False, f"{args.python} cannot run ({error.strerror})", None
        version = (proc.stdout.split() or ["3"])[0]
        package = f"python{version}-venv" if re.fullmatch(r"3\.\d+", version) else "python3-venv"
        if proc.returncode == 0:
            return True, f"python{version} can create {args.venv}", None
        return False, f"python{version} cannot create {args.venv} (no ensurepip)", package
    if tool == "npm":
        if args.for_ and all((root / path).is_file() for path in VENDORED):
            return True, "_mathjax/ is vendored", None
        found = which("npm")
        return (True, f"npm {found}", None) if found else (False, "no npm", APT_PACKAGE["npm"])
    if tool == "browser":
        override = os.environ.get("COURSE_BROWSER")
        if override:
            found = which(override)
            if found:
                return True, f"browser {found} (COURSE_BROWSER)", None
            return False, f"COURSE_BROWSER={override} is not an executable", None
        for name in BROWSERS:
            found = which(name)
            if found:
                return True, f"browser {found}", None
        return False, f"no Chromium-like browser ({', '.join(BROWSERS)})", APT_PACKAGE["browser"]
    raise ValueError(tool)


def by_hand(tool: str, package: str | None, reason: str) -> str:
    """The one line that says what to install by hand, per platform."""
    if tool == "venv":
        package = package or "python3-venv"
        return (f"system: {reason}; install it by hand: Debian/Ubuntu `sudo apt-get install {package}`;"
                " macOS or elsewhere, use a Python that ships ensurepip (python.org, Homebrew, pyenv)")
    if tool == "npm":
        return (f"system: {reason}; install Node.js with npm by hand (needed once, to vendor MathJax):"
                " Debian/Ubuntu `sudo apt-get install npm` (or Node.js from nodejs.org or NodeSource,"
                " which includes npm); macOS `brew install node`")
    return (f"system: {reason}; install a Chromium-like browser by hand (only the tests need it):"
            " Debian `sudo apt-get install chromium`; Ubuntu (Chromium is a snap there)"
            " `sudo snap install chromium` or Google Chrome; macOS `brew install --cask chromium`;"
            " or set COURSE_BROWSER=/path/to/chrome")


def make_plan(tools: list[str], args) -> dict:
    """What is present, which apt-get commands would run, and the lines for what cannot be."""
    present, missing = {}, {}
    for tool in tools:
        ok, detail, package = probe(tool, args)
        (present if ok else missing)[tool] = (detail, package)
    apt, sudo = which("apt-get"), which("sudo")
    root = euid() == 0
    prefix = [] if root else ["sudo"] if sudo else None
    ubuntu = is_ubuntu(os_release(Path(args.os_release)))
    installs, hints = [], {}
    for tool, (detail, package) in missing.items():
        if package is None:                                   # e.g. COURSE_BROWSER points nowhere
            reason = detail
        elif tool == "browser" and ubuntu:
            reason = f"{detail}, and Ubuntu's apt has Chromium only as a snap"
        elif apt is None:
            reason = f"{detail}, and apt-get is not available here"
        elif prefix is None:
            reason = f"{detail}, and apt-get needs root: not root, and no sudo"
        else:
            installs.append({"tool": tool, "package": package, "why": detail, "sudo": bool(prefix),
                             "command": prefix + ["apt-get", "install", "-y", package]})
            continue
        hints[tool] = by_hand(tool, package, reason)
    return {"present": {t: d for t, (d, _) in present.items()}, "missing": list(missing),
            "update": prefix + ["apt-get", "update"] if installs else None,
            "install": installs, "hints": hints}


def run_apt(sudo: bool, args: list[str]) -> subprocess.CompletedProcess:
    """apt-get ARGS, quiet and non-interactive, as root or through sudo."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = [which("sudo"), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"] if sudo else [which("apt-get")]
    return subprocess.run(command + args, env=env, capture_output=True, text=True)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {proc.returncode}"


def install(tools: list[str], args) -> int:
    plan = make_plan(tools, args)
    if not plan["missing"]:
        if not args.quiet:
            say("system: nothing to install (" + "; ".join(plan["present"].values()) + ")")
        return 0
    failed = dict(plan["hints"])
    if plan["install"]:
        proc = run_apt(plan["install"][0]["sudo"], ["update", "-qq"])
        if proc.returncode != 0:  # a stale mirror need not stop an install from the cache
            say(f"system: apt-get update failed ({last_line(proc)}); trying the install anyway")
    for item in plan["install"]:
        tool, package = item["tool"], item["package"]
        say(f"system: installing {package} with apt-get: {item['why']}")
        # one package a call, so that one that fails does not take the others with it;
        # waits for dpkg's lock if another install is running
        proc = run_apt(item["sudo"], ["install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300", package])
        ok, detail, _ = probe(tool, args)
        if proc.returncode == 0 and ok:
            say(f"system: {package} installed ({detail})")
        else:
            why = last_line(proc) if proc.returncode else f"{item['why']} after installing it"
            failed[tool] = by_hand(tool, package, f"`apt-get install {package}` failed: {why}")
    for tool in tools:
        if tool in failed:
            say(failed[tool])
    return 1 if failed else 0


def print_plan(tools: list[str], args) -> int:
    plan = make_plan(tools, args)
    if args.json:
        say(json.dumps(plan, indent=1))
        return 0
    if not plan["missing"]:
        say("system: nothing to install (" + "; ".join(plan["present"].values()) + ")")
    if plan["install"]:
        say("plan: " + shlex.join(plan["update"]))
    for item in plan["install"]:
        say("plan: " + shlex.join(item["command"]) + f"   # {item['why']}")
    for tool in tools:
        if tool in plan["hints"]:
            say(plan["hints"][tool])
    return 0


# ---------------------------------------------------------------- jax on an NVIDIA GPU

def pinned_jax(lock: Path) -> str:
    match = re.search(r"^jax==([^\s;#]+)", lock.read_text(), re.MULTILINE)
    if not match:
        raise SystemExit(f"jax: {lock} pins no jax version")
    return match.group(1)


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def gpus() -> tuple[list[tuple[str, str]], str]:
    """[(name, driver version)] of the NVIDIA GPUs nvidia-smi lists, and why there are none."""
    smi = which("nvidia-smi")
    if smi is None:
        return [], "no nvidia-smi"
    try:
        proc = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return [], "nvidia-smi did not answer in 60 s"
    found = []
    for line in proc.stdout.splitlines():
        name, _, driver = line.rpartition(",")
        if proc.returncode == 0 and name.strip() and re.fullmatch(r"\d+(\.\d+)*", driver.strip()):
            found.append((name.strip(), driver.strip()))
    if not found:
        return [], f"nvidia-smi lists no GPU ({last_line(proc)})"
    return found, ""


def jax_requirement(args) -> tuple[str | None, str]:
    """The pip requirement for jax on this machine (None: keep the CPU build), and why."""
    version = pinned_jax(Path(args.lock))
    choice = os.environ.get("COURSE_JAX", "auto").strip().lower() or "auto"
    if choice == "cpu":
        return None, "COURSE_JAX=cpu: the CPU jax of requirements.lock"
    if choice in ("cuda12", "cuda13"):
        return f"jax[{choice}]=={version}", f"COURSE_JAX={choice}"
    if choice != "auto":
        raise SystemExit(f"jax: COURSE_JAX={choice} is not one of auto, cpu, cuda12, cuda13")
    found, why = gpus()
    if not found:
        return None, f"{why}: the CPU jax of requirements.lock"
    name, driver = found[0]
    label = f"{len(found)} x {name}" if len(found) > 1 else name
    system, machine = platform.system(), platform.machine().lower()
    if system != "Linux" or machine not in ("x86_64", "amd64", "aarch64", "arm64"):
        return None, (f"{label} found, but jax's CUDA wheels are for Linux x86_64/aarch64 only"
                      f" (this is {system} {machine}): the CPU jax of requirements.lock")
    for extra, oldest in CUDA_DRIVERS:
        if version_tuple(driver) >= oldest:
            return f"jax[{extra}]=={version}", f"{label}, driver {driver}"
    return None, (f"{label} has driver {driver}, older than the 525.60.13 that jax's CUDA 12 build"
                  " needs: update the NVIDIA driver; meanwhile the CPU jax of requirements.lock")


def jax(args) -> int:
    requirement, why = jax_requirement(args)
    if requirement is None:
        say(f"jax: {why}")
        return 0
    command = [args.python, "-m", "pip", "install", "--quiet", "-c", args.lock, requirement]
    if args.dry_run:
        say(f"jax: {why}: would run: {shlex.join(command)}")
        return 0
    say(f"jax: {why}: installing the CUDA build of the pinned jax: {shlex.join(command[1:])}")
    if subprocess.run(command).returncode != 0:
        say(f"jax: could not install {requirement} (see pip's message above); "
            "`COURSE_JAX=cpu make setup` keeps the CPU build")
        return 1
    check = subprocess.run([args.python, "-c", "import jax; print(jax.default_backend(), jax.device_count())"],
                           capture_output=True, text=True)
    backend = (check.stdout.split() or ["?"])[0]
    if check.returncode != 0 or backend != "gpu":
        say(f"jax: {requirement} is installed but jax sees backend={backend} ({last_line(check)});"
            " check the NVIDIA driver, or `COURSE_JAX=cpu make setup` to keep the CPU build")
        return 1
    say(f"jax: backend=gpu, {check.stdout.split()[1]} device(s)")
    return 0


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("plan", "install"):
        p = sub.add_parser(name)
        p.add_argument("tools", nargs="*", metavar="TOOL",
                       help=f"any of {', '.join(TOOLS)} (checked whatever else is in place)")
        p.add_argument("--for", dest="for_", choices=sorted(NEEDS),
                       help="every tool this make command needs, skipping those it does not need now")
        p.add_argument("--root", default=str(ROOT), help="the repository (default: this one)")
        p.add_argument("--venv", default=".venv")
        p.add_argument("--python", default=sys.executable, help="the interpreter that makes the venv")
        p.add_argument("--os-release", default="/etc/os-release")
        p.add_argument("--json", action="store_true", help="plan: as JSON")
        p.add_argument("--quiet", action="store_true", help="install: say nothing when nothing is missing")
    p = sub.add_parser("jax")
    p.add_argument("--python", required=True, help="the course venv's python")
    p.add_argument("--lock", default="requirements.lock")
    p.add_argument("--dry-run", action="store_true", help="print the pip command, run nothing")
    args = parser.parse_args(argv)
    if args.command == "jax":
        return jax(args)
    unknown = [tool for tool in args.tools if tool not in TOOLS]
    if unknown:
        parser.error(f"unknown TOOL {', '.join(unknown)} (choose from {', '.join(TOOLS)})")
    tools = list(NEEDS[args.for_]) if args.for_ else []
    tools += [tool for tool in args.tools if tool not in tools]
    if not tools:
        parser.error("name a TOOL or give --for")
    return print_plan(tools, args) if args.command == "plan" else install(tools, args)


if __name__ == "__main__":
    sys.exit(main())
