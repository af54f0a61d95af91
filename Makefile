# One command per job; each installs what it needs into .venv first.
#   make test       run the test suite (what CI runs)
#   make test-fast  the quick loop (< 2 min): no test marked slow or distributed (processes),
#                   spread over the CPU cores (pytest-xdist)
#   make run        run the default experiment offline, then print how to open MLflow
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SHARED_DATA := $(abspath ../shared/datasets)
# The offline dataset mirror for the tests: $ROBUSTBENCH_LOCAL_DATA_DIR, else ../shared/datasets.
DATA_ENV = ROBUSTBENCH_LOCAL_DATA_DIR=$${ROBUSTBENCH_LOCAL_DATA_DIR:-$(if $(wildcard $(SHARED_DATA)),$(SHARED_DATA),)}

.PHONY: install test test-fast run lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,bench]"
	# adv-lib (the minimum-norm oracle) pins old dependencies: installed without them
	$(PIP) install -q --no-deps adv-lib==0.2.8
	touch $@

test: install
	$(DATA_ENV) $(PY) -m pytest -q --durations=15

test-fast: install
	$(DATA_ENV) $(PY) -m pytest -q -n auto --durations=15 -m "not slow and not distributed"

run: install
	$(PY) -m experiments.run
	@echo
	@echo "Browse the results with:  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/attacks.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs multirun
