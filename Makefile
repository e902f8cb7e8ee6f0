# poolgrad: every target creates the virtualenv and installs what it needs first.
#   make serve   the server on the embedded in-memory store (http://127.0.0.1:8000)
#   make test    lint, type-check and run every test (installs the Debian programs it drives)
#   make bench   the benchmarks: engine vs PyTorch and the seed's loop; HTTP vs engine + echo
#                and the load test (32 clients, every answer checked)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# EpyNN (the reference semantics, GPL-3.0, tests only) pins versions that do not resolve on
# Python 3.11: it is installed without its dependencies, which the dev extra lists instead.
EPYNN := epynn==1.2.13

.PHONY: serve test test-deps lint typecheck pytest bench lock clean

serve: $(VENV)/.serve
	$(BIN)/poolgrad-server

test: lint typecheck pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev test-deps
	$(BIN)/python -m pytest

# Programs the tests drive that pip cannot install, Debian packages: headless Chromium renders
# /docs offline (tests/service/test_docs_browser.py); a real redis-server and HAProxy run the
# Redis store, fault and scale-out tests, which fail, never skip, without them. Installed with
# apt-get when missing (as root), else a message naming what to install.
TEST_PACKAGES := chromium redis-server haproxy
test-deps:
	@missing=""; for tool in $(TEST_PACKAGES); do \
	  PATH="$$PATH:/usr/sbin" command -v $$tool >/dev/null \
	    || { [ $$tool = chromium ] && command -v chromium-browser >/dev/null; } \
	    || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (Debian packages) for the tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "make test needs$$missing: install Debian's package(s) (apt-get install$$missing)" \
	      "or run make as root on Debian" >&2; exit 1; \
	  fi; \
	fi

bench: $(VENV)/.dev
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.service
	$(BIN)/python -m bench.v2
	$(BIN)/python -m bench.store
	$(BIN)/python -m bench.load

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Two distributions from this one tree: the SDK (sdk/pyproject.toml, `poolgrad`) and the server
# (pyproject.toml, `poolgrad-server`, which depends on the SDK): installed together, so the
# server's `poolgrad` requirement is met by this checkout's SDK, never by an index.
$(VENV)/.serve: pyproject.toml sdk/pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet --constraint constraints.txt --editable ./sdk --editable .
	touch $@

$(VENV)/.dev: pyproject.toml sdk/pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet --constraint constraints.txt --editable ./sdk --editable '.[dev]'
	$(PIP) install --quiet --no-deps $(EPYNN)
	touch $@ $(VENV)/.serve

# Re-pin constraints.txt from a fresh environment with every extra installed. Local version
# labels (`torch==2.13.0+cpu`, from a wheel on this machine's disk) are cut: no public index
# serves them, and `torch==2.13.0` matches the local build here and the public one elsewhere
# (tests/test_packaging.py checks the file).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet ./sdk '.[dev]'
	.lock-venv/bin/python -m pip install --quiet --no-deps $(EPYNN)
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable \
	  | grep -v '^poolgrad' | sed -E 's/^([^=]+==[^+]+)\+.*$$/\1/'; } > constraints.new \
	  && mv constraints.new constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
