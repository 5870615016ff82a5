"""The mechanical rules of notebooks/README.md, checked on every notebooks/NN_*.ipynb.

nbval re-runs the notebooks and compares their outputs; this file checks what it cannot:
the order and the shape of every notebook, and that its stored outputs are clean.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import ROOT, course_notebooks

NOTEBOOKS = course_notebooks()
HEADER = re.compile(r"^# (?P<number>\d\d) · \S.*$")
BADGE = re.compile(r"^\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                   r"\(https://colab\.research\.google\.com/github/\S+/blob/\S+/notebooks/(?P<file>\S+\.ipynb)\)$",
                   re.MULTILINE)
IGNORE_TAG = "nbval-ignore-output"         # nbval markers are cell tags, never comments
IGNORE_REASON = "nbval-ignore-reason"      # cell metadata: why this output may differ
NBVAL_COMMENT = re.compile(r"^\s*#\s*NBVAL_", re.MULTILINE)
TIMING = re.compile(r"\btime\b|perf_counter|timeit")
PLAIN_TQDM = re.compile(r"^\s*from\s+tqdm\s+import\s+(.*,\s*)?tqdm\b|\btqdm\.tqdm\b|^\s*import\s+tqdm\s*$",
                        re.MULTILINE)
PLOT_REPR = re.compile(r"^\[?<matplotlib\.|^\[?Text\(|^\[?<Axes|^<Figure size|^\(array\(")
WARNING = re.compile(r"\b\w+Warning: ")
# Section headings every notebook has, in this order (matched at the start of a heading;
# "exercise" covers "Exercise" and "Exercises"). Headings, not bold labels: they make the
# book's per-page contents and Colab's outline.
SECTIONS = ("learning objectives", "exercise", "key takeaways")


def load(path: Path):
    return nbformat.read(path, as_version=4)


def tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def output_texts(cell):
    """Every text a reader (or nbval) sees in a code cell's stored outputs."""
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            yield output.text
        elif output.output_type == "error":
            yield "\n".join(output.traceback)
        else:
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/"):
                    yield value if isinstance(value, str) else "".join(value)


def headings(nb) -> list[str]:
    return [line.lstrip("#").strip().lower()
            for cell in nb.cells if cell.cell_type == "markdown"
            for line in cell.source.splitlines() if re.match(r"^#{1,6} ", line)]


def runtime_cell_index(nb) -> int:
    return next(i for i, cell in enumerate(nb.cells) if i > 1 and cell.cell_type == "code")


@pytest.fixture(scope="module")
def sync_tool():
    spec = importlib.util.spec_from_file_location("sync_notebooks", ROOT / "tools" / "sync_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


per_notebook = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])


def test_toc_lists_every_notebook_in_number_order():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb"
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(set(numbers)) == len(numbers), f"two notebooks share a number: {numbers}"
    assert numbers == [f"{i:02d}" for i in range(1, len(numbers) + 1)], f"numbers have gaps: {numbers}"
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [c["file"] for part in toc.get("parts", []) for c in part["chapters"]] + \
        [c["file"] for c in toc.get("chapters", [])]
    listed = [f for f in chapters if re.fullmatch(r"notebooks/\d\d_\w+", f)]
    assert listed == [p.relative_to(ROOT).with_suffix("").as_posix() for p in NOTEBOOKS]


@per_notebook
def test_badge_and_setup_cell_are_in_sync_with_config(path, sync_tool, capsys):
    assert sync_tool.main(["--check", str(path)]) == 0, capsys.readouterr().out + " (run `make sync`)"


@per_notebook
def test_header_badge_and_setup_cell(path):
    nb = load(path)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    header = nb.cells[0]
    assert header.cell_type == "markdown"
    title = header.source.splitlines()[0]
    match = HEADER.match(title)
    assert match, f"first line {title!r} is not '# NN · Title'"
    assert match["number"] == path.name[:2], "the title's number is not the file's"
    badge = BADGE.search(header.source)
    assert badge and badge["file"] == path.name, "no Colab badge for this notebook in the first cell"
    overview = header.source[badge.end():].strip()
    assert len(overview.split()) >= 10, "the first cell needs an overview paragraph after the badge"
    setup = nb.cells[1]
    assert setup.cell_type == "code" and "course-setup" in tags(setup)


