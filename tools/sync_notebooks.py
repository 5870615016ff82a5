"""Write the Colab badge and the setup cell of every notebook from _config.yml.

    python tools/sync_notebooks.py          # rewrite in place (make sync)
    python tools/sync_notebooks.py --check  # exit 1 and name the notebooks that differ

The repository address lives in one place, `repository.url` in _config.yml. The badge
line of the first (markdown) cell and the whole second (code) cell are derived from it.

The setup cell (SETUP_TEMPLATE) acts on Colab only. It keys "installed" on a marker file
written after the clone, the pip install and the data preparation have all succeeded, so
running it again after a failure starts over and repairs the install. It reads Colab's jax
and jaxlib versions from package metadata (nothing is imported before pip runs) and pins
them, so Colab's GPU/TPU builds are kept. A failed step ends in one message naming the step,
with the tail of its output. COURSE_DIR overrides where it installs (tests/test_colab_setup.py
runs the cell with a fake Colab and a fake subprocess.run).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
BADGE_RE = re.compile(r"^\[!\[Open In Colab\]\(.*\)\]\(.*\)$", re.MULTILINE)
SETUP_TAG = "course-setup"

SETUP_TEMPLATE = '''\
# Setup. On Colab: fetch the course, install course_lib (keeping Colab's own GPU/TPU jax),
# prepare the data. Anywhere else this cell does nothing. After a failure, run it again: it
# starts over from a fresh clone. Once all went well (a marker file), it only changes directory.
import os, sys
if "google.colab" in sys.modules:
    import shutil, subprocess
    from importlib.metadata import distributions
    REPO, BRANCH = "{url}", "{branch}"
    DEST = os.environ.get("COURSE_DIR", "/content/{name}")
    DONE = DEST + "/.course-installed"

    def step(what, *command):
        print(f"Course setup: {{what}}...", flush=True)
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode:
            tail = "\\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise SystemExit(f"Course setup failed while {{what}} (exit {{proc.returncode}}):\\n"
                             f"{{tail}}\\nFix the cause, then run this cell again.")

    if not os.path.exists(DONE):
        # Colab's jax and jaxlib (GPU/TPU builds), read without importing them, are kept as they are
        keep = sorted({{f"{{d.name}}=={{d.version}}" for d in distributions() if d.name in ("jax", "jaxlib")}})
        shutil.rmtree(DEST, ignore_errors=True)  # what a failed attempt left, if anything
        step("cloning " + REPO, "git", "clone", "-q", "--depth=1", "--branch", BRANCH, REPO, DEST)
        step("installing course_lib", sys.executable, "-m", "pip", "install", "-q", "-e",
             DEST + "[notebooks]", *keep)
        step("preparing the data", sys.executable, DEST + "/data/prepare.py")
        open(DONE, "w").close()  # only now: every step succeeded
        print("Course setup: done.")
    if DEST not in sys.path:
        sys.path.insert(0, DEST)
    os.chdir(DEST + "/notebooks")'''


def repository() -> dict:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]


def badge(repo: dict, notebook: Path) -> str:
    slug = repo["url"].removeprefix("https://github.com/").rstrip("/")
    rel = notebook.resolve().relative_to(ROOT).as_posix()
    return (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{slug}/blob/{repo['branch']}/{rel})"
    )


def setup_source(repo: dict) -> str:
    name = repo["url"].rstrip("/").rsplit("/", 1)[-1]
    return SETUP_TEMPLATE.format(url=repo["url"], name=name, branch=repo["branch"])


def synced(nb, notebook: Path, repo: dict):
    """Return a copy of ``nb`` with its badge and setup cell derived from ``repo``."""
    nb = nbformat.from_dict(nb)
    header = nb.cells[0]
    if header.cell_type != "markdown" or not header.source.startswith("# "):
        raise SystemExit(f"{notebook}: the first cell must be the markdown header '# NN · Title'")
    line = badge(repo, notebook)
    if BADGE_RE.search(header.source):
        header.source = BADGE_RE.sub(lambda _: line, header.source, count=1)
    else:
        title, _, rest = header.source.partition("\n")
        header.source = f"{title}\n\n{line}\n{rest}".rstrip() + "\n"
        header.source = header.source.rstrip("\n")
    setup = nbformat.v4.new_code_cell(setup_source(repo), metadata={"tags": [SETUP_TAG, "hide-input"]})
    if len(nb.cells) > 1 and SETUP_TAG in nb.cells[1].get("metadata", {}).get("tags", []):
        setup.id = nb.cells[1].get("id", setup.get("id"))
        setup.execution_count = nb.cells[1].get("execution_count")
        nb.cells[1] = setup
    else:
        nb.cells.insert(1, setup)
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    repo = repository()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    stale = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        new = synced(nb, path, repo)
        if nbformat.writes(new) != nbformat.writes(nb):
            stale.append(path.name)
            if not args.check:
                nbformat.write(new, path)
    if args.check and stale:
        print("out of date with _config.yml (run `make sync`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
