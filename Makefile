# Two commands do all the set-up: `make demo` (the gateway with demo providers) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := gateway fhir_profiles auth adapters conformance

AXE_VERSION := 4.14.1
AXE := $(VENV)/npm/node_modules/axe-core/axe.min.js

.PHONY: demo serve test lint openapi bench conformance clean browser-tools mutants

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
	$(BIN)/mypy bench scripts
	$(BIN)/lint-imports --no-cache

# The browser tests drive Debian's chromium (never a browser Playwright downloads) and run axe-core.
# As root the set-up installs what is missing; elsewhere the browser tests skip, saying why (CI=true
# makes that a failure).
browser-tools: $(STAMP)
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "Note: /usr/bin/chromium is missing and this is not root: the browser tests will skip"; \
	  fi; \
	fi
	@if [ ! -f $(AXE) ]; then \
	  if command -v npm >/dev/null; then \
	    npm install --silent --no-save --no-package-lock --no-audit --no-fund --prefix $(VENV)/npm \
	      axe-core@$(AXE_VERSION); \
	  else \
	    echo "Note: npm is missing, so axe-core is: the browser tests will skip"; \
	  fi; \
	fi

test: lint browser-tools
	$(BIN)/homecare-gateway openapi --check
	$(BIN)/python -m pytest -n auto

# Mutation testing with mutmut (docs/mutation-testing.md): hours on 2 cores, never part of `make test`.
# `make mutants GROUP=status` runs one group; MUTANT_CHILDREN mutants run at once (default 1).
MUTANT_CHILDREN ?= 1
mutants: $(STAMP)
	@$(BIN)/python -c 'import mutmut' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[mutation]'
	nice -n 10 $(BIN)/python scripts/mutants.py $(GROUP) --max-children $(MUTANT_CHILDREN)

openapi: $(STAMP)
	$(BIN)/homecare-gateway openapi

# The conformance suite's gateway role against a running `make demo` (start it in another terminal).
# Registers the suite's two trusts and two providers in the demo's database, then runs every test.
CONFORMANCE_DIR := var/conformance
conformance: $(STAMP)
	HOMECARE_DATA_DIR=var/demo $(BIN)/homecare-conformance init-gateway --dir $(CONFORMANCE_DIR) \
		--provider-listen 127.0.0.1:8301 --register --gateway-command $(BIN)/homecare-gateway
	$(BIN)/homecare-conformance run --target http://127.0.0.1:8000 --role gateway \
		--config $(CONFORMANCE_DIR)/conformance.toml --report-dir $(CONFORMANCE_DIR)/reports \
		--waivers conformance/waivers/homecare-gateway.toml

# The gateway side by side with FHIRStarter, Medplum and a raw floor (../shared/peer-bench); ~10 minutes.
bench: $(STAMP)
	$(BIN)/python bench/intake.py --peers --workers 1,2 --connections 16,64 --repeat 2

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis mutants
