"""The status and ping pages: the scoreboard and pool counters as JSON or Prometheus text.

They are a WSGI layer around the application (``StatusPages``, ``--status-path``,
``--ping-path``), outside the access log's, so they work while the app is broken or slow,
are not logged, and cost a normal request one call and one dictionary lookup. The report
is read from shared memory (scoreboard.py, poolstats.py): nothing is asked of the
supervisor or of the other workers. RSS comes from psutil and the
listen queue from the kernel (listenqueue.py), both at the moment the page is asked for.

``GET <status-path>`` gives JSON; ``?format=prometheus`` the text exposition format;
``?full`` adds one row per worker. The worker answering is itself busy with that request.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs

import psutil

from fcgiserver import __version__
from fcgiserver.config import Config
from fcgiserver.net.listenqueue import listen_queue
from fcgiserver.net.sockets import describe
from fcgiserver.safety.sharedconns import ShareInfo, ShareTable
from fcgiserver.shm.poolstats import PoolInfo
from fcgiserver.shm.scoreboard import RESTART_CAUSES, Scoreboard, Slot, SlotInfo, SlotState
from fcgiserver.spec import StartResponse, WSGIApplication

JSON_TYPE = "application/json"
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
PING_BODY = b"pong"
_NO_STORE = ("Cache-Control", "no-store")



# ---- the report ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WorkerRow:
    slot: int
    pid: int
    generation: int
    state: str  # "booting" | "idle" | "busy" | "exiting"
    requests: int
    accepted: int
    last_change: float  # time.time() of the worker's last state change
    method: str  # the current request ("" unless busy)
    uri: str
    elapsed: float | None  # seconds the current request has run (None unless busy)
    rss: int | None  # resident memory in bytes (None when the process is gone or unreadable)
    fingerprint: str  # RNG fingerprint, hex ("" when not set)
    # Inherited sockets this worker holds together with other live workers, and their pids
    # (the supervisor's run-time check, sharedconns.py; 0 and [] when none or not checked yet).
    shared_connections: int
    shares_with: list[int]


@dataclass(frozen=True, slots=True)
class ListenerRow:
    address: str
    queue: int | None  # connections waiting for accept(); None when the OS does not say
    backlog: int | None
    source: str | None  # where the queue length came from


@dataclass(frozen=True, slots=True)
class Totals:
    workers: int  # slots in use (booting, idle, busy or exiting)
    target_workers: int  # the number the supervisor keeps running
    max_workers: int
    active: int
    idle: int
    booting: int
    exiting: int
    accepted_connections: int
    requests: int
    slow_requests: int
    timeouts: int
    max_workers_reached: int
    max_workers_reached_at: float | None
    restarts: dict[str, int]
    spawned: int
    retired: int
    reloads: int
    reload_failures: int
    listen_queue: int | None  # summed over the listeners that report one


@dataclass(frozen=True, slots=True)
class Report:
    version: str
    now: float
    supervisor_pid: int
    worker_pid: int  # the worker that answered
    started: float
    uptime: float
    generation: int
    pool: str
    totals: Totals
    listeners: list[ListenerRow]
    workers: list[WorkerRow] | None = field(default=None)  # only with ?full

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.workers is None:
            del data["workers"]
        return data


_STATE_NAMES = {SlotState.BOOTING: "booting", SlotState.IDLE: "idle", SlotState.BUSY: "busy",
                SlotState.EXITING: "exiting"}


def collect(board: Scoreboard, listeners: Sequence[socket.socket], *, full: bool = False) -> Report:
    """What the status page shows, read now from the shared scoreboard and pool counters."""
    now = time.time()
    header, slots = board.read_all()
    pool = board.poolstats.read() if board.poolstats is not None else None
    used = [(i, s) for i, s in enumerate(slots) if s.state != SlotState.FREE]
    counts = {state: 0 for state in _STATE_NAMES}
    for _, info in used:
        counts[info.state] += 1
    rows = [_row(i, info, now, board.shared_connections) for i, info in used] if full else None
    lrows = [_listener_row(sock) for sock in listeners]
    queues = [row.queue for row in lrows if row.queue is not None]
    if pool is None:
        pool = PoolInfo(workers=len(used), max_workers=len(used),
                        generation=max((s.generation for _, s in used), default=1))
    totals = Totals(
        workers=len(used),
        target_workers=pool.workers,
        max_workers=pool.max_workers,
        active=counts[SlotState.BUSY],
        idle=counts[SlotState.IDLE],
        booting=counts[SlotState.BOOTING],
        exiting=counts[SlotState.EXITING],
        accepted_connections=header.accepted + sum(s.accepted for s in slots),
        requests=header.requests + sum(s.requests for s in slots),
        slow_requests=pool.slow_requests,
        timeouts=pool.timeouts,
        max_workers_reached=pool.max_reached_count,
        max_workers_reached_at=pool.max_reached_at or None,
        restarts=header.restarts,
        spawned=pool.spawned,
        retired=pool.retired,
        reloads=pool.reloads,
        reload_failures=pool.reload_failures,
        listen_queue=sum(queues) if queues else None,
    )
    return Report(version=__version__, now=now, supervisor_pid=header.supervisor_pid, worker_pid=os.getpid(),
                  started=header.started, uptime=max(0.0, now - header.started), generation=pool.generation,
                  pool=pool.mode, totals=totals, listeners=lrows, workers=rows)


def _row(index: int, info: SlotInfo, now: float, shares: ShareTable | None) -> WorkerRow:
    busy = info.state == SlotState.BUSY and info.busy_since > 0
    share = shares.read(index) if shares is not None and index < len(shares) else None
    if share is None or share.pid != info.pid:
        share = ShareInfo(info.pid, 0, ())
    return WorkerRow(slot=index, pid=info.pid, generation=info.generation, state=_STATE_NAMES[info.state],
                     requests=info.requests, accepted=info.accepted, last_change=info.last_change,
                     method=info.method, uri=info.uri,
                     elapsed=max(0.0, now - info.busy_since) if busy else None,
                     rss=_rss(info.pid), fingerprint=info.fingerprint.hex(),
                     shared_connections=share.sockets, shares_with=list(share.peers))


def _rss(pid: int) -> int | None:
    if pid <= 0:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def _listener_row(sock: socket.socket) -> ListenerRow:
    try:
        address = describe(sock)
    except OSError:
        address = "?"
    queue = listen_queue(sock)
    if queue is None:
        return ListenerRow(address, None, None, None)
    return ListenerRow(address, queue.length, queue.backlog, queue.source)


# ---- JSON ------------------------------------------------------------------------------------

def render_json(report: Report) -> bytes:
    return json.dumps(report.as_dict(), indent=1, sort_keys=False).encode() + b"\n"


# ---- Prometheus text exposition (format 0.0.4) ----------------------------------------------

Sample = tuple[dict[str, str], float | int | None]


@dataclass
class _Family:
    name: str
    kind: str  # "counter" | "gauge"
    help: str
    samples: list[Sample]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _families(report: Report) -> list[_Family]:
    t = report.totals
    one: Callable[[float | int | None], list[Sample]] = lambda v: [({}, v)]  # noqa: E731
    families = [
        _Family("fcgiserver_info", "gauge", "Always 1; the labels name the server version and pool mode.",
                [({"version": report.version, "pool": report.pool}, 1)]),
        _Family("fcgiserver_start_time_seconds", "gauge", "When the supervisor started (Unix time).",
                one(report.started)),
        _Family("fcgiserver_generation", "gauge", "The current worker generation (1 + reloads).",
                one(report.generation)),
        _Family("fcgiserver_workers", "gauge", "Workers by state.",
                [({"state": "busy"}, t.active), ({"state": "idle"}, t.idle),
                 ({"state": "booting"}, t.booting), ({"state": "exiting"}, t.exiting)]),
        _Family("fcgiserver_workers_target", "gauge", "The number of workers the supervisor keeps.",
                one(t.target_workers)),
        _Family("fcgiserver_workers_max", "gauge", "The most workers the pool may run.", one(t.max_workers)),
        _Family("fcgiserver_accepted_connections_total", "counter", "Connections accepted by workers.",
                one(t.accepted_connections)),
        _Family("fcgiserver_requests_total", "counter", "Requests workers finished.", one(t.requests)),
        _Family("fcgiserver_slow_requests_total", "counter",
                "Requests that ran past --slow-log-timeout.", one(t.slow_requests)),
        _Family("fcgiserver_timeouts_total", "counter", "Requests aborted by --timeout.", one(t.timeouts)),
        _Family("fcgiserver_max_workers_reached_total", "counter",
                "Times a dynamic pool wanted another worker but ran max-workers.",
                one(t.max_workers_reached)),
        _Family("fcgiserver_restarts_total", "counter", "Workers replaced, by cause.",
                [({"cause": cause}, t.restarts.get(cause, 0)) for cause in RESTART_CAUSES]),
        _Family("fcgiserver_workers_started_total", "counter", "Workers started, for any reason.",
                one(t.spawned)),
        _Family("fcgiserver_workers_retired_total", "counter",
                "Idle workers a dynamic pool stopped above max-spare.", one(t.retired)),
        _Family("fcgiserver_reloads_total", "counter", "Completed reloads.", one(t.reloads)),
        _Family("fcgiserver_reload_failures_total", "counter", "Reloads abandoned.", one(t.reload_failures)),
        _Family("fcgiserver_listen_queue", "gauge",
                "Connections waiting in the listen queue, where the OS reports it.",
                [({"listener": row.address}, row.queue) for row in report.listeners]),
        _Family("fcgiserver_listen_backlog", "gauge", "The listen queue's limit, where the OS reports it.",
                [({"listener": row.address}, row.backlog) for row in report.listeners]),
    ]
    if report.workers is not None:
        def per_worker(value: Callable[[WorkerRow], float | int | None]) -> list[Sample]:
            return [({"pid": str(w.pid), "slot": str(w.slot), "generation": str(w.generation)}, value(w))
                    for w in report.workers or ()]

        families += [
            _Family("fcgiserver_worker_requests_total", "counter", "Requests this worker finished.",
                    per_worker(lambda w: w.requests)),
            _Family("fcgiserver_worker_resident_memory_bytes", "gauge", "This worker's resident memory.",
                    per_worker(lambda w: w.rss)),
            _Family("fcgiserver_worker_busy_seconds", "gauge",
                    "How long this worker's current request has run (0 when idle).",
                    per_worker(lambda w: w.elapsed or 0.0)),
            _Family("fcgiserver_worker_shared_connections", "gauge",
                    "Inherited connections this worker holds together with another live worker.",
                    per_worker(lambda w: w.shared_connections)),
        ]
    return families


def render_prometheus(report: Report) -> bytes:
    lines: list[str] = []
    for family in _families(report):
        samples = [(labels, value) for labels, value in family.samples if value is not None]
        if not samples:
            continue
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in samples:
            assert value is not None
            label_text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            name = f"{family.name}{{{label_text}}}" if label_text else family.name
            lines.append(f"{name} {_format_value(value)}")
    return ("\n".join(lines) + "\n").encode()


# ---- the WSGI side ---------------------------------------------------------------------------

def request_path(environ: dict[str, Any]) -> str:
    """The request's path: SCRIPT_NAME + PATH_INFO, else REQUEST_URI without the query."""
    path: str = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    if not path:
        path = str(environ.get("REQUEST_URI", "")).partition("?")[0]
    return path


