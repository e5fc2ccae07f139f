from __future__ import annotations

from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=80)
    price_cents = models.IntegerField()
    added = models.DateTimeField()

    class Meta:
        app_label = "djbench"
        ordering = ("id",)
