# Two commands do all set-up: `make lab` and `make test` create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.clipedu-installed
NBVAL  := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
# The test rounds run JOBS files at once (pytest-xdist, each file whole on one worker, in the order
# given), each worker's torch on THREADS threads: two notebooks on one thread each keep two cores
# busier than one on two (small models, Python between the steps). JOBS=1 runs them one by one, on
# torch's own thread count.
# A run two notebooks need (the course's mini-CLIP) is trained once: the second waits on its lock.
JOBS    ?= 2
THREADS ?= $(if $(filter 1,$(JOBS)),,1)
PARALLEL := $(if $(filter 1,$(JOBS)),,-n $(JOBS) --dist loadfile --no-loadscope-reorder)
TORCH_THREADS := $(if $(THREADS),OMP_NUM_THREADS=$(THREADS))

.PHONY: venv lab test test-unit test-notebooks bench bench-cpu bench-seeds student test-browser lint clean colab-links test-student site test-site

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with clipedu and everything the notebooks and tests need

# tools/lab.py starts JupyterLab as root too (--allow-root), without a display (prints the address
# instead of opening a browser) and when port 8888 is taken (the next free one). LAB_ARGS go to JupyterLab.
lab: venv  ## open JupyterLab on the notebooks
	$(PY) tools/lab.py notebooks/ $(LAB_ARGS)

# The notebooks' run also leaves each notebook, outputs included, in build/executed/ (notebooks/conftest.py):
# `make site` renders those instead of executing the notebooks again.
EXECUTED := build/executed

test: venv  ## every notebook top to bottom (fast mode) and the unit tests, two files at once
	$(TORCH_THREADS) CLIPEDU_FAST=1 CLIPEDU_SAVE_EXECUTED=$(EXECUTED) $(PY) -m pytest notebooks tests $(NBVAL) $(PARALLEL)

test-unit: venv
	$(TORCH_THREADS) CLIPEDU_FAST=1 $(PY) -m pytest tests $(PARALLEL)

test-notebooks: venv
	$(TORCH_THREADS) CLIPEDU_FAST=1 CLIPEDU_SAVE_EXECUTED=$(EXECUTED) $(PY) -m pytest notebooks $(NBVAL) $(PARALLEL)

site: venv  ## the course as HTML in build/site/ (Jupyter Book), from the notebooks `make test` ran
	$(PY) -c "import jupyter_book" 2>/dev/null || $(PY) -m pip install -e ".[site]"
	$(PY) tools/site.py --executed $(EXECUTED) --out build/site

test-site: venv  ## the built site in headless Chromium: every page, its figures, its links; shots in build/site-shots/
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -e ".[browser]"
	CLIPEDU_BROWSER_TESTS=1 $(PY) -m pytest tests/browser/test_site_browser.py -v

# A second environment with every runtime dependency at its declared floor (pyproject.toml),
# the development tools at whatever pip picks beside them.
PYTHON_MIN ?= $(PYTHON)
VENV_MIN   ?= .venv-min
PY_MIN     := $(VENV_MIN)/bin/python
STAMP_MIN  := $(VENV_MIN)/.clipedu-installed

.PHONY: venv-min
venv-min: $(STAMP_MIN)  ## create .venv-min, every runtime dependency at its floor

$(STAMP_MIN): pyproject.toml tests/floors.py
	test -x $(PY_MIN) || $(PYTHON_MIN) -m venv $(VENV_MIN)
	$(PY_MIN) tests/floors.py requirements > $(VENV_MIN)/floors.txt
	$(PY_MIN) -m pip install -c $(VENV_MIN)/floors.txt -e ".[dev]"
	# Hugging Face datasets (an optional extra) does not work beside numpy's floor; its tests skip here.
	$(PY_MIN) -m pip uninstall -y -q datasets
	touch $(STAMP_MIN)

# The tests of the project's own tools (course files, site, packaging, `make lab`, the GPU round's
# script) read no runtime dependency's API: `make test` runs them, this round leaves them out.
TOOL_TESTS := course site student lab packaging gpu_round
.PHONY: test-min
test-min: $(STAMP_MIN)  ## unit tests and notebooks 00 and 05 with the oldest versions pyproject.toml allows
	$(PY_MIN) tests/floors.py check
	$(TORCH_THREADS) CLIPEDU_FAST=1 $(PY_MIN) -m pytest notebooks/00_*.ipynb notebooks/05_*.ipynb tests $(NBVAL) $(PARALLEL) \
		$(foreach t,$(TOOL_TESTS),--ignore=tests/test_$(t).py)

test-browser: venv  ## the widgets of notebook 05 in JupyterLab + headless Chromium (needs apt's chromium)
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -e ".[browser]"
	CLIPEDU_BROWSER_TESTS=1 $(PY) -m pytest tests/browser/test_widgets_browser.py -v

student:  ## student/: the student versions (solutions replaced by stubs), committed so Colab opens them
	$(PYTHON) tools/course.py student

# The committed student/ as it is; `course.py check` first fails on a stale one (run `make student`).
test-student: venv  ## the student versions under nbval (stubbed exercise cells may raise); NB=00 01 for some
	$(PY) tools/course.py check
	$(TORCH_THREADS) CLIPEDU_FAST=1 $(PY) -m pytest $(if $(NB),$(foreach n,$(NB),student/$(n)_*.ipynb),student) $(NBVAL) $(PARALLEL)

bench: venv  ## speed tables: the model and the loader (never part of the tests)
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_data.py

# CI runs the notebooks in fast mode only; this runs all of them as a laptop does (cpu mode, the
# 1,200-step course model trained afresh), reports each one's time against 5 minutes and the
# assertion that stopped any that failed. About a quarter of an hour on 2 cores.
bench-cpu: venv  ## every notebook in cpu mode from an empty runs folder: times and failed assertions
	$(PY) benchmarks/bench_notebooks.py --mode cpu --fresh

# CI runs every notebook with setup seed 0. A lesson asserts its outcome with a margin, and a margin
# measured on one seed can rest on one trajectory: this runs notebooks (fast mode) with setup seeds
# CI never uses (CLIPEDU_SEED). SEEDS="3 4" for others, NB="11 17" for some notebooks.
SEEDS ?= 1 2
bench-seeds: venv  ## notebooks in fast mode with other setup seeds: each run's time and failed assertion
	$(PY) benchmarks/bench_notebooks.py $(NB) --seeds $(SEEDS)

lint: venv
	$(VENV)/bin/ruff check clipedu tools tests benchmarks

colab-links:  ## badges, install cells and README table from course.toml; REPO=owner/name [BRANCH=b] points them at a fork
	$(PYTHON) tools/course.py $(if $(REPO),set-repo $(REPO) $(if $(BRANCH),--branch $(BRANCH)),sync)
	$(PYTHON) tools/course.py check

clean:
	rm -rf build .pytest_cache
