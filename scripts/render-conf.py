#!/usr/bin/env python3
"""Render a config template: replace each @NAME@ with its value.

nginx has no way to read paths or ports from the environment, so conf/nginx.conf is a
template. A value comes from `--set NAME=VALUE`, else from the environment variable
FCGISERVER_<NAME> (UPLOAD_ROOT is read as is, the name the upload service uses), else from
the defaults of a real install below. STATIC_DIR defaults to the page assets of the upload
service installed for the Python running this script (pip install fcgiserver-upload), else
to those of the source tree beside it. A placeholder with no value is an error, so a
half-rendered file is never written.

    scripts/render-conf.py conf/nginx.conf /etc/nginx/nginx.conf --set PORT=80
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")

DEFAULTS = {
    "HOST": "0.0.0.0",
    "PORT": "80",
    "SOCKET": "/run/fcgiserver/fcgiserver.sock",
    "UPLOAD_ROOT": "/var/lib/fcgiserver/media",
    "LOG_DIR": "/var/log/nginx",
    "RUN_DIR": "/run/nginx",
    "NGINX_USER": "www-data",
    "KEEPALIVE": "2",
}


SOURCE_STATIC_DIR = Path(__file__).resolve().parent.parent / "handlers" / "static"


def static_dir() -> str:
    """The upload service's page assets: as installed for this Python, else in the source tree."""
    try:
        installed = importlib.resources.files("handlers") / "static"
    except ModuleNotFoundError:
        return str(SOURCE_STATIC_DIR)
    # Another distribution may also own a top-level `handlers`: only ours has these files.
    if installed.joinpath("upload.css").is_file():
        return str(installed)
    return str(SOURCE_STATIC_DIR)


def env_value(name: str, environ: Mapping[str, str]) -> str | None:
    key = name if name == "UPLOAD_ROOT" else "FCGISERVER_" + name
    return environ.get(key)


def render(template: str, values: Mapping[str, str], environ: Mapping[str, str]) -> str:
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        value = values.get(name)
        if value is None:
            value = env_value(name, environ)
        if value is None:
            value = static_dir() if name == "STATIC_DIR" else DEFAULTS.get(name)
        if value is None:
            missing.append(name)
            return match.group(0)
        if any(c in value for c in ";{}\n\"'") or (value.strip() != value):
            # Such a value would change the structure of the rendered file, not fill a slot.
            raise ValueError(f"{name}: value {value!r} contains a character not allowed here")
        return value

    out = PLACEHOLDER.sub(substitute, template)
    if missing:
        raise ValueError("no value for: " + ", ".join(sorted(set(missing))))
    return out


def parse_sets(items: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not PLACEHOLDER.fullmatch(f"@{name}@"):
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        values[name] = value
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("template", type=Path)
    parser.add_argument("output", type=Path, help="the rendered file ('-' for standard output)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    try:
        text = render(args.template.read_text(), parse_sets(args.sets), os.environ)
    except (OSError, ValueError) as exc:
        print(f"render-conf: {exc}", file=sys.stderr)
        return 2
    if str(args.output) == "-":
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
