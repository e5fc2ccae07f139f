"""Operator commands for the upload service's storage root.

    python -m handlers.admin [--root DIR] list [--limit N]    recent uploads, newest first
    python -m handlers.admin [--root DIR] takedown ID...      remove the picture (every id holding
                                                               its bytes) and refuse those bytes
    python -m handlers.admin [--root DIR] block FILE...       refuse a file's bytes from now on
    python -m handlers.admin [--root DIR] totals              counts and bytes

The root is UPLOAD_ROOT unless --root is given. A takedown runs the service's own delete
transaction for each id (the same all-or-nothing steps, safe beside running workers), without
the delete key.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from handlers.blocklist import Blocklist
from handlers.journal import Transaction
from handlers.settings import load_settings
from handlers.storage import Record, Storage, sha256_file


def records(store: Storage) -> Iterator[Record]:
    """Every published, not deleted record."""
    for name in sorted(os.listdir(store.meta)):
        record = store.lookup(name.removesuffix(".json"))
        if record is not None:
            yield record


def takedown(store: Storage, pid: str) -> list[str]:
    """Delete ``pid`` and every other id holding the same bytes; block the bytes as uploaded
    and as served. Returns the ids removed (empty when ``pid`` is not published)."""
    record = store.lookup(pid)
    if record is None:
        return []
    blocklist = Blocklist(store.root)
    blocklist.add(record.sha256, f"taken down with {pid}\n")
    blocklist.add(record.served_sha256, f"public copy of {pid}\n")
    removed = []
    for other in list(records(store)):
        hashes = {other.sha256, other.served_sha256}
        if hashes & {record.sha256, record.served_sha256}:
            with Transaction.begin(store) as txn:
                if txn.delete(other):
                    removed.append(other.id)
    return removed


def _list(store: Storage, limit: int) -> None:
    rows = sorted(records(store), key=lambda r: r.created, reverse=True)[:limit]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created))
        kind = "large" if r.large else "public"
        size = f"{r.size:>10,} bytes"
        print(f"{r.id}  {when}  {r.format:4} {r.width}x{r.height}  {size}  {kind}  {r.sha256[:16]}")


def _totals(store: Storage) -> None:
    published = list(records(store))
    day_ago = time.time() - 86400
    blobs = {r.sha256: r.size for r in published}
    medium = store.medium
    print(f"pictures:        {len(published)}")
    print(f"last 24 hours:   {sum(r.created >= day_ago for r in published)}")
    print(f"stored bytes:    {sum(blobs.values()):,} in {len(blobs)} distinct files")
    print(f"large pictures:  {sum(r.large for r in published)}")
    print(f"medium copies:   {len(os.listdir(medium)) if medium.is_dir() else 0}")
    print(f"deleted:         {len(os.listdir(store.gone))}")
    print(f"blocked hashes:  {len(Blocklist(store.root))}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handlers.admin", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="storage root (default: UPLOAD_ROOT)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="recent uploads, newest first")
    listing.add_argument("--limit", type=int, default=50)
    down = commands.add_parser("takedown", help="remove pictures and refuse their bytes")
    down.add_argument("ids", nargs="+")
    block = commands.add_parser("block", help="refuse the bytes of files")
    block.add_argument("files", nargs="+", type=Path)
    commands.add_parser("totals", help="counts and bytes")
    args = parser.parse_args(argv)

    root = args.root.resolve() if args.root else load_settings().root
    store = Storage(root)
    if not store.meta.is_dir():
        print(f"{root} is not an upload storage root", file=sys.stderr)
        return 2
    if args.command == "list":
        _list(store, args.limit)
    elif args.command == "totals":
        _totals(store)
    elif args.command == "block":
        for path in args.files:
            digest = sha256_file(path)
            Blocklist(root).add(digest, f"blocked file {path.name}\n")
            print(f"blocked {digest}  {path}")
    else:
        status = 0
        for pid in args.ids:
            removed = takedown(store, pid)
            if removed:
                print(f"{pid}: taken down ({', '.join(removed)}); its bytes are refused from now on")
            else:
                print(f"{pid}: no such picture", file=sys.stderr)
                status = 1
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
