"""runfcgi's words (Django's old flup syntax) mapped to fcgiserver settings; no Django needed.

The command itself, run by a real manage.py: tests/test_django_flask.py.
"""

from __future__ import annotations

import os

import pytest

from fcgiserver.api import make_config
from fcgiserver.contrib.django.options import UsageError, plan


def _app(environ: object, start_response: object) -> list[bytes]:
    return []


def test_prefork_on_a_socket_is_a_dynamic_pool_that_daemonizes_like_djangos() -> None:
    what = plan(["method=prefork", "socket=site.sock", "pidfile=site.pid", "maxchildren=8", "minspare=2",
                 "maxspare=4", "maxrequests=500", "umask=027"])
    assert what.bind == "unix:" + os.path.abspath("site.sock")
    assert what.daemonize and what.workdir == "/" and what.warnings == []
    config, _loader = make_config(_app, what.bind, what.workers, **what.options)
    assert (config.pool, config.workers, config.min_spare, config.max_spare, config.max_workers) == (
        "dynamic", 2, 2, 4, 8)
    assert (config.max_requests, config.umask, config.pidfile) == (500, 0o027, os.path.abspath("site.pid"))


def test_defaults_are_djangos_and_no_address_means_the_socket_on_stdin() -> None:
    what = plan([])
    assert what.bind is None and not what.daemonize
    config, _loader = make_config(_app, what.bind, what.workers, **what.options)
    assert (config.min_spare, config.max_spare, config.max_workers, config.max_requests) == (2, 5, 50, 0)


def test_tcp_threaded_and_logs() -> None:
    what = plan(["method=thread", "host=::1", "port=3033", "daemonize=no", "outlog=out.log", "errlog=err.log",
                 "debug=true"])
    assert what.bind == "[::1]:3033" and not what.daemonize
    assert what.warnings and "prefork" in what.warnings[0]
    assert (what.outlog, what.errlog) == (os.path.abspath("out.log"), os.path.abspath("err.log"))
    assert what.options["error_log"] == os.path.abspath("err.log") and what.options["log_level"] == "debug"


@pytest.mark.parametrize(("words", "message"), [
    (["sokcet=/x"], "unknown option 'sokcet'"),
    (["socket"], "expected option=value"),
    (["=1"], "expected option=value"),
    (["port=80"], "give socket=, or host= and port="),
    (["socket=/x", "host=h", "port=1"], "give socket="),
    (["host=h", "port=70000"], "port= expects 1..65535"),
    (["maxspare=-1"], "maxspare= expects a whole number"),
    (["minspare=6"], "minspare <= maxspare <= maxchildren"),
    (["maxchildren=0", "maxspare=0", "minspare=0"], "at least 1"),
    (["umask=999"], "umask= expects an octal mode"),
    (["protocol=ajp"], "protocol=ajp is not served"),
    (["method=gevent"], "method= expects prefork or threaded"),
    (["daemonize=true"], "daemonize=true needs socket="),
])
def test_bad_words_are_usage_errors_that_name_them(words: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        plan(words)
