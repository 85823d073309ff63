# fedpress: two commands on a fresh machine.
#   make run   -> sets up .venv, installs, runs the default experiment
#   make test  -> sets up the same .venv and runs the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# On the project's machines the original dataset files lie in ../shared/datasets.
ifneq ($(wildcard ../shared/datasets),)
export FEDPRESS_MIRROR ?= $(abspath ../shared/datasets)
endif

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m fedpress.demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_wire.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
