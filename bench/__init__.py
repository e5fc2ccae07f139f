"""Benchmark harness behind `make bench`: fcgiserver against uWSGI and flup, behind lighttpd."""
