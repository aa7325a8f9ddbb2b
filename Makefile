# `make demo` and `make test` do all set-up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean install docs

install: $(STAMP)

# torch and torchvision come together from PyPI (pinned in pyproject.toml to a release pair
# that has no local CPU-only wheel on these machines, so pip never mixes the two).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/batchvision demo --output demo-output

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q -ra

# docs/cli.md and docs/output-schema.md are generated from the code (a test fails when stale).
docs: $(STAMP)
	$(BIN)/python -m batchvision.docs

# The full comparison (docs/benchmarks.md); `batchvision bench --smoke` is the quick check.
bench: $(STAMP)
	$(BIN)/batchvision bench --synthetic 1000 --model resnet50 --weights random

clean:
	rm -rf $(VENV) demo-output bench-output .pytest_cache .ruff_cache .mypy_cache
