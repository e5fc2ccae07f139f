# Every target installs what it needs, so a fresh clone works with `make run` or `make test`.
# `make run` installs only what running needs (the server, the upload service, lighttpd);
# `make test` adds the test and dev tools and every program the tests start.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8080
PYTEST_ARGS ?=
UPLOAD_DIST := packaging/fcgiserver-upload

.PHONY: all setup setup-run system-deps system-deps-run run demo test test-pure test-ceph lint bench soak dist clean

all: test

# The runtime: both distributions of this repository, editable, and their dependencies. setup.py
# builds the compiled accelerators (protocol, scoreboard, accepted connections) (optional: without gcc and Python's headers the
# install goes on with the pure-Python code).
$(VENV)/.stamp-run: pyproject.toml setup.py fcgiserver/protocol/_speedups.c fcgiserver/shm/_slotstore.c fcgiserver/net/_conn.c fcgiserver/wsgi/_bridge.c $(UPLOAD_DIST)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e . -e $(UPLOAD_DIST)
	touch $@

# Everything the tests, the linters and `make dist` need on top.
$(VENV)/.stamp: $(VENV)/.stamp-run
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $@

system-deps-run:
	PYTHON=$(PYTHON) bash scripts/install-system-deps.sh run

system-deps:
	PYTHON=$(PYTHON) bash scripts/install-system-deps.sh test

# System packages first: the compiler and headers must be there when the venv installs.
setup-run: system-deps-run $(VENV)/.stamp-run

setup: system-deps $(VENV)/.stamp

run: setup-run
	bash scripts/run-stack.sh $(PORT)

demo: $(VENV)/.stamp-run
	mkdir -p var/run
	$(VENV)/bin/fcgiserver --bind unix:var/run/demo.sock --workers 2 fcgiserver.demo:application

test: setup
	$(PY) -bb -m pytest $(PYTEST_ARGS)

# The protocol, worker, bridge, scoreboard and connection tests again on the pure-Python code,
# the reference the compiled accelerators are held to (the whole suite: make test PYTEST_ARGS=--pure).
PURE_TESTS := tests/test_protocol_connection.py tests/test_protocol_fuzz.py tests/test_protocol_params.py \
	tests/test_protocol_records.py tests/test_request_path.py tests/test_scoreboard.py tests/test_speedups.py \
	tests/test_conn.py tests/test_bridge_compiled.py tests/test_worker.py tests/test_wsgi.py tests/test_lighttpd.py
test-pure: setup
	$(PY) -bb -m pytest --pure $(PURE_TESTS) $(PYTEST_ARGS)

# The S3 suite against a single-node Ceph RGW (Debian's radosgw, the production engine).
test-ceph: setup
	command -v radosgw >/dev/null || apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd
	FCGISERVER_TEST_STORE=ceph $(PY) -bb -m pytest tests/test_s3_scaleout.py $(PYTEST_ARGS)

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check fcgiserver handlers tests bench
	$(VENV)/bin/mypy --strict fcgiserver handlers

# An sdist and a wheel of each distribution: fcgiserver (the server) and fcgiserver-upload
# (the upload service, with its page assets).
dist: $(VENV)/.stamp
	rm -rf dist
	$(PY) -m build --quiet --outdir dist .
	$(PY) -m build --quiet --outdir dist $(UPLOAD_DIST)

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench

soak: setup
	$(PY) -bb -m pytest -m soak $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var build dist *.egg-info $(UPLOAD_DIST)/*.egg-info .mypy_cache .ruff_cache .pytest_cache
