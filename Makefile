# Two commands matter: `make run` and `make test`. Everything else is a step they call.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LINT_PATHS := src tests $(wildcard bench)

.PHONY: install run test test-js lint fmt bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Estuary needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/estuary serve $(ARGS)

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/lint-imports

fmt: install
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

test: lint
	scripts/ensure-chromium.sh
	scripts/ensure-nginx.sh
	$(BIN)/pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-js

# The JavaScript client (clients/js): node --test against a real Estuary from .venv, then tsc.
JS := clients/js
JS_STAMP := $(JS)/node_modules/.installed-stamp

test-js: install $(JS_STAMP)
	cd $(JS) && ESTUARY_PYTHON=$(abspath $(BIN))/python npm test --silent

$(JS_STAMP): $(JS)/package.json $(JS)/package-lock.json
	@command -v npm >/dev/null || { echo "clients/js needs Node >= 18 and npm" >&2; exit 1; }
	# `npm install`, not `npm ci`: the registry this may run against can lack other platforms'
	# optional packages (rollup's), which npm ci insists on; install keeps to the lock file.
	cd $(JS) && npm install --no-audit --no-fund --silent
	touch $@

bench: install
	bench/peers/setup.sh
	$(BIN)/estuary bench $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis clients/js/node_modules