def _answer(start_response: StartResponse, status: str, content_type: str, body: bytes,
            head: bool) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), _NO_STORE])
    return [] if head else [body]


def _method_check(environ: dict[str, Any], start_response: StartResponse) -> list[bytes] | None:
    if environ.get("REQUEST_METHOD", "GET") in ("GET", "HEAD"):
        return None
    start_response("405 Method Not Allowed", [("Content-Type", TEXT_TYPE), ("Allow", "GET, HEAD"),
                                              ("Content-Length", "19"), _NO_STORE])
    return [b"Method Not Allowed\n"]


def make_status_app(board: Scoreboard, listeners: Sequence[socket.socket]) -> WSGIApplication:
    """The status page, as a WSGI app over `board` and the worker's `listeners`."""

    def status_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        refused = _method_check(environ, start_response)
        if refused is not None:
            return refused
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        fmt = (query.get("format") or ["json"])[-1].lower()
        full = "full" in query and (query["full"][-1].lower() not in ("0", "false", "no", "off"))
        head = environ.get("REQUEST_METHOD") == "HEAD"
        if fmt not in ("json", "prometheus"):
            return _answer(start_response, "400 Bad Request", TEXT_TYPE,
                           b"format must be json or prometheus\n", head)
        report = collect(board, listeners, full=full)
        if fmt == "prometheus":
            return _answer(start_response, "200 OK", PROMETHEUS_TYPE, render_prometheus(report), head)
        return _answer(start_response, "200 OK", JSON_TYPE, render_json(report), head)

    return status_app


