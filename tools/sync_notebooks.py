"""Write the Colab badge and the setup cell of every notebook from _config.yml.

    python tools/sync_notebooks.py          # rewrite in place (make sync)
    python tools/sync_notebooks.py --check  # exit 1 and name the notebooks that differ

The repository address lives in one place, `repository.url` in _config.yml. The badge
line of the first (markdown) cell and the whole second (code) cell are derived from it.
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
# prepare the data. Anywhere else this cell does nothing. Safe to run more than once.
import os, subprocess, sys
if "google.colab" in sys.modules:
    REPO, DEST = "{url}", "/content/{name}"
    if not os.path.isdir(DEST):
        import jax, jaxlib
        subprocess.run(["git", "clone", "--depth=1", "--branch", "{branch}", REPO, DEST], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", DEST + "[notebooks]",
                        f"jax=={{jax.__version__}}", f"jaxlib=={{jaxlib.__version__}}"], check=True)
        subprocess.run([sys.executable, DEST + "/data/prepare.py"], check=True)
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
