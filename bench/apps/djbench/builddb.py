"""`python -m djbench.builddb FILE`: the benchmark's SQLite database, made before any server starts."""

from __future__ import annotations

import datetime
import os
import sys

ROWS = 50


def main(argv: list[str]) -> int:
    os.environ["DJBENCH_DB"] = argv[0]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djbench.settings")
    import django

    django.setup()
    from django.db import connection
    from djbench.models import Item

    with connection.schema_editor() as editor:
        editor.create_model(Item)
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    Item.objects.bulk_create(
        Item(name=f"item {i:03d}", price_cents=199 + 37 * i, added=start + datetime.timedelta(hours=i))
        for i in range(ROWS)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
