"""The two pages the benchmark times."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from djbench.models import Item

PAGE_SIZE = 20


def items(request: HttpRequest) -> HttpResponse:
    """A template rendered from a query: what most pages of a Django site do."""
    rows = Item.objects.all()[:PAGE_SIZE]
    return render(request, "djbench/items.html", {"items": rows, "title": "Items"})


def status(request: HttpRequest) -> JsonResponse:
    """Static-ish JSON: Django's request/response cycle with no database or template."""
    return JsonResponse({"service": "djbench", "ok": True, "page_size": PAGE_SIZE,
                         "path": request.path})
