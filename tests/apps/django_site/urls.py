import json
import os

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path


def query(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 40 + 2")
        (value,) = cursor.fetchone()
    return HttpResponse(json.dumps({"pid": os.getpid(), "value": value}), content_type="application/json")


urlpatterns = [path("", query)]
