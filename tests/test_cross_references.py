"""Every cross-reference points to something that exists.

A learner who reads "see notebook 08" or "Section 4 shows" and finds nothing there stops
trusting the text. These tests read the course's prose (the README files, the landing page,
every notebook cell, ``course_lib``'s docstrings, the benchmark notes) and check:

* every "notebook NN" (also "notebooks 01-06", "notebooks 02 and 03", "NN_topic.ipynb")
  names a notebook that exists;
* every "Section N" inside a notebook names a numbered section (``## N. ...``) of that
  notebook, or of the notebook the same sentence names;
* the README's syllabus table gives each notebook the compute minutes that the notebook's
  own "Estimated time" line gives, and lists exactly the notebooks that exist.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, course_notebooks

NUMBERS = {p.name[:2] for p in course_notebooks()}
# "notebook 05", "Notebooks 01-06", "notebooks 02 and 03", "notebooks 04, 06 and 09"
NOTEBOOK_REF = re.compile(
    r"\bnotebooks?\s+(\d{1,2}(?:\s*(?:[-–]|to|,|and|or|&)\s*\d{1,2})*)\b", re.I)
FILE_REF = re.compile(r"\b(\d{2})_[a-z][a-z0-9_]*\.ipynb\b")
SECTION_REF = re.compile(r"\bSections?\s+(\d{1,2})\b")
HEADING = re.compile(r"^##\s+(\d{1,2})\.", re.M)


def expand(numbers: str) -> list[str]:
    """``"01-03"`` -> ``["01", "02", "03"]``; ``"02 and 4"`` -> ``["02", "04"]``."""
    found = []
    for part in re.split(r"\s*(?:,|and|or|&)\s*", numbers):
        bounds = [int(b) for b in re.split(r"\s*(?:[-–]|to)\s*", part.strip()) if b]
        if len(bounds) == 2:
            found += [f"{n:02d}" for n in range(bounds[0], bounds[1] + 1)]
        elif bounds:
            found.append(f"{bounds[0]:02d}")
    return found


def prose_sources() -> list[tuple[str, str]]:
    """(where, text) for every piece of course prose."""
    sources = [(p.name, p.read_text()) for p in (ROOT / "README.md", ROOT / "intro.md",
                                                  ROOT / "notebooks" / "README.md", ROOT / "bench" / "README.md")]
    sources += [(f"course_lib/{p.name}", p.read_text()) for p in sorted((ROOT / "course_lib").glob("*.py"))]
    for path in course_notebooks():
        nb = nbformat.read(path, as_version=4)
        sources += [(f"{path.name} cell {i}", cell.source) for i, cell in enumerate(nb.cells)]
    return sources


def test_reference_parser():
    assert expand("01-06") == ["01", "02", "03", "04", "05", "06"]
    assert expand("02 and 3") == ["02", "03"]
    assert expand("04, 06 and 09") == ["04", "06", "09"]
    text = "see notebooks 01-03, and notebook 9; also 07_gan.ipynb"
    assert [expand(m) for m in NOTEBOOK_REF.findall(text)] == [["01", "02", "03"], ["09"]]
    assert FILE_REF.findall(text) == ["07"]


def test_every_notebook_reference_names_an_existing_notebook():
    missing = []
    for where, text in prose_sources():
        for match in NOTEBOOK_REF.finditer(text):
            absent = [n for n in expand(match.group(1)) if n not in NUMBERS]
            if absent:
                missing.append(f"{where}: {match.group(0)!r} (no notebook {', '.join(absent)})")
        for match in FILE_REF.finditer(text):
            if not any((ROOT / "notebooks").glob(match.group(0))):
                missing.append(f"{where}: {match.group(0)} does not exist")
    assert not missing, "references to notebooks that do not exist:\n" + "\n".join(missing)


def _sections(path: Path) -> set[str]:
    nb = nbformat.read(path, as_version=4)
    return {n for cell in nb.cells if cell.cell_type == "markdown" for n in HEADING.findall(cell.source)}


@pytest.mark.parametrize("path", course_notebooks(), ids=lambda p: p.stem)
def test_every_section_reference_names_an_existing_section(path):
    sections = {p.name[:2]: _sections(p) for p in course_notebooks()}
    nb = nbformat.read(path, as_version=4)
    broken = []
    for i, cell in enumerate(nb.cells):
        for match in SECTION_REF.finditer(cell.source):
            # "notebook 02's Section 4" / "Section 4 of notebook 02": the other notebook's
            sentence = cell.source[max(0, match.start() - 60): match.end() + 60]
            other = NOTEBOOK_REF.search(sentence)
            target = expand(other.group(1))[0] if other else path.name[:2]
            if str(int(match.group(1))) not in {str(int(s)) for s in sections.get(target, set())}:
                broken.append(f"cell {i}: {match.group(0)!r} (notebook {target} has sections "
                              f"{sorted(sections.get(target, set()), key=int)})")
    assert not broken, "\n".join(broken)


# ------------------------------------------------ README table against each notebook

ESTIMATE = re.compile(r"Estimated time[.:]?\**:?\**\s*(.*)", re.I)
ROW = re.compile(r"^\|\s*(\d{2})\s*\|.*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|\s*$", re.M)


def notebook_estimate(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = ESTIMATE.search(cell.source)
            if match:
                return match.group(1)
    raise AssertionError(f"{path.name} has no 'Estimated time' line")


def readme_rows() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Syllabus"):]
    table = table[: table.index("\n## ", 3)]
    return {n: (cpu, gpu) for n, cpu, gpu in ROW.findall(table)}


def test_readme_syllabus_lists_exactly_the_notebooks_that_exist():
    assert set(readme_rows()) == NUMBERS


@pytest.mark.parametrize("path", course_notebooks(), ids=lambda p: p.stem)
def test_readme_minutes_are_the_notebooks_own_estimate(path):
    cpu, gpu = (cell.lstrip("~≈ ") for cell in readme_rows()[path.name[:2]])
    estimate = notebook_estimate(path)
    assert re.search(rf"\b{re.escape(cpu)} CPU minutes?\b", estimate), \
        f"README says {cpu} CPU min; the notebook says: {estimate[:160]}"
    assert re.search(rf"\b{re.escape(gpu)} GPU minutes?\b", estimate), \
        f"README says {gpu} GPU min; the notebook says: {estimate[:160]}"
