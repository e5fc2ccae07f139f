# Every target installs what it needs, so a fresh clone works with `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8080
PYTEST_ARGS ?=

.PHONY: all setup system-deps run demo test test-ceph lint bench soak clean

all: test

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

setup: $(VENV)/.stamp system-deps

run: setup
	bash scripts/run-stack.sh $(PORT)

demo: $(VENV)/.stamp
	mkdir -p var/run
	$(VENV)/bin/fcgiserver --bind unix:var/run/demo.sock --workers 2 fcgiserver.demo:application

test: setup
	$(PY) -bb -m pytest $(PYTEST_ARGS)

# The S3 suite against a single-node Ceph RGW (Debian's radosgw, the production engine).
test-ceph: setup
	command -v radosgw >/dev/null || apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd
	FCGISERVER_TEST_STORE=ceph $(PY) -bb -m pytest tests/test_s3_scaleout.py $(PYTEST_ARGS)

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
