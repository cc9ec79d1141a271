# Two entry points for a fresh machine: `make demo` (the whole pipeline, locally, on the demo data) and
# `make test` (the test suite). Both create the virtual environment first when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: demo test lint typecheck e2e-containers compile lock

# The library and, beside it, the demo renderer (demo/: not part of the library or its images).
$(STAMP): requirements/lock.txt pyproject.toml demo/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements/lock.txt
	$(PIP) install -q --no-deps -e . -e demo
	touch $(STAMP)

# Extra arguments for the run: make demo ARGS="training.epochs=1 --phases phase1 phase2 phase6"
demo: $(STAMP)
	$(BIN)/streetvision run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Lint and format check (ruff; settings in pyproject.toml). `$(BIN)/ruff format .` applies the format.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Type check (mypy; settings and the checked folders in pyproject.toml).
typecheck: $(STAMP)
	$(BIN)/mypy

# Build both images and run the whole demo pipeline inside them (kfp.local.DockerRunner); see images/e2e.sh.
e2e-containers: $(STAMP)
	PY=$(BIN)/python bash images/e2e.sh

# Refresh the committed default pipeline YAML after changing components or defaults.
compile: $(STAMP)
	$(BIN)/streetvision compile -o pipelines/streetvision_stage1.yaml

# Re-resolve requirements/dev.in into requirements/lock.txt in a scratch environment.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q -r requirements/dev.in
	{ sed -n '1,2p' requirements/lock.txt; .lock-venv/bin/python -m pip freeze; } > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt && rm -rf .lock-venv
