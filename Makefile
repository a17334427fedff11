# Set-up and everyday commands. Each target creates .venv when missing and
# reinstalls only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export QT_QPA_PLATFORM ?= offscreen

.PHONY: demo test data lint bench clean cl-env screenshots

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mea-control demo

# The published data of Isomura et al. 2023 (GPL-3.0, so not in this repository) into
# data/isomura2023, checked by SHA-256, with the figures the tests compare against.
ISOMURA := data/isomura2023

data: $(STAMP)
	$(BIN)/python -m mea_control.fep.published $(ISOMURA)
	cp tests/data/isomura2023_expected.json $(ISOMURA)/expected.json

lint: $(STAMP)
	$(BIN)/ruff check .

# The suite on TEST_WORKERS processes (pytest-xdist; the tests compare device samples,
# not wall-clock time, so a busy machine slows them but does not fail them).
TEST_WORKERS ?= 2

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The README's pictures of the real window: the smoke test under Xvfb (CI=1: it fails
# rather than skips without Xvfb), its screenshots copied to docs/img.
screenshots: $(STAMP)
	CI=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_gui_command.py -k real_window
	mkdir -p docs/img
	cp tests/output/gui_1024x700.png tests/output/gui_1600x1000.png docs/img/

bench: $(STAMP)
	$(BIN)/python benchmarks/loop.py
	$(BIN)/python benchmarks/sim.py
	$(BIN)/python benchmarks/recording.py

clean:
	rm -rf $(VENV) $(CL_VENV) .pytest_cache .ruff_cache .hypothesis

# The real cl-sdk (the simulator of Cortical Labs' cl API: Python >= 3.12, CC BY-NC 4.0) in an
# environment of its own, .venv-cl; tests/test_cl_api.py and benchmarks/cl.py use it when it
# exists. CL_PYTHON: a Python >= 3.12 (default: python3.12, else pyenv's oldest 3.12+).
CL_VENV := .venv-cl
CL_PYTHON ?= python3.12

cl-env: $(CL_VENV)/.installed

$(CL_VENV)/.installed: pyproject.toml
	@py='$(CL_PYTHON)'; \
	$$py -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null || \
	  py=$$(ls -d $$(pyenv root 2>/dev/null)/versions/3.1[2-9]*/bin/python3 2>/dev/null | head -1); \
	test -n "$$py" || { echo "make cl-env: no Python >= 3.12 found; set CL_PYTHON=" >&2; exit 1; }; \
	test -x $(CL_VENV)/bin/python || $$py -m venv $(CL_VENV)
	$(CL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CL_VENV)/bin/python -m pip install --quiet -e '.[cl]'
	touch $@
