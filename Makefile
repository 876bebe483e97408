# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
BFCL   := bfcl-eval==2026.3.23 mpmath==1.3.0

.PHONY: setup demo test test-learning bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	# BFCL pins numpy 1.26 and dozens of API SDKs; its data, API classes and checker need none of them.
	$(BIN)/python -m pip install -q --no-deps $(BFCL)
	touch $(STAMP)

demo: setup
	$(BIN)/envtune demo

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not learning" tests

# The RL learning proof (synthetic task, reward from <= 0.2 to >= 0.8): ~3 min on 2 CPU cores
# (full XLA optimisation: tests/conftest.py's quick-compile default would double its run time)
test-learning: setup
	XLA_FLAGS=--xla_cpu_multi_thread_eigen=true $(BIN)/python -m pytest -q -m learning tests

# CPU-sized speed checks, one JSON line each (GPU runs: see the README's "Measured figures")
bench: setup
	$(BIN)/python benchmarks/env_speed.py
	$(BIN)/envtune bench generate --preset tiny --random-weights --batch 2
	$(BIN)/envtune bench train --preset tiny --random-weights --batch 2 --seq-len 64

clean:
	rm -rf $(VENV) runs out
