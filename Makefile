# Two entry points (see README Quick start): `make demo` and `make test`.
# Both create .venv when it is missing. Every pip install here goes through the constraints file:
# pyproject.toml says what histovl needs (lower bounds), the constraints file pins the exact versions
# of the development machines and CI (torch 2.14.1 / torchvision 0.29.1 from their local disk, and
# the rest as tested), so nothing pulls a newer torch here while users keep theirs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints/dev-machines.txt
PIP := $(BIN)/python -m pip install -q -c $(CONSTRAINTS)
STAMP := $(VENV)/.histovl-installed
TEST_STAMP := $(VENV)/.histovl-test-installed

.PHONY: demo test lint typecheck unit clean venv

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (or run: make PY=python3 ...)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The demo's slide step needs OpenSlide (slides) and `histovl serve` shows its outputs (serve).
$(STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) -e '.[slides,serve]'
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m histovl.demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
