# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv when missing and installs the CPU build of torch first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made
	@# training 2x slower (docs/results/train_throughput.md).
	$(BIN)/edgeprune prune vgg16 --mode flops --target 0.5 --seed 0 --out runs/demo --force
	OMP_WAIT_POLICY=PASSIVE $(BIN)/edgeprune train runs/demo --data data/cifar10-mini.tar.gz --epochs 3 --seed 0

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest

clean:
	rm -rf runs .pytest_cache

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow"
