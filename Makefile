# Two commands do all set-up on a fresh machine:
#   make demo   daemon with the simulator + a short CIL-SPL training run on the bundled N-MNIST samples
#   make test   lint, protocol drift check and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/data/nmnist-small
# One thread per process: the daemon and the trainer share two cores (see README, "Threads").
THREADS := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1

.PHONY: setup demo test lint proto bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(THREADS) $(BIN)/chiploop train --method cil-bptt --data $(DATA) --out runs/demo --epochs 10 --overwrite

lint: setup
	$(BIN)/ruff check .
	$(BIN)/python -m chiploop_server.protogen --check

test: lint
	$(THREADS) $(BIN)/python -m pytest -q -rs

proto: setup
	$(BIN)/python -m chiploop_server.protogen

bench: setup
	$(THREADS) $(BIN)/python benchmarks/simulator.py
	$(THREADS) $(BIN)/python benchmarks/transport.py
	$(THREADS) $(BIN)/python benchmarks/training.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
