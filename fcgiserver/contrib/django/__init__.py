"""A Django app: add ``"fcgiserver.contrib.django"`` to INSTALLED_APPS for ``manage.py runfcgi``.

The command takes the syntax of the ``runfcgi`` Django shipped until 1.8 (flup's options,
``./manage.py runfcgi method=prefork socket=/path/site.sock pidfile=site.pid``) and serves
the project's WSGI application with fcgiserver. Django itself is the project's dependency,
not fcgiserver's.
"""
