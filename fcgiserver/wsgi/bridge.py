"""The PEP 3333 bridge: FastCGI params in, a WSGI call, a CGI response out.

The bridge knows nothing of records or sockets. It writes the response to a Channel:
``send(data, last)`` carries STDOUT bytes (the worker's Request, request.py, wraps them in
records; ``last`` also ends the request, so a small response goes out in a single write)
and ``send_stderr`` carries ``wsgi.errors`` text.

Whatever the Channel raises (the peer aborted, the peer went away) stops the response:
the app's iterable is closed and the exception goes on to the worker, which decides what
the connection does next.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, Protocol
from urllib.parse import unquote_to_bytes

from fcgiserver.protocol import Role
from fcgiserver.protocol.accel import load_compiled
from fcgiserver.spec import WSGIApplication
from fcgiserver.wsgi.input_stream import WSGIInput
from fcgiserver.wsgi.response import ResponseHead

log = logging.getLogger("fcgiserver.wsgi")


FILE_BLOCK = 64 * 1024
# Body pieces of a list or tuple response are gathered up to this size before a write:
# they are already in memory, so gathering costs nothing and saves system calls.
GATHER_LIMIT = 64 * 1024

ERROR_BODY = b"Internal Server Error\n"
_ERROR_HEAD = (
    b"Status: 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n\r\n" % len(ERROR_BODY)
)
_ROLE_NAMES = {Role.RESPONDER: "RESPONDER", Role.AUTHORIZER: "AUTHORIZER", Role.FILTER: "FILTER"}
_EMPTY = b""


class Channel(Protocol):
    def send(self, data: bytes, last: bool) -> None: ...

    def send_stderr(self, data: bytes) -> None: ...


def simple_response(status: str, body: bytes, head: bool = False) -> bytes:
    """A complete CGI response for answers the server gives without calling the app
    (`head`: for a HEAD request, without the body)."""
    return b"Status: %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s" % (
        status.encode("latin-1"), len(body), b"" if head else body)


# -- environ ------------------------------------------------------------------------------

class ErrorStream:
    """``wsgi.errors``: whole lines go to FCGI_STDERR and to the error log."""

    __slots__ = ("_channel", "_pending")

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._pending = ""

    def write(self, s: str) -> int:
        if type(s) is not str:
            raise TypeError(f"wsgi.errors.write() takes str, not {type(s).__name__}")
        text = self._pending + s
        cut = text.rfind("\n") + 1
        self._pending = text[cut:]
        if cut:
            self._emit(text[:cut])
        return len(s)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            text, self._pending = self._pending, ""
            self._emit(text + "\n")

    def _emit(self, text: str) -> None:
        for line in text.splitlines():
            log.error("app: %s", line)
        # The log has the text; a peer that is gone cannot take it, and the app's own
        # output path will find that out.
        with contextlib.suppress(Exception):
            self._channel.send_stderr(text.encode("utf-8", "backslashreplace"))


class FileWrapper:
    """``wsgi.file_wrapper``: a file-like object read in blocks."""

    __slots__ = ("blksize", "filelike")

    def __init__(self, filelike: IO[bytes], blksize: int = FILE_BLOCK) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        size = self.blksize
        if size < FILE_BLOCK and _is_regular_file(self.filelike):
            # A regular file holds all its bytes already, so a larger read holds back nothing
            # (PEP 3333), and every block costs a write and a check on the peer. Django's
            # FileResponse asks for 4 KiB. Pipes and sockets keep the size they asked for.
            size = FILE_BLOCK
        while True:
            block = read(size)
            if not block:
                return
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def _is_regular_file(filelike: object) -> bool:
    fileno = getattr(filelike, "fileno", None)
    if fileno is None:
        return False
    try:
        return stat.S_ISREG(os.fstat(fileno()).st_mode)
    except (OSError, ValueError):  # io.UnsupportedOperation (BytesIO), a closed file
        return False


def _is_on(value: str) -> bool:
    return value.lower() in ("on", "1", "yes", "true")


def request_uri(env: Mapping[str, Any]) -> str:
    """The URI the request was made for, as logs and the status page show it: REQUEST_URI,
    which every front tested sends, else rebuilt from SCRIPT_NAME, PATH_INFO and the query.
    (Routing wants the decoded path instead: status.request_path.)"""
    uri: str = env.get("REQUEST_URI", "")
    if uri:
        return uri
    query: str = env.get("QUERY_STRING", "")
    path: str = env.get("SCRIPT_NAME", "") + env.get("PATH_INFO", "")
    return path + "?" + query if query else path


def _uri_path(uri: str) -> str:
    """The percent-decoded path of REQUEST_URI, as a PEP 3333 (latin-1) string."""
    path = uri.partition("?")[0]
    if "%" not in path:
        return path
    return unquote_to_bytes(path).decode("latin-1")


def fix_script_name(env: dict[str, Any], script_name: str | None) -> None:
    """Sets SCRIPT_NAME and PATH_INFO.

    With a configured mount prefix the path comes from REQUEST_URI, ignoring what the
    front computed. Otherwise the front's values stand, except for the lighttpd "/"
    mount without fix-root-scriptname, which puts a one-segment path in SCRIPT_NAME,
    and for a rewritten URL (see mount_from_uri).
    """
    if script_name is not None:
        uri = env.get("REQUEST_URI")
        path = _uri_path(uri) if uri is not None else env.get("SCRIPT_NAME", "") + env.get("PATH_INFO", "")
        prefix = script_name.rstrip("/")
        if path == prefix or path.startswith(prefix + "/"):
            env["SCRIPT_NAME"] = prefix
            env["PATH_INFO"] = path[len(prefix):]
        else:
            # Outside the mount: serve it from the root rather than invent a path.
            env["SCRIPT_NAME"] = ""
            env["PATH_INFO"] = path
        return
    script = env.setdefault("SCRIPT_NAME", "")
    if env.get("PATH_INFO"):
        if script and not env.get("REQUEST_URI", script).startswith(script):
            mount_from_uri(env, script)
        return
    env["PATH_INFO"] = ""
    uri = env.get("REQUEST_URI")
    if script and uri is not None:
        raw = uri.partition("?")[0]
        if script == raw or script == _uri_path(uri):
            env["SCRIPT_NAME"] = ""
            env["PATH_INFO"] = script


def mount_from_uri(env: dict[str, Any], script: str) -> None:
    """SCRIPT_NAME for a front that rewrote the URL to a script path.

    The browser asked for REQUEST_URI, the front passed SCRIPT_NAME (which that path does
    not start with) and PATH_INFO: the mount the browser sees is the part of the path before
    PATH_INFO (/x/y rewritten to /site.fcgi/x/y: ""; /app/x/y to /site.fcgi/x/y: "/app").
    A rewrite that changed more than a prefix leaves no mount to find: the app is at the root.
    """
    path = _uri_path(env["REQUEST_URI"])
    if path.startswith(script):
        return  # no rewrite: only the percent-encoding differed
    path_info = env["PATH_INFO"]
    mount = path[:len(path) - len(path_info)]
    if not path.endswith(path_info) or mount.endswith("/"):
        mount = ""
    env["SCRIPT_NAME"] = mount


def build_environ_pure(
    params: dict[str, str],
    role: Role,
    wsgi_input: WSGIInput,
    errors: ErrorStream,
    script_name: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """The WSGI environ; `params` becomes it (the caller hands it over)."""
    env: dict[str, Any] = params
    for key, value in extra:
        env.setdefault(key, value)
    https = env.get("HTTPS")
    if https is not None:
        scheme = "https" if _is_on(https) else "http"
    else:
        scheme = env.get("REQUEST_SCHEME", "http")
        if scheme != "https":
            scheme = "http"
    # Every front sends these: one subset test (in C) instead of a lookup each.
    if not env.keys() >= _CGI_NAMES:
        for key, default in _CGI_DEFAULTS:
            if key not in env:
                env[key] = default
        if "SERVER_PORT" not in env:
            env["SERVER_PORT"] = "80" if scheme == "http" else "443"
    if script_name is None and env.get("PATH_INFO") and not env.get("SCRIPT_NAME"):
        env["SCRIPT_NAME"] = ""  # the usual request: the front's split stands
    else:
        fix_script_name(env, script_name)
    # PEP 3333: the body's length and type are CONTENT_*, never HTTP_CONTENT_* (lighttpd,
    # nginx and Caddy pass the request headers as such too).
    # (Membership tests: cheaper than pop() calls for the usual request, which has neither.)
    if "HTTP_CONTENT_LENGTH" in env:
        del env["HTTP_CONTENT_LENGTH"]  # noqa: RUF051
    if "HTTP_CONTENT_TYPE" in env:
        content_type = env.pop("HTTP_CONTENT_TYPE")
        env.setdefault("CONTENT_TYPE", content_type)
    # One update() for what is the same in every request, then what is not.
    env.update(_WSGI_CONSTANTS)
    env["FCGI_ROLE"] = _ROLE_NAMES[role]
    env["wsgi.url_scheme"] = scheme
    env["wsgi.input"] = wsgi_input
    env["wsgi.errors"] = errors
    return env


_CGI_DEFAULTS = (("REQUEST_METHOD", "GET"), ("QUERY_STRING", ""), ("SERVER_NAME", "localhost"),
                 ("SERVER_PROTOCOL", "HTTP/1.0"))
_CGI_NAMES = frozenset([*(key for key, _default in _CGI_DEFAULTS), "SERVER_PORT"])
_WSGI_CONSTANTS: dict[str, Any] = {
    "wsgi.version": (1, 0),
    "wsgi.input_terminated": True,
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    "wsgi.file_wrapper": FileWrapper,
}

# The compiled twin (wsgi/_bridge.c) takes the usual request in C and hands the rest back to
# the function above, which stays the truth (tests/test_bridge_compiled.py compares them).
_compiled = load_compiled("fcgiserver.wsgi._bridge")
build_environ: Callable[..., dict[str, Any]] = build_environ_pure
if _compiled is not None:
    _compiled.bind_environ(build_environ_pure, fix_script_name, _is_on, _WSGI_CONSTANTS, _ROLE_NAMES)
    build_environ = _compiled.build_environ


# -- the call -----------------------------------------------------------------------------

class _Stop(Exception):
    """Raised into the app by write() once the channel has failed."""


class _Call(ResponseHead):
    """One app call: start_response, write() and the body loop share this state (made by
    _new_call())."""

    __slots__ = ("channel", "errors", "failure", "head", "remaining")

    channel: Channel
    # Text the app left without a newline still goes out before the request ends.
    errors: ErrorStream | None
    failure: BaseException | None
    remaining: int | None
    # HEAD: the head as the app made it (Content-Length included), never a body byte
    # (HAProxy answers 502 to a HEAD response with a body).
    head: bool

    def emit(self, data: bytes, last: bool) -> None:
        """Sends body bytes, with the header block in front of the first ones."""
        if self.failure is not None:
            raise _Stop from self.failure
        if not self.sent:
            if not self.started:
                raise RuntimeError("the app sent body bytes before calling start_response")
            self.sent = True
            remaining = 0 if self.head else self.content_length
            if remaining is not None:
                if len(data) > remaining:
                    data = data[:remaining]
                self.remaining = remaining - len(data)
            data = self.block + data
        elif self.remaining is not None:
            # PEP 3333: never send more than the app's own Content-Length.
            data = data[:self.remaining]
            self.remaining -= len(data)
            if not data and not last:
                return
        errors = self.errors
        if last and errors is not None and errors._pending:
            errors.flush()
        try:
            self.channel.send(data, last)
        except BaseException as exc:
            self.failure = exc
            raise

    def emit_error(self) -> None:
        """The 500 for an app that failed before sending anything."""
        self.sent = True
        if self.errors is not None:
            self.errors.flush()
        try:
            self.channel.send(_ERROR_HEAD if self.head else _ERROR_HEAD + ERROR_BODY, True)
        except BaseException as exc:
            self.failure = exc
            raise

    def write(self, data: bytes) -> None:
        """The write() callable start_response returns (for legacy apps)."""
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if data:
            self.emit(data, False)


_new = object.__new__


def _new_call(channel: Channel, errors: object, head: bool) -> _Call:
    """A _Call. A function rather than _Call(...): calling a class with an __init__ enters
    the interpreter loop again, a cost paid per request (ResponseHead.__init__ is inlined
    here for the same reason)."""
    call = _new(_Call)
    call.started = False
    call.sent = False
    call.status = ""
    call.block = b""
    call.content_length = None
    call.channel = channel
    call.errors = errors if type(errors) is ErrorStream else None
    call.failure = None
    call.remaining = None
    call.head = head
    return call


def run_app(app: WSGIApplication, environ: dict[str, Any], channel: Channel) -> bool:
    """Calls the app and streams its response to `channel`.

    Returns True when the response is complete and the request ended, False when the app
    failed after the headers went out (the request cannot be completed: the caller closes
    the connection). Channel failures propagate after the app's iterable is closed.
    """
    call = _new_call(channel, environ.get("wsgi.errors"), environ.get("REQUEST_METHOD") == "HEAD")
    result: Iterable[bytes] | None = None
    try:
        result = app(environ, call.start_response)
        if type(result) is list:
            if len(result) == 1 and type(result[0]) is bytes:
                call.emit(result[0], True)  # the usual small response: one write in all
            else:
                _send_gathered(call, result)
        elif type(result) is tuple:
            _send_gathered(call, result)
        else:
            chunks = iter(result)
            if type(chunks) in _BUILT:
                # Django's HttpResponse, among others: an iterator over a list it already holds.
                _send_gathered(call, chunks)
            else:
                _send_streamed(call, chunks)
        return True
    except BaseException as exc:
        if call.failure is not None:
            raise call.failure from None
        if not isinstance(exc, Exception):
            raise
        log.exception("error in app: %s %s", environ.get("REQUEST_METHOD"), environ.get("REQUEST_URI", ""))
        if call.sent:
            return False
        call.emit_error()
        return True
    finally:
        # A list has no close(): skip the attribute lookup for the most common response.
        if result is not None and type(result) is not list:
            _close(result)
        errors = call.errors
        if errors is not None and errors._pending:
            errors.flush()


# Iterators over a list or tuple: every piece exists already, so gathering them holds back
# nothing the app is still computing (PEP 3333 forbids only that), and spares a write and a
# check on the peer per piece. A generator, or any other iterator, is streamed.
_BUILT: frozenset[type] = frozenset({type(iter([])), type(iter(()))})


def _send_gathered(call: _Call, result: Iterable[bytes]) -> None:
    pending: list[bytes] = []
    size = 0
    for chunk in result:
        if type(chunk) is not bytes:
            raise TypeError(f"the app yielded {type(chunk).__name__}, not bytes")
        if chunk:
            if size and size + len(chunk) > GATHER_LIMIT:
                call.emit(_EMPTY.join(pending), False)
                pending = []
                size = 0
            pending.append(chunk)
            size += len(chunk)
    call.emit(pending[0] if len(pending) == 1 else _EMPTY.join(pending), True)


def _send_streamed(call: _Call, result: Iterable[bytes]) -> None:
    # Each piece goes out as soon as the app produced it (PEP 3333 forbids holding one
    # back while the next is computed); the end of the request follows on its own.
    for chunk in result:
        if type(chunk) is not bytes:
            raise TypeError(f"the app yielded {type(chunk).__name__}, not bytes")
        if chunk:
            call.emit(chunk, False)
    call.emit(_EMPTY, True)


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        log.exception("error in the close() of the app's response")
