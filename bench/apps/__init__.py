"""WSGI apps the benchmarks serve; importable as `module:callable` with this folder on PYTHONPATH."""
