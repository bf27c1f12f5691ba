# The two front-door commands are `make dev` and `make test`; each does its own set-up.
SHELL := /bin/bash
PY ?= python3
UV := $(PY) -m uv
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test setup jars registry compose tools lint typecheck unit bench-ingress bench-orders clean

dev: setup jars
	$(BIN)/sluice dev $(if $(DATA_DIR),--data-dir $(DATA_DIR),) $(ARGS)

# SLUICE_REQUIRE_COMPOSE: the compose tests fail, not skip, without the Compose built below.
test: setup jars registry compose tools lint typecheck
	SLUICE_REQUIRE_COMPOSE=1 $(BIN)/pytest $(PYTEST_ARGS)

# Python environment from the lock file (uv itself comes from the package index once).
setup: $(VENV)/.synced
$(VENV)/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || $(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --extra dev
	@touch $@

# Apache Kafka's jars and the Elasticsearch distribution, resolved by Maven into the
# cache (skipped once present).
jars: setup
	$(BIN)/python -m devstack.fetch kafka elasticsearch

# Apicurio Registry, the real schema registry the registry-mode tests run against (only
# the tests need it, so `make dev` does not fetch it).
registry: setup
	$(BIN)/python -m devstack.fetch registry

# Docker Compose v2 for tests/test_compose.py, built once from its Go module into the
# cache with the machine's Go (about 4.5 minutes cold; skipped once present).
compose: setup
	$(BIN)/python -m devstack.fetch compose

# Operator tools the tests also exercise (kcat; Debian's Chromium for the dashboard's
# browser test, driven by Playwright); best effort, they need root and apt.
tools:
	@command -v kcat >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq kcat >/dev/null) \
	      || echo "warning: could not install kcat; its test will be skipped"; \
	  else echo "note: kcat not installed; its test will be skipped"; fi; }
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the dashboard's browser test will be skipped"; \
	  else echo "note: chromium not installed (needs root and apt); the dashboard's browser test will be skipped"; fi; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

bench-ingress: setup jars
	$(BIN)/python -m bench.ingress

bench-orders: setup jars
	$(BIN)/python -m bench.orders

clean:
	rm -rf $(VENV) .data .mypy_cache .ruff_cache .pytest_cache
