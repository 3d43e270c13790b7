# Caliper: `make run` serves on the embedded SQLite database; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev run migrate test test-narrow fuzz lint bench bench-smoke lock proto clean docker-smoke

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# caliper-client (./client: the `caliper` command and the Python client) goes in with the service.
$(VENV)/.installed: pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ./client -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ./client -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

migrate: install
	$(BIN)/caliper db upgrade

run: migrate
	@echo "caliper: the command is $(BIN)/caliper (or run \`. $(BIN)/activate\` first, then \`caliper\`)"
	$(BIN)/caliper serve

test: dev
	$(BIN)/pytest
	@echo "caliper: screenshots of each web report page kind are in $${CALIPER_SCREENSHOTS:-var/screenshots}"

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

# schemathesis over every operation, 50 examples each (make test runs 5): no 5xx, every response valid; on
# SQLite, then on PostgreSQL where CALIPER_TEST_POSTGRES_URL names one (its refusals differ).
fuzz: dev
	CALIPER_FUZZ_EXAMPLES=50 $(BIN)/pytest tests/test_schema_fuzz.py
	if [ -n "$$CALIPER_TEST_POSTGRES_URL" ]; then \
	  CALIPER_FUZZ_EXAMPLES=50 CALIPER_FUZZ_DATABASE_URL="$$CALIPER_TEST_POSTGRES_URL" $(BIN)/pytest tests/test_schema_fuzz.py; \
	fi

# The image built and used as a user would (docker/smoke.sh): the image alone on SQLite, then compose with
# Postgres. It starts a Docker daemon where none answers and builds the base images from Debian's packages
# where they cannot be pulled.
docker-smoke:
	bash docker/smoke.sh

lint: dev
	$(BIN)/ruff check app client tests bench migrations models
	$(BIN)/ruff format --check app client tests bench migrations models
	$(BIN)/mypy
	$(BIN)/lint-imports

$(VENV)/.installed-bench: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/pip install --quiet -e ./client -e '.[dev,bench]'
	touch $@

BENCHES = evaluate classification http bodies calibrate gate ood sdm models serving load scale conformal xmc memory report

# Every benchmark at tiny sizes (bench/timing.py `sized`), so one that no longer runs fails CI; figures mean nothing.
bench-smoke: $(VENV)/.installed-bench
	@for b in $(BENCHES); do \
	  start=$$(date +%s); \
	  CALIPER_BENCH_SMOKE=1 timeout 300 $(BIN)/python -m bench.$$b > $(VENV)/bench-smoke.log 2>&1 \
	    || { tail -40 $(VENV)/bench-smoke.log; echo "bench-smoke: bench.$$b failed"; exit 1; }; \
	  echo "bench-smoke: bench.$$b ran in $$(( $$(date +%s) - start )) s"; \
	done

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.evaluate
	$(BIN)/python -m bench.classification
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.bodies
	$(BIN)/python -m bench.calibrate
	$(BIN)/python -m bench.gate
	$(BIN)/python -m bench.ood
	$(BIN)/python -m bench.sdm
	$(BIN)/python -m bench.models
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.load
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.conformal
	$(BIN)/python -m bench.xmc
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.report

# requirements.lock: the runtime dependencies pinned with hashes, for the image. caliper-client is built here
# (it is ./client, not on an index) and left out of the lock: the image installs it from the source tree.
lock: dev
	rm -rf $(VENV)/client-wheel && $(BIN)/pip wheel --quiet --no-deps -w $(VENV)/client-wheel ./client
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --strip-extras --generate-hashes \
	  --no-emit-index-url --no-emit-find-links --find-links $(VENV)/client-wheel --unsafe-package caliper-client \
	  --output-file requirements.lock pyproject.toml

# app/grpc_api's messages from its .proto (the generated code is committed; tests/test_grpc.py checks it is current).
proto: dev
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. app/grpc_api/open_inference.proto

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
