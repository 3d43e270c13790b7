# Caliper: `make run` serves on the embedded SQLite database; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev run migrate test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

migrate: install
	$(BIN)/caliper db upgrade

run: migrate
	$(BIN)/caliper serve

test: dev
	$(BIN)/pytest

lint: dev
	$(BIN)/ruff check app tests bench migrations
	$(BIN)/ruff format --check app tests bench migrations
	$(BIN)/mypy

$(VENV)/.installed-bench: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.evaluate
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.calibrate
	$(BIN)/python -m bench.gate
	$(BIN)/python -m bench.ood
	$(BIN)/python -m bench.sdm

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