@per_notebook
def test_sections_in_order(path):
    nb = load(path)
    found = headings(nb)
    positions = []
    for name in SECTIONS:
        hits = [i for i, heading in enumerate(found) if heading.startswith(name)]
        assert hits, f"no '## {name.capitalize()}' markdown heading; headings: {found}"
        positions.append(hits[0])
    assert positions == sorted(positions), f"sections out of order: {SECTIONS}"
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown").lower()
    for item in ("prerequisites", "estimated time"):
        assert item in text, f"the introduction does not state the {item}"


@per_notebook
def test_runtime_cell_picks_every_size_once(path):
    nb = load(path)
    i = runtime_cell_index(nb)
    source = nb.cells[i].source
    assert IGNORE_TAG in tags(nb.cells[i]), f"the runtime cell (versions, devices) is tagged {IGNORE_TAG}"
    assert "runtime.setup(" in source and re.search(r"\bCFG = rt\.pick\(", source), \
        "the first code cell after the setup cell holds rt = runtime.setup() and CFG = rt.pick(...)"
    others = [j for j, cell in enumerate(nb.cells)
              if cell.cell_type == "code" and j != i and ("rt.pick(" in cell.source or "runtime.setup(" in cell.source)]
    assert not others, f"cells {others} pick sizes or set up the runtime again"


@per_notebook
def test_few_cells_ignore_their_output_each_saying_why(path):
    """nbval compares every output but the runtime banner, wall-clock timings and (at most
    one more per notebook) a cell whose metadata says why its output honestly differs
    between machines; markers are cell tags, not ``# NBVAL_...`` comments readers see."""
    nb = load(path)
    runtime = runtime_cell_index(nb)
    others = []
    for j, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not NBVAL_COMMENT.search(cell.source), f"cell {j}: use the {IGNORE_TAG} tag, not a comment"
        assert "nbval-skip" not in tags(cell), f"cell {j} is skipped by nbval"
        if IGNORE_TAG in tags(cell):
            reason = cell.metadata.get(IGNORE_REASON, "")
            assert len(reason.split()) >= 5, f"cell {j} ignores its output without a reason ({IGNORE_REASON})"
            if j != runtime and not TIMING.search(cell.source):
                others.append(j)
        else:
            assert IGNORE_REASON not in cell.metadata, f"cell {j} has a reason but no {IGNORE_TAG} tag"
    assert len(others) <= 1, f"cells {others} ignore their output: print what is stable instead"


@per_notebook
def test_every_code_cell_executed_in_order(path):
    counts = [cell.execution_count for cell in code_cells(load(path))]
    assert counts == list(range(1, len(counts) + 1)), \
        f"execution counts {counts}: run `make outputs NB={path.relative_to(ROOT)}`"


@per_notebook
def test_stored_outputs_are_clean(path):
    nb = load(path)
    for j, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        kinds = [output.output_type for output in cell.outputs]
        assert "error" not in kinds, f"cell {j} stored an error"
        for output in cell.outputs:
            assert "image/svg+xml" not in output.get("data", {}), f"cell {j} stored an SVG (nbval compares it)"
            if output.output_type == "execute_result":  # the value of the cell's last line
                value = output.data.get("text/plain", "")
                assert not PLOT_REPR.search(value), f"cell {j} ends on a plot call: {value[:200]!r}"
        for text in output_texts(cell):
            assert "at 0x" not in text, f"cell {j} prints a memory address: {text[:200]!r}"
            assert "/tmp/ipykernel_" not in text, f"cell {j} prints a kernel path (a warning?): {text[:200]!r}"
            assert not WARNING.search(text), f"cell {j} stored a warning: {text[:200]!r}"


@per_notebook
def test_no_plain_tqdm(path):
    for j, cell in enumerate(code_cells(load(path))):
        assert not PLAIN_TQDM.search(cell.source), f"code cell {j}: use `from tqdm.auto import tqdm`"


