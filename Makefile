# `make demo` and `make test` do the whole set-up on a fresh machine: a virtual environment in .venv,
# vtrain installed into it (editable), then the demo run or the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# extra pytest arguments, e.g. `make test PYTEST_ARGS="-k vit -x"`
PYTEST_ARGS ?=

.PHONY: install install-dev demo test test-slow test-all lint format bench gpu-check gpu-check-dry-run clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[tiny]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## Train the small ViT on the tiny CIFAR-10-format set on CPU and print its metrics.
demo: install
	$(PY) -m vtrain experiment=vit_cifar10_tiny

## The default test suite (no slow tests); what CI runs.
test: install-dev
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install-dev
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: install-dev
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check vtrain tests scripts
	$(BIN)/ruff format --check vtrain tests scripts
	$(BIN)/hadolint Dockerfile

format: install-dev
	$(BIN)/ruff format vtrain tests scripts
	$(BIN)/ruff check --fix vtrain tests scripts

## Speed and memory (ViT vs timm, DETR, lambda layers vs attention, ...); writes docs/benchmarks.md.
bench: install-dev
	$(PY) scripts/bench.py vit --output docs/benchmarks.md
	$(PY) scripts/bench.py detr --output docs/benchmarks.md
	$(PY) scripts/bench.py lambda --output docs/benchmarks.md
	$(PY) scripts/bench.py igpt --output docs/benchmarks.md
	$(PY) scripts/bench.py ttsr --output docs/benchmarks.md
	$(PY) scripts/bench.py fpt --output docs/benchmarks.md

## On one GPU, within 8 minutes: GPU tests, throughput against timm / transformers, a short bf16 training of
## each tiny experiment; writes the GPU sections of docs/benchmarks.md. The dry run: the same on CPU.
gpu-check: install-dev
	scripts/gpu_check.sh

gpu-check-dry-run: install-dev
	scripts/gpu_check.sh --dry-run

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
