"""A small real Django project served by fcgiserver in the tests.

Run from this folder (``./manage.py runfcgi ...``), or with this folder on sys.path and
DJANGO_SETTINGS_MODULE=djsite.settings (``fcgiserver djsite.wsgi:application``).
"""