@per_notebook
def test_exercises_have_hidden_solutions_checked_by_asserts(path):
    nb = load(path)
    solutions = [j for j, cell in enumerate(nb.cells)
                 if cell.cell_type == "code" and cell.source.startswith("# Solution")]
    assert solutions, "no exercise solution cell ('# Solution')"
    for j in solutions:
        assert "hide-input" in tags(nb.cells[j]), f"solution cell {j} is not tagged hide-input"
        following = [cell for cell in nb.cells[j + 1:] if cell.cell_type == "code"][:1]
        assert following and "assert" in following[0].source, f"no assert cell checks solution cell {j}"
        check = following[0].source
        defined = re.findall(r"^def (check_\w+)\(", check, re.M)
        assert defined, f"the check after solution cell {j} defines no check_* function"
        for name in defined:
            assert re.search(rf"^{name}\(", check, re.M), f"{name} is defined but not called"


@per_notebook
def test_every_exercise_checker_is_fed_wrong_answers_by_a_test(path):
    """tests/test_exercises_NN.py calls every check_* of notebook NN (tests/exercises.py)."""
    from exercises import checker_names
    test_file = ROOT / "tests" / f"test_exercises_{path.name[:2]}.py"
    names = checker_names(path.name[:2])
    assert names, "no check_* functions"
    assert test_file.exists(), f"{test_file.name} is missing"
    text = test_file.read_text()
    untested = [n for n in names if not re.search(rf"\b{n}\(", text)]
    assert not untested, f"{test_file.name} never calls {untested}"


MYST_ONLY = re.compile(r"^\s*(```|~~~|:::)\s*\{[a-z-]+\}|\{(math|eq|ref|numref|doc|term|cite)\}`|^\([\w-]+\)=\s*$",
                       re.MULTILINE)


def display_maths_problems(markdown: str) -> list[str]:
    """Places where ``$$`` display maths does not stand alone between blank lines.

    Jupyter Book (MyST's dollarmath) reads ``$$ ... $$`` as display maths only as a block of
    its own; inside a paragraph the page shows raw TeX, while JupyterLab renders it anyway.
    """
    lines = markdown.split("\n")
    problems, inside = [], False
    for i, line in enumerate(lines):
        if "$$" not in line:
            continue
        stripped = line.strip()
        opens = not inside
        one_line = stripped.startswith("$$") and stripped.endswith("$$") and len(stripped) > 4
        if opens and not stripped.startswith("$$"):
            problems.append(f"line {i + 1}: $$ after text on the same line")
        if not opens and not stripped.endswith("$$"):
            problems.append(f"line {i + 1}: text after the closing $$")
        if (opens or one_line) and i > 0 and lines[i - 1].strip():
            problems.append(f"line {i + 1}: no blank line before $$")
        if (not opens or one_line) and i + 1 < len(lines) and lines[i + 1].strip():
            problems.append(f"line {i + 1}: no blank line after $$")
        if not one_line:
            inside = not inside
    if inside:
        problems.append("a $$ block is never closed")
    return problems


def test_display_maths_checker():
    assert display_maths_problems("Text.\n\n$$\na = b\n$$\n\nMore.") == []
    assert display_maths_problems("Text.\n\n$$a = b$$\n\nMore.") == []
    assert display_maths_problems("Text\n$$\na\n$$\n\nMore.")          # glued to the paragraph
    assert display_maths_problems("Text.\n\n$$a$$\nMore.")              # no blank line after
    assert display_maths_problems("so $$a$$ inline")                      # inside a sentence


@per_notebook
def test_markdown_renders_alike_in_jupyterlab_colab_and_the_book(path):
    """No MyST-only markup (directives, roles, targets: raw code in JupyterLab and Colab) and
    display maths in blocks of its own (raw TeX in the book otherwise)."""
    for j, cell in enumerate(load(path).cells):
        if cell.cell_type != "markdown":
            continue
        myst = MYST_ONLY.search(cell.source)
        assert not myst, f"cell {j}: MyST-only markup {myst.group(0)!r}; use plain Markdown (a > blockquote)"
        problems = display_maths_problems(cell.source)
        assert not problems, f"cell {j}: " + "; ".join(problems)
