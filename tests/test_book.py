"""The book: its configuration, a clean offline build, and its pages in a browser.

The build renders the outputs stored in the notebooks (no execution), with warnings as
errors, like ``make book``. The browser tests open every page in headless Chromium and
check what a reader sees: all maths typeset and no raw TeX, ``$`` or ``**`` left in the
prose (every page); on notebook 01's page, the figures and the Colab button.
A screenshot of that page is kept in ``artifacts/`` (git-ignored; CI uploads it).
"""
from __future__ import annotations

import base64
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
import yaml

from conftest import ROOT, course_notebooks, load_config, run_browser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAGE = "notebooks/01_probability"
ARTIFACTS = ROOT / "artifacts"


class Elements(HTMLParser):
    """Collects the tags of an HTML document as ``(tag, attributes)`` pairs."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, {k: v or "" for k, v in attrs}))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def tags(self, name: str) -> list[dict[str, str]]:
        return [attrs for tag, attrs in self.found if tag == name]


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def colab_url(config: dict, notebook: str) -> str:
    repo = config["repository"]
    slug = urlsplit(repo["url"]).path.strip("/")
    base = config["launch_buttons"]["colab_url"].rstrip("/")
    return f"{base}/github/{slug}/blob/{repo['branch']}/{notebook}.ipynb"


def png_outputs(notebook: Path) -> int:
    """How many PNG figures the notebook's stored outputs hold (what the page must show)."""
    nb = nbformat.read(notebook, as_version=4)
    hidden = {"remove-output", "remove-cell"}
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code" and not hidden & set(cell.metadata.get("tags", []))
        for output in cell.outputs
    )


# ---------------------------------------------------------------- configuration (fast)

def test_config_builds_offline_with_vendored_mathjax_and_colab_buttons():
    config = load_config()
    sphinx = config["sphinx"]["config"]
    assert sphinx["html_static_path"] == ["_mathjax"]
    assert sphinx["mathjax_path"] == "mathjax/tex-mml-chtml.js"
    assert not [url for url in sphinx["nb_ipywidgets_js"] if "//" in url], "widget JS from a CDN"
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["launch_buttons"]["thebe"] is False, "thebe loads from a CDN"
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", config["repository"]["url"])
    assert config["execute"]["execute_notebooks"] == "force"
    assert config["only_build_toc_files"] is True


