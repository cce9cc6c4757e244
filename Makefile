# EdgeFleet developer tasks. `make setup` makes .venv; every other target uses it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
PROTOS := $(wildcard proto/edgefleet/v1/*.proto)

.PHONY: setup demo test stress-test unit lint proto bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	bash deploy/setup.sh --no-system
	@touch $@

demo: setup
	$(VENV)/bin/edgectl demo

proto: setup
	$(PY) -m grpc_tools.protoc -I proto \
	  --python_out=proto --grpc_python_out=proto \
	  --mypy_out=proto --mypy_grpc_out=proto $(PROTOS)

lint: setup
	$(PY) -m ruff check agent controller proto/edgefleet/common tests bench
	$(PY) -m ruff format --check agent controller proto/edgefleet/common tests bench
	$(PY) -m mypy agent/edgefleet controller/edgefleet proto/edgefleet/common
	$(VENV)/bin/lint-imports

# The controller's tests run twice: on SQLite, then on PostgreSQL (a fresh database per
# controller on TEST_PG; they skip with the reason when no PostgreSQL answers there).
TEST_PG ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres

test: lint
	$(PY) -m pytest
	EDGEFLEET_TEST_DB=$(TEST_PG) $(PY) -m pytest tests/controller -q

# The suite while STRESS_CPUS busy-loop processes keep other cores busy, STRESS_RUNS times in a
# row: no test may depend on this machine's speed. STRESS_ARGS picks tests (default: all).
STRESS_CPUS ?= 1
STRESS_RUNS ?= 1
STRESS_ARGS ?=
stress-test: setup
	@busy=""; trap 'kill $$busy 2>/dev/null' EXIT INT TERM; \
	for _ in $$(seq $(STRESS_CPUS)); do $(PY) -c 'while True: pass' & busy="$$busy $$!"; done; \
	for run in $$(seq $(STRESS_RUNS)); do \
	  echo "stress-test: run $$run of $(STRESS_RUNS), $(STRESS_CPUS) busy loop(s)"; \
	  $(PY) -m pytest $(STRESS_ARGS) || exit 1; \
	done

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench/results/*.json
