"""The PEP 3333 bridge, called in-process with real bytes and a recording channel."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from fcgiserver.protocol import Role
from fcgiserver.wsgi.bridge import (
    ERROR_BODY,
    ErrorStream,
    FileWrapper,
    build_environ,
    fix_script_name,
    request_uri,
    run_app,
)
from fcgiserver.wsgi.input_stream import (
    EMPTY_INPUT,
    NO_BODY,
    BadContentLength,
    RequestBody,
    WSGIInput,
    parse_content_length,
)
from fcgiserver.wsgi.response import InvalidResponse, header_block
from tests.apps import wsgi_apps

Environ = dict[str, Any]


class Recorder:
    """A Channel that keeps what it is given; `fail_after` makes the n-th send fail."""

    def __init__(self, fail_after: int | None = None, error: BaseException | None = None) -> None:
        self.sends: list[tuple[bytes, bool]] = []
        self.stderr: list[bytes] = []
        self.fail_after = fail_after
        self.error = error or BrokenPipeError(32, "Broken pipe")

    def send(self, data: bytes, last: bool) -> None:
        if self.fail_after is not None and len(self.sends) >= self.fail_after:
            raise self.error
        self.sends.append((data, last))

    def send_stderr(self, data: bytes) -> None:
        self.stderr.append(data)

    @property
    def output(self) -> bytes:
        return b"".join(d for d, _ in self.sends)

    @property
    def ended(self) -> bool:
        return bool(self.sends) and self.sends[-1][1]

    @property
    def head(self) -> bytes:
        return self.output.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.output.partition(b"\r\n\r\n")[2]


def make_environ(channel: Recorder, params: dict[str, str] | None = None, body: bytes = b"",
                 role: Role = Role.RESPONDER, script_name: str | None = None,
                 extra: tuple[tuple[str, str], ...] = ()) -> Environ:
    p = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SCRIPT_NAME": "", "REQUEST_URI": "/"}
    p.update(params or {})
    wsgi_input = WSGIInput(io.BytesIO(body), len(body)) if body else EMPTY_INPUT
    return build_environ(p, role, wsgi_input, ErrorStream(channel), script_name, extra)


def call(app: Callable[..., Iterable[bytes]], params: dict[str, str] | None = None,
         channel: Recorder | None = None, body: bytes = b"") -> tuple[Recorder, bool]:
    channel = channel or Recorder()
    completed = run_app(app, make_environ(channel, params, body), channel)
    return channel, completed


class Closing:
    """A response iterable that records close()."""

    def __init__(self, chunks: Iterable[bytes], fail_at: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_at = fail_at
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError(wsgi_apps.SECRET_ERROR_TEXT)
            yield chunk

    def close(self) -> None:
        self.closed += 1


# -- environ ------------------------------------------------------------------------------

def test_environ_has_the_pep_3333_keys_and_str_values() -> None:
    env = make_environ(Recorder(), {"QUERY_STRING": "a=1", "HTTP_X_NAME": "caf\xe9"})
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multiprocess"] is True
    assert env["wsgi.multithread"] is False
    assert env["wsgi.run_once"] is False
    assert env["wsgi.file_wrapper"] is FileWrapper
    assert env["FCGI_ROLE"] == "RESPONDER"
    for key in ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME",
                "SERVER_PORT", "SERVER_PROTOCOL"):
        assert type(env[key]) is str, key
    assert all(type(v) is str for k, v in env.items() if not k.startswith("wsgi."))


@pytest.mark.parametrize(
    ("params", "scheme"),
    [
        ({"HTTPS": "on"}, "https"),
        ({"HTTPS": "ON"}, "https"),
        ({"HTTPS": "1"}, "https"),
        ({"HTTPS": "off"}, "http"),
        ({"HTTPS": ""}, "http"),
        ({"REQUEST_SCHEME": "https"}, "https"),
        ({"REQUEST_SCHEME": "http"}, "http"),
        ({"REQUEST_SCHEME": "javascript"}, "http"),
        ({}, "http"),
    ],
)
def test_url_scheme_follows_https_then_request_scheme(params: dict[str, str], scheme: str) -> None:
    assert make_environ(Recorder(), params)["wsgi.url_scheme"] == scheme


def test_authorizer_role_is_named_in_environ() -> None:
    env = make_environ(Recorder(), role=Role.AUTHORIZER)
    assert env["FCGI_ROLE"] == "AUTHORIZER"
    assert env["wsgi.input"].read() == b""


def test_extra_environ_fills_gaps_but_request_values_win() -> None:
    env = make_environ(Recorder(), {"HTTP_HOST": "real"},
                       extra=(("HTTP_HOST", "fake"), ("DEPLOYMENT", "blue")))
    assert (env["HTTP_HOST"], env["DEPLOYMENT"]) == ("real", "blue")


@pytest.mark.parametrize(
    ("prefix", "uri", "script", "path"),
    [
        ("/app", "/app/photos/1?x=y", "/app", "/photos/1"),
        ("/app", "/app", "/app", ""),
        ("/app", "/app/caf%E9", "/app", "/caf\xe9"),
        # UTF-8 on the wire becomes one latin-1 character per byte (PEP 3333).
        ("/app", "/app/caf%C3%A9", "/app", "/caf\xc3\xa9"),
        ("/app", "/app/a%2Fb", "/app", "/a/b"),
        ("/app", "/application", "", "/application"),
        ("/app", "/other", "", "/other"),
        ("", "/x/y?q", "", "/x/y"),
    ],
)
def test_configured_mount_prefix_splits_request_uri(prefix: str, uri: str, script: str, path: str) -> None:
    env: Environ = {"REQUEST_URI": uri, "SCRIPT_NAME": "/wrong", "PATH_INFO": "/wrong"}
    fix_script_name(env, prefix)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script, path)


def test_auto_mode_trusts_the_fronts_split() -> None:
    env: Environ = {"REQUEST_URI": "/app/x", "SCRIPT_NAME": "/app", "PATH_INFO": "/x"}
    fix_script_name(env, None)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/x")


@pytest.mark.parametrize(
    ("uri", "script", "path_info", "mount"),
    [
        ("/a/b?x=1", "/site.fcgi", "/a/b", ""),
        ("/app/a/b", "/site.fcgi", "/a/b", "/app"),
        ("/caf%C3%A9/a", "/site.fcgi", "/a", "/caf\xc3\xa9"),
        # Only the encoding differs from SCRIPT_NAME: no rewrite.
        ("/caf%C3%A9/a", "/caf\xc3\xa9", "/a", "/caf\xc3\xa9"),
        # A rewrite that changed more than a prefix: no mount to find.
        ("/old/a", "/site.fcgi", "/new/a", ""),
    ],
)
def test_auto_mode_takes_the_mount_of_a_rewritten_url_from_request_uri(
        uri: str, script: str, path_info: str, mount: str) -> None:
    # Real lighttpd rewrites: tests/test_front_environ.py.
    env: Environ = {"REQUEST_URI": uri, "SCRIPT_NAME": script, "PATH_INFO": path_info}
    fix_script_name(env, None)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (mount, path_info)
    env = make_environ(Recorder(), {"REQUEST_URI": uri, "SCRIPT_NAME": script, "PATH_INFO": path_info})
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (mount, path_info)


def test_http_content_headers_become_cgi_names() -> None:
    env = make_environ(Recorder(), {"HTTP_CONTENT_LENGTH": "3", "CONTENT_LENGTH": "3",
                                    "HTTP_CONTENT_TYPE": "text/plain"})
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env
    assert (env["CONTENT_LENGTH"], env["CONTENT_TYPE"]) == ("3", "text/plain")


def test_auto_mode_leaves_a_real_script_name_with_empty_path_info() -> None:
    env: Environ = {"REQUEST_URI": "/app/", "SCRIPT_NAME": "/app", "PATH_INFO": ""}
    fix_script_name(env, None)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "")


# -- wsgi.input ---------------------------------------------------------------------------

def _input(data: bytes, declared: int | None = None, threshold: int = 1 << 20) -> WSGIInput:
    body = RequestBody(len(data) if declared is None else declared, threshold)
    for i in range(0, len(data), 7):
        body.append(data[i:i + 7])
    return body.finish()


def test_input_read_sizes_and_lines() -> None:
    stream = _input(b"line one\nline two\nlast")
    assert stream.read(4) == b"line"
    assert stream.readline() == b" one\n"
    assert stream.readline(4) == b"line"
    assert stream.readline(-1) == b" two\n"
    assert stream.read() == b"last"
    assert stream.read() == b""
    assert stream.readline() == b""


def test_input_readlines_and_iteration() -> None:
    assert _input(b"a\nb\nc").readlines() == [b"a\n", b"b\n", b"c"]
    assert list(_input(b"a\nb\n")) == [b"a\n", b"b\n"]
    assert _input(b"aa\nbb\ncc\n").readlines(3) == [b"aa\n"]


def test_input_never_reads_past_content_length() -> None:
    stream = _input(b"0123456789EXTRA", declared=10)
    assert stream.read(100) == b"0123456789"
    assert stream.read() == b""
    assert _input(b"one\ntwo", declared=5).readline(100) == b"one\n"


def test_body_spools_to_a_file_past_the_threshold() -> None:
    body = RequestBody(5 * 65536, threshold=100_000)
    block = bytes(range(256)) * 256
    for _ in range(5):
        body.append(block)
    assert body.spooled
    assert body.size == 5 * 65536
    stream = body.finish()
    assert stream.read(65536) == block
    assert stream.read() == block * 4
    stream.close()


def test_small_body_stays_in_memory() -> None:
    body = RequestBody(10, threshold=100)
    body.append(b"0123456789")
    assert not body.spooled


def test_short_body_is_reported_incomplete() -> None:
    body = RequestBody(100, threshold=1000)
    body.append(b"x" * 99)
    assert not body.is_complete()
    body.append(b"x")
    assert body.is_complete()
    assert RequestBody(None, 10).is_complete()


def test_the_shared_empty_body_has_no_state_a_request_could_change() -> None:
    NO_BODY.append(b"past the declared length of 0")
    NO_BODY.discard()
    assert (NO_BODY.size, NO_BODY.declared, NO_BODY.is_complete()) == (0, 0, True)
    assert NO_BODY.finish() is EMPTY_INPUT
    with pytest.raises(AttributeError):
        NO_BODY._chunks = [b"x"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["-", "--1", "-1x", "1e3", "+5", " 5", "5_000", "abc", "\u0661", "-\u0661"])
def test_malformed_content_length_is_rejected(value: str) -> None:
    with pytest.raises(BadContentLength):
        parse_content_length(value)


def test_content_length_absent_empty_or_negative_means_undeclared() -> None:
    assert parse_content_length(None) is None
    assert parse_content_length("") is None
    assert parse_content_length("-1") is None  # Caddy, for a chunked body
    assert parse_content_length("0") == 0


# -- the response -------------------------------------------------------------------------

def test_small_list_response_goes_out_in_one_send_that_ends_the_request() -> None:
    channel, completed = call(wsgi_apps.hello)
    assert completed
    assert len(channel.sends) == 1 and channel.sends[0][1]
    assert channel.head == b"Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14"
    assert channel.body == wsgi_apps.HELLO


def test_generator_pieces_are_sent_as_produced() -> None:
    channel = Recorder()
    seen: list[int] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        for i in range(3):
            seen.append(len(channel.sends))
            yield b"piece %d" % i

    call(app, channel=channel)
    # Each piece was out before the next one was asked for.
    assert seen == [0, 1, 2]
    assert [last for _, last in channel.sends] == [False, False, False, True]
    assert channel.body == b"piece 0piece 1piece 2"


@pytest.mark.parametrize("make", [lambda chunks: iter(chunks), lambda chunks: iter(tuple(chunks))],
                         ids=["list_iterator", "tuple_iterator"])
def test_iterator_over_built_pieces_goes_out_in_one_send(
        make: Callable[[list[bytes]], Iterator[bytes]]) -> None:
    # Every piece already exists: nothing is held back while the next one is computed.
    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "9")])
        return make([b"abc", b"", b"defgh", b"ijk"])

    channel, completed = call(app)
    assert completed
    assert channel.sends == [(b"Status: 200 OK\r\nContent-Length: 9\r\n\r\nabcdefghi", True)]


def test_django_response_goes_out_in_one_send_and_is_closed() -> None:
    from django.conf import settings
    from django.core.signals import request_finished

    if not settings.configured:
        settings.configure()
    from django.http import HttpResponse

    finished: list[object] = []

    def on_finished(sender: object, **kwargs: object) -> None:
        finished.append(sender)

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        response = HttpResponse(b"<p>one</p>", content_type="text/html")
        response.write(b"<p>two</p>")
        start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
        return response

    request_finished.connect(on_finished)
    try:
        channel, completed = call(app)
    finally:
        request_finished.disconnect(on_finished)
    assert completed
    assert len(channel.sends) == 1 and channel.ended
    assert channel.body == b"<p>one</p><p>two</p>"
    # Django's close() (request_finished: database connections and the like) still runs.
    assert len(finished) == 1


def test_headers_wait_for_the_first_non_empty_piece() -> None:
    channel = Recorder()

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b""
        assert channel.sends == []
        yield b"x"

    call(app, channel=channel)
    assert channel.sends[0][0].startswith(b"Status: 200 OK\r\n")


def test_empty_body_still_sends_the_head() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("204 No Content", [])
        return []

    channel, _ = call(app)
    assert channel.output == b"Status: 204 No Content\r\n\r\n"
    assert channel.ended


@pytest.mark.parametrize("shape", ["list", "stream", "write"])
def test_head_sends_the_apps_head_and_no_body(shape: str) -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Length", "10")])
        if shape == "write":
            write(b"01234")
            return [b"56789"]
        return [b"0123456789"] if shape == "list" else iter([b"01234", b"56789"])

    channel, completed = call(app, {"REQUEST_METHOD": "HEAD"})
    assert completed and channel.ended
    assert channel.output == b"Status: 200 OK\r\nContent-Length: 10\r\n\r\n"


def test_head_of_an_app_error_is_a_500_without_body() -> None:
    channel, completed = call(wsgi_apps.application, {"PATH_INFO": "/error", "REQUEST_METHOD": "HEAD"})
    assert completed and channel.ended
    assert channel.head.startswith(b"Status: 500 ")
    assert channel.body == b""


def test_write_callable_sends_before_the_returned_body() -> None:
    channel, _ = call(wsgi_apps.application, {"PATH_INFO": "/write"})
    assert channel.body == b"written directly, then returned\n"
    assert channel.sends[0] == (b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nwritten ", False)


def test_never_more_than_the_apps_content_length() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        yield b"abc"
        yield b"defgh"

    channel, _ = call(app)
    assert channel.body == b"abcde"


def test_file_wrapper_streams_the_file_in_blocks_and_closes_it(tmp_path: Any) -> None:
    data = wsgi_apps.pattern(200_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    opened: list[Any] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        fh = open(path, "rb")  # noqa: SIM115 - the wrapper closes it
        opened.append(fh)
        wrapper: type[FileWrapper] = environ["wsgi.file_wrapper"]
        return wrapper(fh, 65536)

    channel, _ = call(app)
    assert channel.body == data
    assert [len(d) for d, _ in channel.sends[1:-1]] == [65536, 65536, 200_000 - 3 * 65536]
    assert opened[0].closed


def test_file_wrapper_reads_a_regular_file_in_large_blocks_whatever_block_size_the_app_asks(
        tmp_path: Any) -> None:
    # Django's FileResponse asks for 4 KiB blocks; the file holds its bytes already.
    data = wsgi_apps.pattern(200_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        wrapper: type[FileWrapper] = environ["wsgi.file_wrapper"]
        return wrapper(open(path, "rb"), 4096)

    channel, _ = call(app)
    assert channel.body == data
    assert [len(d) for d, _ in channel.sends[1:-1]] == [65536, 65536, 200_000 - 3 * 65536]


def test_django_file_response_goes_out_in_large_blocks(tmp_path: Any) -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    from django.http import FileResponse

    data = wsgi_apps.pattern(300_000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        # What Django's WSGIHandler.__call__ does with a FileResponse, minus the URL routing.
        response = FileResponse(open(path, "rb"))  # noqa: SIM115 - the response closes it
        start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
        assert response.block_size == 4096
        response.file_to_stream.close = response.close  # type: ignore[union-attr]
        return environ["wsgi.file_wrapper"](response.file_to_stream, response.block_size)  # type: ignore[no-any-return]

    channel, completed = call(app)
    assert completed and channel.body == data
    assert len(channel.sends) == 1 + 300_000 // 65536 + 1


def test_file_wrapper_reads_a_pipe_in_the_apps_block_size() -> None:
    # A pipe's bytes may still be on their way: a larger read could hold back what came.
    r, w = os.pipe()
    os.write(w, b"x" * 10_000)
    os.close(w)

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [])
        wrapper: type[FileWrapper] = environ["wsgi.file_wrapper"]
        return wrapper(os.fdopen(r, "rb", buffering=0), 4096)

    channel, _ = call(app)
    assert [len(d) for d, _ in channel.sends[1:-1]] == [4096, 10_000 - 2 * 4096]


def test_close_is_called_after_a_complete_response() -> None:
    body = Closing([b"a", b"b"])
    channel, _ = call(lambda e, s: (s("200 OK", []), body)[1])
    assert body.closed == 1 and channel.body == b"ab"


def test_close_is_called_when_the_app_fails_mid_body() -> None:
    body = Closing([b"a", b"b"], fail_at=1)
    channel, completed = call(lambda e, s: (s("200 OK", []), body)[1])
    assert body.closed == 1
    assert not completed and not channel.ended


def test_close_is_called_when_the_peer_is_gone_and_the_error_goes_on() -> None:
    body = Closing([b"a", b"b", b"c"])
    channel = Recorder(fail_after=1)
    with pytest.raises(BrokenPipeError):
        call(lambda e, s: (s("200 OK", []), body)[1], channel=channel)
    assert body.closed == 1


def test_write_after_the_peer_is_gone_keeps_failing_even_if_the_app_swallows_it() -> None:
    attempts: list[str] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("200 OK", [])
        for _ in range(3):
            try:
                write(b"x")
            except Exception as exc:
                attempts.append(type(exc).__name__)
        return [b"end"]

    with pytest.raises(BrokenPipeError):
        call(app, channel=Recorder(fail_after=0))
    assert len(attempts) == 3


def test_app_error_before_the_head_is_a_500_with_the_traceback_only_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="fcgiserver.wsgi"):
        channel, completed = call(wsgi_apps.application, {"PATH_INFO": "/error"})
    assert completed and channel.ended
    assert channel.head.startswith(b"Status: 500 ")
    assert channel.body == ERROR_BODY
    assert wsgi_apps.SECRET_ERROR_TEXT.encode() not in channel.output
    assert any(wsgi_apps.SECRET_ERROR_TEXT in (r.exc_text or "") for r in caplog.records)


def test_app_error_after_the_head_ends_the_request_as_broken() -> None:
    channel, completed = call(wsgi_apps.application, {"PATH_INFO": "/error-after-head"})
    assert not completed
    assert not channel.ended
    assert channel.body == b"first part\n"


def test_returning_without_start_response_is_a_500() -> None:
    channel, _ = call(lambda e, s: [b"no head"])
    assert channel.head.startswith(b"Status: 500 ")


def test_str_body_piece_is_a_500() -> None:
    channel, _ = call(lambda e, s: (s("200 OK", []), ["text"])[1])
    assert channel.head.startswith(b"Status: 500 ")


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("200 OK", [("X-Evil", "a\r\nSet-Cookie: owned=1")]),
        ("200 OK", [("X-Evil", "a\nb")]),
        ("200 OK", [("X-Evil", "a\rb")]),
        ("200 OK", [("X-Evil", "nul\x00")]),
        ("200 OK", [("X Evil", "v")]),
        ("200 OK", [("X-Evil:", "v")]),
        ("200 OK", [("X-Evil\r\nSet-Cookie", "v")]),
        ("200 OK", [("X-Snow", "\u2603")]),
        ("200 OK", [(b"X-Bytes", "v")]),
        ("200 OK", [("X-Bytes", b"v")]),
        ("200 OK", [("Content-Length", "12; rm")]),
        ("200 OK", [["X-List", "v"]]),
        ("200 OK", (("X-Tuple", "v"),)),
        ("200 OK\r\nSet-Cookie: owned=1", []),
        ("200", []),
        ("OK 200", []),
        ("2000 OK", []),
        (b"200 OK", []),
    ],
)
def test_invalid_status_or_header_is_a_500_and_logged(
        status: Any, headers: Any, caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response(status, headers)
        return [b"owned"]

    with caplog.at_level(logging.ERROR, logger="fcgiserver.wsgi"):
        channel, _ = call(app)
    assert channel.head.startswith(b"Status: 500 ")
    assert b"owned" not in channel.output
    assert any("InvalidResponse" in (r.exc_text or "") for r in caplog.records)


def test_valid_latin1_header_values_pass() -> None:
    block, length = header_block("200 OK", [("X-Name", "caf\xe9\tok"), ("Content-Length", "3")])
    assert block == b"Status: 200 OK\r\nX-Name: caf\xe9\tok\r\nContent-Length: 3\r\n\r\n"
    assert length == 3
    with pytest.raises(InvalidResponse):
        header_block("200 OK", [("X", "\u0100")])


# -- exc_info -----------------------------------------------------------------------------

def test_second_start_response_without_exc_info_is_an_error() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        start_response("404 Not Found", [])
        return [b"x"]

    channel, _ = call(app)
    assert channel.head.startswith(b"Status: 500 ")


def test_exc_info_before_the_head_replaces_the_response() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Second", "1")], sys.exc_info())
        return [b"sorry"]

    channel, _ = call(app)
    assert channel.head == b"Status: 503 Service Unavailable\r\nX-Second: 1"
    assert channel.body == b"sorry"


def test_exc_info_after_the_head_re_raises_the_apps_error() -> None:
    raised: list[BaseException] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        try:
            raise KeyError("original")
        except KeyError:
            try:
                start_response("500 Oops", [], sys.exc_info())
            except KeyError as exc:
                raised.append(exc)
                raise

    channel, completed = call(app)
    assert raised and raised[0].args == ("original",)
    assert not completed
    assert channel.body == b"partial"


# -- wsgi.errors --------------------------------------------------------------------------

def test_wsgi_errors_sends_whole_lines_to_stderr_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    channel = Recorder()
    stream = ErrorStream(channel)
    with caplog.at_level(logging.ERROR, logger="fcgiserver.wsgi"):
        stream.write("first ")
        assert channel.stderr == []
        stream.writelines(["line\n", "second\n", "tail"])
        stream.flush()
    assert b"".join(channel.stderr) == b"first line\nsecond\ntail\n"
    assert [r.getMessage() for r in caplog.records] == ["app: first line", "app: second", "app: tail"]


def test_wsgi_errors_rejects_bytes() -> None:
    with pytest.raises(TypeError):
        ErrorStream(Recorder()).write(b"bytes")  # type: ignore[arg-type]


def test_unfinished_error_line_goes_out_before_the_request_ends() -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        environ["wsgi.errors"].write("no newline")
        start_response("200 OK", [])
        return [b"ok"]

    channel, _ = call(app)
    assert channel.stderr == [b"no newline\n"]


def test_request_body_reaches_the_app() -> None:
    channel, _ = call(wsgi_apps.application, {"PATH_INFO": "/echo", "REQUEST_METHOD": "POST",
                                              "CONTENT_LENGTH": "5"}, body=b"hello")
    assert channel.body == b"hello"


@pytest.mark.parametrize(("env", "uri"), [
    ({"REQUEST_URI": "/a%20b?x=1", "SCRIPT_NAME": "/a", "PATH_INFO": "/ b"}, "/a%20b?x=1"),
    ({"SCRIPT_NAME": "/app", "PATH_INFO": "/p", "QUERY_STRING": "x=1"}, "/app/p?x=1"),
    ({"SCRIPT_NAME": "", "PATH_INFO": "/p", "QUERY_STRING": ""}, "/p"),
    ({}, ""),
])
def test_the_request_uri_logs_and_the_status_page_show(env: dict[str, str], uri: str) -> None:
    assert request_uri(env) == uri
