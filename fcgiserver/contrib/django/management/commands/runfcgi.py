"""``manage.py runfcgi``: Django's FastCGI command of old, served by fcgiserver."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.servers.basehttp import get_internal_wsgi_application
from django.db import connections

from fcgiserver.config import ConfigError
from fcgiserver.contrib.django.options import USAGE, UsageError, plan
from fcgiserver.contrib.django.run import run
from fcgiserver.spec import EXIT_USAGE


class Command(BaseCommand):
    help = "Serves the project over FastCGI with fcgiserver; takes the options of Django's old runfcgi."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("words", nargs="*", metavar="option=value", help="see `runfcgi help`")

    def handle(self, *args: Any, **options: Any) -> None:
        words: list[str] = options["words"]
        if words == ["help"]:
            self.stdout.write(USAGE)
            return
        try:
            what = plan(words)
        except UsageError as exc:
            raise CommandError(f"{exc}\n\n{USAGE}", returncode=EXIT_USAGE) from None
        for warning in what.warnings:
            self.stderr.write(f"warning: {warning}")
        # settings.WSGI_APPLICATION, as runserver finds it (a project's own wsgi.py may wrap
        # Django's handler in middleware).
        application = get_internal_wsgi_application()
        # Workers are forked from this process: none may share a database connection with it.
        connections.close_all()
        try:
            code = run(what, application)
        except ConfigError as exc:
            raise CommandError(f"{exc}\n\n{USAGE}", returncode=EXIT_USAGE) from None
        if code:
            raise CommandError(f"fcgiserver stopped with exit code {code}", returncode=code)
