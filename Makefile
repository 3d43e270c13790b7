# Caliper: `make run` serves on the embedded SQLite database; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev run migrate test test-narrow fuzz lint bench clean

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

# The numeric-core tests again on another code path: numpy's SIMD dispatch narrowed to its x86-64-v2
# baseline (no AVX2/AVX-512 kernels) and onnxruntime on 1, then 2 intra-op threads. A test that holds on
# one CPU's kernels only fails here.
NARROW_DISPATCH := X86_V3 X86_V4 AVX512_ICL AVX512_SPR
CORE_TESTS := tests/test_dispatch.py tests/test_core_golden.py tests/test_core_oracle.py tests/test_core_properties.py \
	tests/test_softmax_collapse.py tests/test_calibration_core.py tests/test_sdm_core.py tests/test_mahalanobis.py

test-narrow: dev
	for threads in 1 2; do \
	  NPY_DISABLE_CPU_FEATURES="$(NARROW_DISPATCH)" CALIPER_INTRA_OP_THREADS=$$threads $(BIN)/pytest $(CORE_TESTS) || exit 1; \
	done

# schemathesis over every operation, 50 examples each (make test runs 5): no 5xx, every response valid.
fuzz: dev
	CALIPER_FUZZ_EXAMPLES=50 $(BIN)/pytest tests/test_schema_fuzz.py

lint: dev
	$(BIN)/ruff check app tests bench migrations models
	$(BIN)/ruff format --check app tests bench migrations models
	$(BIN)/mypy
	$(BIN)/lint-imports

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
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.load

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
