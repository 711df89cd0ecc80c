# smri — set-up, tests and the experiments. `make test` and `make experiments` need nothing else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned here (not in setup.cfg) so CI machines take their local CPU wheel;
# on a GPU machine the same pin from PyPI is the CUDA build. Override: make TORCH=torch
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test test-all lint bench clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)  ## create .venv and install smri with its test tools

test: $(STAMP)  ## the default test run (CPU, under 5 minutes on 2 cores)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-all: $(STAMP)  ## every test, slow ones included (GPU tests skip without a GPU)
	$(BIN)/python -m pytest -q

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check smri tests benchmarks
	$(BIN)/ruff format --check smri tests benchmarks

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
