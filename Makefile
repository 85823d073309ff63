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

.PHONY: run codecs test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,flower,tensorboard]'
	touch $(STAMP)

# The default experiment: FedAvg against Top-k 1% + fp16 with error feedback on MNIST, with
# the dense fp32 downlink and with a hidden-state Top-k 1% + fp16 downlink (both directions compressed).
RUNS := runs/quickstart
TOPK_EF := --set algorithm.name=topk_ef --set algorithm.ratio=0.01 --set algorithm.precision=fp16
run: $(STAMP)
	$(BIN)/fedpress run configs/quickstart.toml --overwrite --out $(RUNS)/fedavg --set name=fedavg
	$(BIN)/fedpress run configs/quickstart.toml --overwrite --out $(RUNS)/topk_ef --set name=topk_ef_1pct_fp16 $(TOPK_EF)
	$(BIN)/fedpress run configs/quickstart.toml --overwrite --out $(RUNS)/topk_ef_down \
	    --set name=topk_ef_1pct_fp16_down_topk_1pct_fp16 $(TOPK_EF) \
	    --set downlink.codec=top_k+fp16 --set downlink.ratio=0.01 --set downlink.init=seeded
	$(BIN)/fedpress compare $(RUNS)/fedavg $(RUNS)/topk_ef $(RUNS)/topk_ef_down --target-accuracy 0.97

codecs: $(STAMP)
	$(BIN)/python -m fedpress.demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_wire.py
	$(BIN)/python benchmarks/bench_sim.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
