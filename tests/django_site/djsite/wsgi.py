import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")

application = get_wsgi_application()

# DJSITE_CONNECT_AT_IMPORT=1: open the database connection while loading, as an app that touches
# the database at import would; the connection then exists before the fork.
if os.environ.get("DJSITE_CONNECT_AT_IMPORT"):
    from django.db import connection

    connection.ensure_connection()
