"""The project's WSGI application, as `django-admin startproject` makes it.

With DJANGO_SITE_CONNECT_AT_IMPORT=1 it also opens the database connection at import, the way
an app that touches the database while loading would: then the connection exists before the
fork.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_site.settings")

application = get_wsgi_application()

if os.environ.get("DJANGO_SITE_CONNECT_AT_IMPORT"):
    from django.db import connection

    connection.ensure_connection()
