"""A small stock Django project for the real-app benchmark (bench/django_bench.py).

Two views: `/items/` renders a template from a SQLite query through the ORM, `/status/` is a
static-ish JSON answer. The database is a file named by DJBENCH_DB, built by `builddb`
before the servers start. Everything else is what `django-admin startproject` gives.
"""
