# Two commands do all the set-up: `make demo` (the gateway with demo providers) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := gateway fhir_profiles auth adapters conformance

.PHONY: demo serve test lint openapi bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/homecare-gateway demo

serve: $(STAMP)
	$(BIN)/homecare-gateway serve

lint: $(STAMP)
	$(BIN)/ruff check $(PACKAGES) tests bench scripts
	$(BIN)/ruff format --check $(PACKAGES) tests bench scripts
	$(BIN)/mypy

test: lint
	$(BIN)/homecare-gateway openapi --check
	$(BIN)/python -m pytest -n auto

openapi: $(STAMP)
	$(BIN)/homecare-gateway openapi

# The gateway side by side with FHIRStarter, Medplum and a raw floor (../shared/peer-bench); ~10 minutes.
bench: $(STAMP)
	$(BIN)/python bench/intake.py --peers --workers 1,2 --connections 16,64 --repeat 2

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
