"""Command-line parsing shared by ``fcgiserver`` and its subcommands: short usage errors and
OS errors that name the path (or the missing folder) they are about."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import NoReturn

from fcgiserver.spec import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors take two lines: what is wrong, and where help is.

    argparse's own error prints the whole usage first, which for fcgiserver is a screenful
    in front of the one line that matters.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, usage_error_text(self.prog, message))


def usage_error_text(prog: str, message: str) -> str:
    return f"{prog}: error: {message}\n(`{prog} --help` shows every option)\n"


def usage_error(prog: str, message: str) -> int:
    sys.stderr.write(usage_error_text(prog, message))
    return EXIT_USAGE


def os_reason(path: str, exc: OSError) -> str:
    """Why `path` could not be used: the missing folder when that is the cause, else strerror."""
    folder = os.path.dirname(os.path.abspath(path))
    if exc.errno == errno.ENOENT and not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    return exc.strerror or str(exc)


def os_error_text(exc: BaseException) -> str:
    """An error for the log: an OSError about a file names it, and its folder when that is missing."""
    if isinstance(exc, OSError) and isinstance(exc.filename, str):
        return f"{exc.filename}: {os_reason(exc.filename, exc)}"
    return str(exc)
