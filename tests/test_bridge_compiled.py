"""The compiled bridge steps (fcgiserver/wsgi/_bridge.c) do what the Python code does.

build_environ_pure() and header_block_pure() are the reference. On any input, odd types
included, each compiled twin gives the same result (an environ with the same items in the
same order, the very same objects) or raises the same exception with the same message.
These tests import the compiled module directly and bind it themselves, so they run (and
compare) whether or not FCGISERVER_PURE is set.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgiserver.protocol import Role
from fcgiserver.wsgi import _bridge, bridge, response
from fcgiserver.wsgi.bridge import build_environ_pure
from fcgiserver.wsgi.response import header_block_pure

EXAMPLES = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True)
def bound() -> Iterator[None]:
    """The compiled module bound to the Python definitions, as importing the bridge binds it
    when the compiled code is on (and idempotent when it is)."""
    _bridge.bind_environ(build_environ_pure, bridge.fix_script_name, bridge._is_on, bridge._WSGI_CONSTANTS,
                         bridge._ROLE_NAMES)
    _bridge.bind_head(response._heads, response._HEADS_MAX, response._build, response._explain)
    yield


def outcome(fn: Callable[..., Any], *args: object) -> tuple[str, object]:
    """A call's result, or its exception's type and message."""
    try:
        return "ok", fn(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)


# -- environ ------------------------------------------------------------------------------

NAMES = ["HTTPS", "REQUEST_SCHEME", "PATH_INFO", "SCRIPT_NAME", "REQUEST_URI", "HTTP_CONTENT_LENGTH",
         "HTTP_CONTENT_TYPE", "CONTENT_TYPE", "REQUEST_METHOD", "QUERY_STRING", "SERVER_NAME",
         "SERVER_PROTOCOL", "SERVER_PORT", "HTTP_HOST", "wsgi.url_scheme", "FCGI_ROLE"]
TEXT = st.sampled_from(["", "on", "ON", "On", "1", "yes", "TRUE", "off", "0", "https", "http", "/", "/a",
                        "/a/b", "/app", "/app/x", "/a%20b", "/x?y", "\xe9", "\xc9N", "o\xf1"]) | st.text(
    alphabet=st.characters(max_codepoint=0xFF), max_size=12)
# Not what a front sends, but what an extra pair or a caller could put there.
ODD = st.sampled_from([None, 0, 1, b"on", ("x",), 2.5])
VALUE = TEXT | ODD
PARAMS = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6), TEXT, max_size=12)
EXTRA = st.lists(st.tuples(st.sampled_from(NAMES), VALUE), max_size=3).map(tuple)
ROLE = st.sampled_from([Role.RESPONDER, Role.AUTHORIZER, Role.FILTER, 1, 2, 7])
SCRIPT = st.none() | st.sampled_from(["", "/", "/app", "/app/", "/a"])


def environ_outcome(fn: Callable[..., Any], params: dict[str, Any], *args: object) -> tuple[str, object]:
    env = copy.copy(params)
    got = outcome(fn, env, *args)
    # The dict handed in is the environ (or was changed on the way to an error): its items,
    # in order, with the very objects each side stored.
    items = [(k, v if type(v) is str else id(v)) for k, v in env.items()]
    return got[0], items, got[1] if got[0] != "ok" else None


@EXAMPLES
@given(PARAMS, ROLE, SCRIPT, EXTRA)
def test_environ_from_any_params_is_the_same(params: dict[str, Any], role: int, script: str | None,
                                             extra: tuple[tuple[str, Any], ...]) -> None:
    wsgi_input, errors = object(), object()
    args = (role, wsgi_input, errors, script, extra)
    assert environ_outcome(_bridge.build_environ, params, *args) == environ_outcome(
        build_environ_pure, params, *args)


@EXAMPLES
@given(PARAMS, ROLE)
def test_environ_with_the_default_arguments_is_the_same(params: dict[str, Any], role: int) -> None:
    assert environ_outcome(_bridge.build_environ, params, role, None, None) == environ_outcome(
        build_environ_pure, params, role, None, None)


def test_the_usual_request_keeps_the_fronts_split_and_gets_every_wsgi_key() -> None:
    params = {"REQUEST_METHOD": "GET", "QUERY_STRING": "", "SERVER_NAME": "h", "SERVER_PORT": "80",
              "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/x", "REQUEST_URI": "/x", "HTTPS": "on",
              "HTTP_CONTENT_TYPE": "a/b"}
    env = _bridge.build_environ(dict(params), Role.RESPONDER, None, None)
    assert env == build_environ_pure(dict(params), Role.RESPONDER, None, None)
    assert env["SCRIPT_NAME"] == "" and env["CONTENT_TYPE"] == "a/b" and env["wsgi.url_scheme"] == "https"
    assert "HTTP_CONTENT_TYPE" not in env and env["FCGI_ROLE"] == "RESPONDER"


def test_what_the_c_side_does_not_take_goes_to_the_reference_unchanged() -> None:
    class Params(dict[str, Any]):
        pass

    odd = Params(PATH_INFO="/x")
    assert _bridge.build_environ(odd, Role.RESPONDER, None, None) is odd
    assert odd["SCRIPT_NAME"] == "" and odd["wsgi.url_scheme"] == "http"
    assert outcome(_bridge.build_environ, {}, 1, None, None, None, [("A", "b")]) == outcome(
        build_environ_pure, {}, 1, None, None, None, [("A", "b")])
    assert outcome(_bridge.build_environ, {}, 1, None, None, None, (("A",),)) == outcome(
        build_environ_pure, {}, 1, None, None, None, (("A",),))
    assert outcome(_bridge.build_environ, {}) == outcome(build_environ_pure, {})


# -- the response head --------------------------------------------------------------------

STATUS = st.sampled_from(["200 OK", "404 Not Found", "204 ", "999 x", "20 OK", "200 A\r\nB", "200 caf\xe9",
                          "200 \u0100"]) | st.text(max_size=10) | st.sampled_from([b"200 OK", None, 200])
HEADER_NAME = st.sampled_from(["Content-Type", "Content-Length", "content-length", "X-A", "Bad Name", "",
                               "X\u0100"]) | st.text(max_size=6)
HEADER_VALUE = st.sampled_from(["text/plain", "3", " 12 ", "-1", "1x", "\u0663", "a\r\nb", "caf\xe9\t",
                                "\u0100"]) | st.text(max_size=6)
HEADER = st.tuples(HEADER_NAME, HEADER_VALUE) | st.sampled_from(
    [("A",), ("A", "b", "c"), ["A", "b"], (b"A", "b"), ("A", b"b"), "Ab", None])
HEADERS = st.lists(HEADER, max_size=4) | st.sampled_from([(("A", "b"),), None, "x"])


@EXAMPLES
@given(STATUS, HEADERS)
def test_heads_from_any_status_and_headers_are_the_same(status: object, headers: object) -> None:
    response._heads.clear()
    compiled = outcome(_bridge.header_block, status, headers)
    cached = dict(response._heads)
    response._heads.clear()
    pure = outcome(header_block_pure, status, headers)
    assert compiled == pure
    assert cached == response._heads  # the same entry kept (or none)
    # Asked again, each finds what the other kept.
    assert outcome(_bridge.header_block, status, headers) == pure
    assert outcome(header_block_pure, status, headers) == pure


def test_the_head_cache_is_shared_and_bounded_alike() -> None:
    sizes = {}
    for fn in (_bridge.header_block, header_block_pure):
        response._heads.clear()
        sizes[fn] = []
        for i in range(response._HEADS_MAX + 5):
            assert fn("200 OK", [("X-N", str(i))])[0].endswith(b"X-N: %d\r\n\r\n" % i)
            sizes[fn].append(len(response._heads))
    assert sizes[_bridge.header_block] == sizes[header_block_pure]
    assert max(sizes[header_block_pure]) == response._HEADS_MAX
    first = _bridge.header_block("200 OK", [("X-N", "1")])
    assert header_block_pure("200 OK", [("X-N", "1")]) is first


def test_the_compiled_steps_refuse_to_run_unbound_in_a_fresh_interpreter() -> None:
    import subprocess
    import sys

    probe = ("from fcgiserver.wsgi import _bridge\n"
             "for call in (lambda: _bridge.build_environ({}, 1, None, None), "
             "lambda: _bridge.header_block('200 OK', [])):\n"
             "    try:\n        call()\n    except RuntimeError as exc:\n        print(exc)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["fcgiserver.wsgi._bridge is not bound yet"] * 2
