# Every target installs what it needs, so a fresh clone works with `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: all setup system-deps run demo test test-pure lint bench soak clean

all: test

# setup.py builds the compiled protocol accelerator (optional: without gcc and Python's
# headers the install goes on with the pure-Python code).
$(VENV)/.stamp: pyproject.toml setup.py fcgiserver/protocol/_speedups.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $@

system-deps:
	PYTHON=$(PYTHON) bash scripts/install-system-deps.sh

# System packages first: the compiler and headers must be there when the venv installs.
setup: system-deps $(VENV)/.stamp

run: setup
	bash scripts/run-stack.sh $(PORT)

demo: $(VENV)/.stamp
	mkdir -p var/run
	$(VENV)/bin/fcgiserver --bind unix:var/run/demo.sock --workers 2 fcgiserver.demo:application

test: setup
	$(PY) -bb -m pytest $(PYTEST_ARGS)

# The protocol, worker and bridge tests again on the pure-Python code, the reference the
# compiled accelerator is held to (the whole suite: make test PYTEST_ARGS=--pure).
PURE_TESTS := tests/test_protocol_connection.py tests/test_protocol_fuzz.py tests/test_protocol_params.py \
	tests/test_protocol_records.py tests/test_request_path.py tests/test_speedups.py tests/test_worker.py \
	tests/test_wsgi.py tests/test_lighttpd.py
test-pure: setup
	$(PY) -bb -m pytest --pure $(PURE_TESTS) $(PYTEST_ARGS)

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check fcgiserver handlers tests bench
	$(VENV)/bin/mypy --strict fcgiserver handlers

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench

soak: setup
	$(PY) -bb -m pytest -m soak $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info .mypy_cache .ruff_cache .pytest_cache