def test_toc_root_is_the_landing_page_and_every_entry_exists():
    files = toc_files()
    assert files[0] == "intro"
    missing = [f for f in files if not any((ROOT / f).with_suffix(s).is_file() for s in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"
    assert len(files) == len(set(files)), "_toc.yml lists a file twice"


def test_landing_page_syllabus_links_every_notebook_in_order():
    intro = (ROOT / "intro.md").read_text()
    linked = re.findall(r"\]\((notebooks/\d\d_\w+\.ipynb)\)", intro)
    expected = [nb.relative_to(ROOT).as_posix() for nb in course_notebooks()]
    assert linked == expected


# Folders that appear beside the book and must never be read into it: `make bench`'s venvs, a
# learner's own venv under any name, caches, checkpoints, installed-package trees.
NOT_THE_BOOK = (
    ".venv/lib/python3.11/site-packages/pkg/README.md", ".venv-torch/share/doc.md",
    ".venv-dynamax/lib/python3.11/site-packages/dynamax/README.md", ".venv-anything/y.ipynb",
    "venv/lib/python3.12/site-packages/pkg/README.md", "my-venv/z.md", "venv/notebook.ipynb",
    "env/lib/python3.13/site-packages/pkg/README.md", ".cache/npm-mathjax/node_modules/mathjax/README.md",
    "notebooks/.ipynb_checkpoints/01_probability-checkpoint.ipynb", ".git/description.md",
    ".github/PULL_REQUEST_TEMPLATE.md", "bench/README.md", "data/README.md", "stray.md",
)


def sources_read(srcdir: Path) -> set[str]:
    """The documents Jupyter Book's Sphinx would read from ``srcdir`` under this _config.yml.

    Jupyter Book's own conversion of the config, sphinx-external-toc's ``only_build_toc_files``
    step (it adds every source file outside the toc to ``exclude_patterns``, but its search skips
    hidden folders) and Sphinx's own file discovery, run on ``srcdir`` without building.
    """
    from jupyter_book.config import yaml_to_sphinx
    from sphinx.util.matching import get_matching_files
    from sphinx_external_toc.events import parse_toc_to_env

    class Config(dict):
        def __getattr__(self, name):
            return self[name]

    sphinx = yaml_to_sphinx(load_config())[0]
    assert sphinx["external_toc_exclude_missing"] is True
    suffixes = (".md", ".ipynb", ".rst")
    config = Config(external_toc_path="_toc.yml", master_doc="index", source_suffix=dict.fromkeys(suffixes),
                    exclude_patterns=sphinx["exclude_patterns"], external_toc_exclude_missing=True)
    app = type("App", (), {"srcdir": str(srcdir), "config": config})()
    parse_toc_to_env(app, config)
    return {path for path in get_matching_files(srcdir, ("**",), config["exclude_patterns"])
            if path.endswith(suffixes)}


def test_book_reads_only_the_toc_files_whatever_else_lies_beside_them(tmp_path):
    """A venv (hidden, by any name), a cache or a stray page beside the book is never read."""
    (tmp_path / "_toc.yml").write_text((ROOT / "_toc.yml").read_text())
    expected = set()
    for name in toc_files():
        source = next((ROOT / name).with_suffix(s) for s in (".md", ".ipynb")
                      if (ROOT / name).with_suffix(s).is_file())
        expected.add(source.relative_to(ROOT).as_posix())
    for path in expected | set(NOT_THE_BOOK):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("# a page\n")
    read = sources_read(tmp_path)
    assert read == expected, f"read beyond the toc: {sorted(read - expected)}; not read: {sorted(expected - read)}"


def test_exclude_patterns_alone_keep_venvs_and_hidden_folders_out():
    """Without the toc step (whose search skips hidden folders), by rule rather than by name."""
    from jupyter_book.config import yaml_to_sphinx
    from sphinx.util.matching import Matcher

    excluded = Matcher(yaml_to_sphinx(load_config())[0]["exclude_patterns"])
    # stray.md matches no pattern: the toc step above is what keeps a stray page out
    kept = [path for path in NOT_THE_BOOK if path != "stray.md"
            and not any(excluded("/".join(path.split("/")[:i + 1])) for i in range(path.count("/") + 1))]
    assert not kept, f"read into the book: {kept}"
    for name in toc_files():
        assert not excluded(name + ".md") and not excluded(name + ".ipynb"), f"{name} excluded"


# ---------------------------------------------------------------- the build (slow)

@pytest.mark.slow
def test_book_builds_clean_offline(book):
    assert book.returncode == 0, f"jupyter-book build failed:\n{book.log[-6000:]}"
    warnings = [line for line in book.log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings)
    for notebook in course_notebooks():
        page = book.html / "notebooks" / f"{notebook.stem}.html"
        assert page.is_file(), f"no page for {notebook.name}"
    for vendored in ("mathjax/tex-mml-chtml.js", "widgets/require.js", "widgets/html-manager/embed-amd.js"):
        assert (book.html / "_static" / vendored).is_file(), f"{vendored} is not in the site"
    # Offline: every script and stylesheet of every page is served from the site itself.
    for page in [book.html / "index.html", *sorted((book.html / "notebooks").glob("*.html"))]:
        elements = Elements(page.read_text())
        remote = [a["src"] for a in elements.tags("script") if a.get("src", "").startswith(("http:", "https:", "//"))]
        remote += [a["href"] for a in elements.tags("link")
                   if "stylesheet" in a.get("rel", "") and a["href"].startswith(("http:", "https:", "//"))]
        assert not remote, f"{page.name} loads from the network: {remote}"


class VisibleProse(HTMLParser):
    """The text a reader sees as prose: everything outside code, scripts, cell outputs and
    the maths MathJax typeset (``mjx-container``). TeX that MathJax did not typeset, a
    ``$`` left by a formula the Markdown parser did not recognise, or ``**`` left by bold
    markup that broke with it, all end up here."""

    SKIP_TAGS = {"script", "style", "pre", "code", "mjx-container", "svg", "noscript", "kbd"}
    SKIP_CLASSES = {"cell_output", "output"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skipping: tuple[str, int] | None = None     # (tag, nesting depth)
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if self._skipping:
            name, depth = self._skipping
            if tag == name:
                self._skipping = (name, depth + 1)
            return
        classes = set((dict(attrs).get("class") or "").split())
        if tag in self.SKIP_TAGS or classes & self.SKIP_CLASSES:
            self._skipping = (tag, 1)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if self._skipping and tag == self._skipping[0]:
            name, depth = self._skipping
            self._skipping = (name, depth - 1) if depth > 1 else None

    def handle_data(self, data):
        if not self._skipping and data.strip():
            self.chunks.append(data)

    def leftovers(self) -> list[str]:
        """Pieces of prose that hold ``$``, a TeX command or ``**``, with some context."""
        text = " ".join(" ".join(self.chunks).split())
        found = []
        for match in RAW_TEX.finditer(text):
            found.append(text[max(0, match.start() - 50): match.end() + 50])
        return found


RAW_TEX = re.compile(r"\$|\\[A-Za-z]+|\*\*|\\[()\[\]]")


def site_pages(book) -> list[Path]:
    """The landing page and every notebook's page."""
    return [book.html / "index.html",
            *[book.html / "notebooks" / f"{nb.stem}.html" for nb in course_notebooks()]]


@pytest.fixture(scope="module")
def rendered(book):
    """Each page as headless Chromium renders it (after MathJax has run), dumped once."""
    assert book.returncode == 0, f"jupyter-book build failed:\n{book.log[-6000:]}"
    cache: dict[Path, str] = {}

    def dom(page: Path) -> str:
        if page not in cache:
            start = time.perf_counter()
            cache[page] = run_browser(["--virtual-time-budget=10000", "--dump-dom", page.as_uri()]).stdout
            print(f"\nchromium --dump-dom {page.name}: {time.perf_counter() - start:.1f} s")
        return cache[page]
    return dom


@pytest.fixture(scope="module")
def page_dom(book, rendered) -> tuple[Path, str]:
    """Notebook 01's page as headless Chromium renders it."""
    page = book.html / f"{PAGE}.html"
    return page, rendered(page)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["index", *[nb.stem for nb in course_notebooks()]])
def test_every_page_typesets_all_its_maths_and_shows_no_raw_tex(book, rendered, name):
    page = book.html / ("index.html" if name == "index" else f"notebooks/{name}.html")
    assert page.is_file(), f"no page {page.name}"
    dom = rendered(page)
    formulas = len(re.findall(r'class="math notranslate nohighlight"', page.read_text()))
    typeset = len(re.findall(r"<mjx-container\b", dom))
    assert typeset >= formulas, f"MathJax typeset {typeset} of {formulas} formulas"
    assert "<mjx-merror" not in dom, "MathJax reported a TeX error on the page"
    left = VisibleProse(dom).leftovers()
    assert not left, f"{len(left)} pieces of raw TeX, $ or ** in the prose of {page.name}:\n" + \
        "\n".join(f"  ...{piece}..." for piece in left[:10])


def test_raw_tex_detector_finds_what_a_broken_page_shows():
    """The detector itself: maths and code pass, the leftovers of broken markup do not."""
    good = ('<p>A <mjx-container>x$</mjx-container> and <code>a**2</code></p>'
            '<div class="cell_output docutils container"><pre>$ \\alpha</pre><div>**</div></div>'
            '<p>plain prose, 5 &lt; 6</p>')
    assert VisibleProse(good).leftovers() == []
    for broken in ('<p>$$ W \\in \\mathbb{R}^{K}$$</p>', '<p>an $x$ inline</p>',
                   '<p>then **bold** text</p>', '<p>\\(x\\)</p>'):
        assert VisibleProse(broken).leftovers(), broken


@pytest.mark.slow
def test_notebook01_page_shows_its_figures(page_dom):
    page, dom = page_dom
    figures = []
    for attrs in Elements(dom).tags("img"):
        src = attrs.get("src", "")
        if src.startswith("data:image/png;base64,"):
            data = base64.b64decode(src.split(",", 1)[1])
        elif "_images/" in src:
            path = (page.parent / unquote(urlsplit(src).path)).resolve() if not src.startswith("file:") \
                else Path(unquote(urlsplit(src).path))
            assert path.is_file(), f"the page shows a missing image: {src}"
            data = path.read_bytes()
        else:
            continue
        assert data.startswith(PNG_SIGNATURE), f"not a PNG: {src[:80]}"
        figures.append(src)
    expected = png_outputs(ROOT / f"{PAGE}.ipynb")
    assert expected > 0, "notebook 01 stores no figure"
    assert len(figures) == expected, f"{len(figures)} PNG figures on the page, {expected} in the notebook"


@pytest.mark.slow
def test_notebook01_page_has_a_colab_button_for_this_repository(page_dom):
    _, dom = page_dom
    expected = colab_url(load_config(), PAGE)
    hrefs = [attrs.get("href", "") for attrs in Elements(dom).tags("a")]
    assert expected in hrefs, f"no link to {expected}; Colab links: {[h for h in hrefs if 'colab' in h]}"


@pytest.mark.slow
def test_notebook01_page_screenshot(book):
    """Keeps artifacts/book_01_probability.png, and checks it is a full-size PNG."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "book_01_probability.png"
    shot.unlink(missing_ok=True)
    page = book.html / f"{PAGE}.html"
    run_browser(["--virtual-time-budget=10000", f"--screenshot={shot}", page.as_uri()])
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 900)
