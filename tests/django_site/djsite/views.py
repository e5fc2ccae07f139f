"""Views that show what Django made of the environ: generated URLs and an upload."""

from __future__ import annotations

import hashlib
import os
from html import escape

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.templatetags.static import static
from django.urls import reverse

UPLOAD_FORM = """<!doctype html>
<title>upload</title>
<form method="post" enctype="multipart/form-data" action="{action}">
<input type="hidden" name="csrfmiddlewaretoken" value="{token}">
<input type="file" name="file"><input type="text" name="note"><button>send</button>
</form>
"""


def links(request: HttpRequest, name: str = "") -> JsonResponse:
    upload = reverse("upload")
    return JsonResponse({
        "upload": upload,
        "upload_absolute": request.build_absolute_uri(upload),
        "here_absolute": request.build_absolute_uri(),
        "unicode": reverse("unicode", args=["x y"]),
        "admin": reverse("admin:index"),
        "static": static("site.css"),
        "path": request.path,
        "path_info": request.path_info,
        "script_name": request.META.get("SCRIPT_NAME"),
        "name": name,
    })


def upload(request: HttpRequest) -> HttpResponse:
    """CSRF-protected (the middleware): GET gives the form, POST the file's hash."""
    if request.method != "POST":
        action = escape(reverse("upload"))
        return HttpResponse(UPLOAD_FORM.format(action=action, token=escape(get_token(request))))
    received = request.FILES["file"]
    digest = hashlib.sha256()
    for chunk in received.chunks():
        digest.update(chunk)
    return JsonResponse({"name": received.name, "size": received.size, "sha256": digest.hexdigest(),
                         "note": request.POST.get("note", "")})


def query(request: HttpRequest) -> JsonResponse:
    """Reads the database: the connection Django opens lazily, in the worker."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 40 + 2")
        (value,) = cursor.fetchone()
    return JsonResponse({"pid": os.getpid(), "value": value})
