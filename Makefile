# chinwag: `make demo` then `make test` on a fresh machine.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: setup demo test test-all bench lint clean

setup: $(STAMP)

# torch first (the pinned CPU wheel), then the project; the stamp makes re-runs instant.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,interop]"
	touch $(STAMP)

demo: setup
	$(BIN)/chinwag quickstart --out runs/quickstart

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/generate.py --presets small --int8 --repeats 3
	$(BIN)/python benchmarks/serve_load.py --clients 1,8,32 --duration 20

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
