# poolgrad: every target creates the virtualenv and installs what it needs first.
#   make serve   the server on the embedded in-memory store (http://127.0.0.1:8000)
#   make test    lint, type-check and run every test (installs redis-server and haproxy first)
#   make bench   the benchmarks: engine vs PyTorch and the seed's loop; HTTP vs engine + echo

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# EpyNN (the reference semantics, GPL-3.0, tests only) pins versions that do not resolve on
# Python 3.11: it is installed without its dependencies, which the dev extra lists instead.
EPYNN := epynn==1.2.13

.PHONY: serve test test-tools lint typecheck pytest bench lock clean

serve: $(VENV)/.serve
	$(BIN)/poolgrad-server

test: test-tools lint typecheck pytest

# The tests run a real redis-server and HAProxy (Debian's packages): installed when missing
# (as root, with apt-get), else a message saying how. The tests fail, never skip, without them.
TEST_TOOLS := redis-server haproxy
test-tools:
	@missing=""; for tool in $(TEST_TOOLS); do \
	  PATH="$$PATH:/usr/sbin" command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (Debian packages)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "make test needs$$missing: install Debian's package(s) (apt-get install$$missing)" \
	      "or run make as root on Debian" >&2; exit 1; \
	  fi; \
	fi

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: test-tools $(VENV)/.dev
	$(BIN)/python -m pytest

bench: $(VENV)/.dev
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.service
	$(BIN)/python -m bench.store

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.serve: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet --constraint constraints.txt --editable '.[server]'
	touch $@

$(VENV)/.dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet --constraint constraints.txt --editable '.[server,dev]'
	$(PIP) install --quiet --no-deps $(EPYNN)
	touch $@ $(VENV)/.serve

# Re-pin constraints.txt from a fresh environment with every extra installed.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet '.[server,dev]'
	.lock-venv/bin/python -m pip install --quiet --no-deps $(EPYNN)
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable \
	  | grep -v '^poolgrad'; } > constraints.new && mv constraints.new constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