def ping_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Answers "pong": the server accepts and a worker runs, whatever the application does."""
    refused = _method_check(environ, start_response)
    if refused is not None:
        return refused
    return _answer(start_response, "200 OK", TEXT_TYPE, PING_BODY, environ.get("REQUEST_METHOD") == "HEAD")


def status_routes(config: Config, slot: Slot,
                  listeners: Sequence[socket.socket]) -> dict[str, WSGIApplication]:
    """Path -> app for the pages answered before the application (empty when none)."""
    routes: dict[str, WSGIApplication] = {}
    board = slot.board
    if config.status_path is not None and board is not None:
        routes[config.status_path] = make_status_app(board, list(listeners))
    if config.ping_path is not None:
        routes[config.ping_path] = ping_app
    return routes


class StatusPages:
    """The application behind the status and ping pages: a request for one of `routes`
    is answered by its page and never reaches `app`.

    Only a RESPONDER's request is routed: an authorizer's question is the app's to answer,
    whatever its path.
    """

    __slots__ = ("app", "routes")

    def __init__(self, app: WSGIApplication, routes: dict[str, WSGIApplication]) -> None:
        self.app = app
        self.routes = routes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("FCGI_ROLE", "RESPONDER") == "RESPONDER":
            page = self.routes.get(request_path(environ))
            if page is not None:
                return page(environ, start_response)
        return self.app(environ, start_response)


def with_status_pages(app: WSGIApplication, config: Config, slot: Slot,
                      listeners: Sequence[socket.socket]) -> WSGIApplication:
    """`app` behind the configured pages; `app` itself when none is configured, so a
    server without them pays nothing per request."""
    routes = status_routes(config, slot, listeners)
    return StatusPages(app, routes) if routes else app
