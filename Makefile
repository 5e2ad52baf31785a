# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow lint bench

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/lightning-sparsity demo

lint: $(BIN)/.installed
	$(BIN)/ruff check lightning_sparsity tests benchmarks examples
	$(BIN)/ruff format --check lightning_sparsity tests benchmarks examples
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -m "not slow"

# the long end-to-end runs (more kill points, FSDP schedules, Ray, packaging): .ci/run too
test-slow: $(BIN)/.installed
	$(BIN)/pytest -q -m slow

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_counter.py
	$(BIN)/python benchmarks/bench_scores.py
	$(BIN)/python benchmarks/bench_train_compute.py
