"""The image upload service: a plain WSGI app (``handlers.upload:application``)."""
