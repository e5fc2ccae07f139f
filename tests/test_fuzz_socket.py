"""Protocol fuzzing at two depths.

1. The sans-IO parser: a valid stream decodes to exactly the requests it encodes (ids,
   roles, KEEP_CONN, params, body), however it is split and whatever management records
   are mixed in. (tests/test_protocol_fuzz.py covers garbage, mutations and splitting.)
2. A live server: mutated FastCGI streams go into its socket for a bounded time
   (FUZZ_SOCKET_SECONDS, 15 s by default; the soak run goes longer). Throughout, the
   supervisor never dies; every connection is answered with well-formed records or closed;
   a good request right after is served; no worker is lost; and the workers' open
   descriptors and memory do not grow.

Every case is drawn from one seed (FUZZ_SEED, printed), so a failure can be replayed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgiserver.client import FastCGIClient
from fcgiserver.protocol import (
    ConnectionClosed,
    ConnState,
    Event,
    NeedData,
    RecordReader,
    RecordType,
    RemoteProtocolError,
    RequestStarted,
    Role,
    ServerConnection,
    StdinData,
    StdinEnd,
    encode_params,
    encode_record,
)
from tests.support.load import fd_targets, idle_fds
from tests.support.server import ServerProcess, running_server, wait_until

APP = "reliability_apps:application"
RT = RecordType
BEGIN_BODY = struct.Struct("!HB5x")
HEADER = struct.Struct("!BBHHBx")
# Records a server may send; anything else in a reply is a bug.
SERVER_RECORD_TYPES = {RT.STDOUT, RT.STDERR, RT.END_REQUEST, RT.GET_VALUES_RESULT, RT.UNKNOWN_TYPE}

FUZZ_SECONDS = float(os.environ.get("FUZZ_SOCKET_SECONDS", "15"))
READ_TIMEOUT = 2


# == depth 1: the parser ===========================================================================

HYPOTHESIS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")), deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])

param_names = st.binary(min_size=1, max_size=30)
param_values = st.one_of(st.binary(max_size=40), st.binary(min_size=120, max_size=400))


@dataclass
class PlannedRequest:
    request_id: int
    role: Role
    params: list[tuple[bytes, bytes]]
    body_chunks: list[bytes]
    params_records: int
    get_values_before: bool

    @property
    def body(self) -> bytes:
        return b"".join(self.body_chunks)


@st.composite
def planned_requests(draw: st.DrawFn) -> list[PlannedRequest]:
    count = draw(st.integers(1, 4))
    return [
        PlannedRequest(
            request_id=draw(st.integers(1, 0xFFFF)),
            role=draw(st.sampled_from([Role.RESPONDER, Role.AUTHORIZER])),
            params=draw(st.lists(st.tuples(param_names, param_values), max_size=8)),
            body_chunks=draw(st.lists(st.binary(min_size=1, max_size=300), max_size=4)),
            params_records=draw(st.integers(1, 3)),
            get_values_before=draw(st.booleans()),
        )
        for _ in range(count)
    ]


def encode_planned(requests: list[PlannedRequest]) -> bytes:
    out = b""
    for i, req in enumerate(requests):
        keep = 1 if i < len(requests) - 1 else 0
        if req.get_values_before:
            out += encode_record(RT.GET_VALUES, 0, encode_params([(b"FCGI_MPXS_CONNS", b"")]))
        out += encode_record(RT.BEGIN_REQUEST, req.request_id, BEGIN_BODY.pack(req.role, keep))
        params = encode_params(req.params)
        step = max(1, -(-len(params) // req.params_records))
        for start in range(0, len(params), step):
            out += encode_record(RT.PARAMS, req.request_id, params[start:start + step])
        out += encode_record(RT.PARAMS, req.request_id, b"")
        if req.role is Role.RESPONDER:
            for chunk in req.body_chunks:
                out += encode_record(RT.STDIN, req.request_id, chunk)
            out += encode_record(RT.STDIN, req.request_id, b"")
    return out


def parse_like_a_worker(chunks: list[bytes]) -> tuple[list[Event], bytes]:
    """Events from feeding the chunks then EOF, answering each request once its input ended."""
    conn = ServerConnection()
    events: list[Event] = []
    replies = b""
    for chunk in [*(c for c in chunks if c), b""]:  # b"" is EOF
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if isinstance(event, NeedData):
                break
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
            started = isinstance(event, RequestStarted) and event.role is Role.AUTHORIZER
            if started or conn.state is ConnState.RESPONDING:
                replies += conn.send_stdout(b"Status: 200 OK\r\n\r\n") + conn.end_request()
        replies += conn.data_to_send()
    return events, replies


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@HYPOTHESIS
@given(planned_requests(), st.lists(st.integers(0, 100_000), max_size=10))
def test_valid_streams_parse_to_exactly_the_requests_they_encode_however_split(
        requests: list[PlannedRequest], cuts: list[int]) -> None:
    stream = encode_planned(requests)
    events, replies = parse_like_a_worker(_split(stream, cuts))
    started = [e for e in events if isinstance(e, RequestStarted)]
    assert [(e.request_id, e.role, e.keep_conn) for e in started] == [
        (r.request_id, r.role, i < len(requests) - 1) for i, r in enumerate(requests)]
    for event, req in zip(started, requests, strict=True):
        expected: dict[str, str] = {}
        for name, value in req.params:
            expected[name.decode("latin-1")] = value.decode("latin-1")
        assert event.params == expected
    responders = [r for r in requests if r.role is Role.RESPONDER]
    # One request at a time on a connection: a body is everything up to its StdinEnd.
    bodies, current = [], b""
    for e in events:
        if isinstance(e, StdinData):
            current += e.data
        elif isinstance(e, StdinEnd):
            bodies.append(current)
            current = b""
    assert bodies == [r.body for r in responders]
    assert isinstance(events[-1], ConnectionClosed)
    # The replies: one END_REQUEST per request, one GET_VALUES_RESULT per question, nothing else.
    reader = RecordReader()
    reader.feed(replies)
    kinds = []
    while (record := reader.next_record()) is not None:
        kinds.append(record.type)
    assert kinds.count(RT.END_REQUEST) == len(requests)
    assert kinds.count(RT.GET_VALUES_RESULT) == sum(r.get_values_before for r in requests)
    assert set(kinds) <= SERVER_RECORD_TYPES
    # The same stream whole, or byte by byte, gives the same events.
    assert parse_like_a_worker([stream])[0] == events
    if len(stream) < 3000:
        assert parse_like_a_worker([bytes((b,)) for b in stream])[0] == events


# == depth 2: a live server ========================================================================


def good_request(rng: random.Random) -> tuple[bytes, list[bytes]]:
    """A valid stream of 1-3 requests (KEEP_CONN on all but the last) and the bodies sent."""
    out = b""
    bodies = []
    count = rng.choice([1, 1, 1, 2, 3])
    for i in range(count):
        rid = rng.choice([1, 1, 2, 7, 0xFFFF])
        body = rng.randbytes(rng.choice([0, 0, 10, 1000, 70_000]))
        bodies.append(body)
        out += encode_record(RT.BEGIN_REQUEST, rid, BEGIN_BODY.pack(Role.RESPONDER, int(i < count - 1)))
        params = encode_params([
            (b"REQUEST_METHOD", b"POST"), (b"SCRIPT_NAME", b""), (b"PATH_INFO", b"/echo"),
            (b"QUERY_STRING", b"a=1"), (b"SERVER_PROTOCOL", b"HTTP/1.1"),
            (b"CONTENT_LENGTH", str(len(body)).encode()), (b"HTTP_X_PAD", rng.randbytes(rng.randint(0, 300))),
        ])
        cut = rng.randint(0, len(params))
        for piece in (params[:cut], params[cut:]):
            if piece:
                out += encode_record(RT.PARAMS, rid, piece)
        out += encode_record(RT.PARAMS, rid, b"")
        for start in range(0, len(body), 65535):
            out += encode_record(RT.STDIN, rid, body[start:start + 65535])
        out += encode_record(RT.STDIN, rid, b"")
        if rng.random() < 0.2:
            out += encode_record(RT.GET_VALUES, 0, encode_params([(b"FCGI_MAX_CONNS", b"")]))
    return out, bodies


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to five mutations aimed at what a parser trusts: header fields, lengths, order."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        how = rng.randrange(11)
        at = rng.randrange(len(buf) + 1)
        if how == 0 and buf:
            buf[at % len(buf)] ^= 1 << rng.randrange(8)
        elif how == 1:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        elif how == 2 and buf:
            del buf[at:at + rng.randint(1, 16)]
        elif how == 3:
            del buf[at:]
        elif how == 4 and buf:
            end = min(len(buf), at + rng.randint(1, 200))
            buf[at:at] = buf[at:end]  # a repeated slice: duplicated records or half records
        elif how == 5:
            # A whole record of any type, id and content (lengths up to the maximum).
            rtype = rng.randrange(0, 14)
            content = rng.randbytes(rng.choice([0, 1, 8, 100, 65535]))
            buf[at:at] = encode_record(rtype, rng.choice([0, 1, 2, 0xFFFF]), content)
        elif how in (6, 7, 8, 9):
            # A header field of a record boundary near `at`: version, type, id, length, padding.
            headers = _header_offsets(bytes(buf))
            if headers:
                h = rng.choice(headers)
                field_at = h + {6: 0, 7: 1, 8: 2, 9: rng.choice([4, 5, 6])}[how]
                if field_at < len(buf):
                    buf[field_at] = rng.choice([0, 1, 2, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif how == 10:
            # A params length prefix that claims far more than follows.
            buf[at:at] = b"\xff\xff\xff\xff" + b"\x01"
    return bytes(buf)


def _header_offsets(data: bytes) -> list[int]:
    offsets, at = [], 0
    while at + 8 <= len(data):
        offsets.append(at)
        _v, _t, _id, length, pad = HEADER.unpack_from(data, at)
        at += 8 + length + pad
    return offsets


@dataclass
class Tally:
    cases: int = 0
    valid: int = 0
    stalls: int = 0
    bytes_sent: int = 0
    good_requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


def exchange(path: str, data: bytes, rng: random.Random, *, stall: bool) -> bytes:
    """Sends `data` in random pieces, then EOF (or nothing more, for a stall); returns the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(READ_TIMEOUT + 25)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            at = 0
            while at < len(data):
                step = rng.choice([1, 7, 8, 100, 4096, len(data)])
                sock.sendall(data[at:at + step])
                at += step
            if not stall:
                sock.shutdown(socket.SHUT_WR)
        reply = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 16):
                reply += chunk
        return reply


def check_reply(reply: bytes, context: str) -> list[tuple[int, int, bytes]]:
    """Every byte the server sent is a well-formed record of a type a server may send."""
    reader = RecordReader()
    reader.feed(reply)
    records = []
    try:
        while (record := reader.next_record()) is not None:
            records.append((record.type, record.request_id, record.content))
    except RemoteProtocolError as exc:
        raise AssertionError(f"malformed reply ({exc}) {context}") from None
    assert reader.pending() == 0, f"reply ends inside a record {context}"
    assert {t for t, _, _ in records} <= SERVER_RECORD_TYPES, f"{records[:5]} {context}"
    return records


def check_valid_answers(records: list[tuple[int, int, bytes]], bodies: list[bytes], context: str) -> None:
    """An untouched stream gets every request answered, each with its own body's digest."""
    stdout: dict[int, bytes] = {}
    ends = []
    for rtype, rid, content in records:
        if rtype == RT.STDOUT:
            stdout[rid] = stdout.get(rid, b"") + content
        elif rtype == RT.END_REQUEST:
            ends.append(rid)
            _head, _, payload = stdout.pop(rid, b"").partition(b"\r\n\r\n")
            body = bodies[len(ends) - 1]
            expected = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            assert json.loads(payload) == expected, context
    assert len(ends) == len(bodies), f"{len(ends)} of {len(bodies)} answered {context}"


def sample(server: ServerProcess) -> dict[int, tuple[int, int]]:
    """(open fds, RSS) of every worker."""
    out = {}
    for pid in server.worker_pids():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            out[pid] = (proc.num_fds(), proc.memory_info().rss)
    return out


def served(server: ServerProcess) -> None:
    response = FastCGIClient(server.address, timeout=30).request("POST", "/echo", body=b"after the fuzz")
    assert response.status == 200, response
    assert json.loads(response.body)["size"] == len(b"after the fuzz")


def fuzz_live_server(seconds: float, seed: str) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    args = ["--read-timeout", str(READ_TIMEOUT), "--timeout", "20", "--max-params-size", "262144"]
    with running_server(APP, workers=2, args=args) as server:
        assert server.socket_path is not None
        pids = server.worker_pids()
        supervisor = psutil.Process(server.pid)
        supervisor_fds = supervisor.num_fds()
        baseline: dict[int, tuple[int, int]] = {}
        baseline_fds: dict[int, int] = {}
        deadline = time.monotonic() + seconds
        warmup = 150
        while time.monotonic() < deadline or tally.cases < warmup + 10:
            data, bodies = good_request(rng)
            valid = rng.random() < 0.1
            stall = not valid and rng.random() < 0.01
            if not valid:
                data = mutate(data, rng)
            context = f"(seed {seed!r}, case {tally.cases}, {len(data)} bytes: {data[:120].hex()})"
            reply = exchange(server.socket_path, data, rng, stall=stall)
            records = check_reply(reply, context)
            if valid:
                check_valid_answers(records, bodies, context)
            assert server.proc.poll() is None, f"the supervisor died {context}\n{server.log_text()[-3000:]}"
            tally.cases += 1
            tally.valid += valid
            tally.stalls += stall
            tally.bytes_sent += len(data)
            kind = "answered" if any(t == RT.END_REQUEST for t, _, _ in records) else (
                "management only" if records else "closed")
            tally.outcomes[kind] = tally.outcomes.get(kind, 0) + 1
            if stall or tally.cases % 50 == 0:
                served(server)
                tally.good_requests += 1
            if tally.cases == warmup:
                baseline = sample(server)
                baseline_fds = idle_fds(pids)
        served(server)
        tally.good_requests += 1
        log = server.log_text()
        after = sample(server)
        print(f"\nsocket fuzz (seed {seed!r}): {tally}")
        print(f"workers (fds, rss) after warm-up {baseline}, at the end {after}")
        assert server.worker_pids() == pids, f"a worker died under the fuzzer\n{log[-5000:]}"
        assert "unexpected error" not in log and "Traceback" not in log, log[-5000:]
        assert wait_until(lambda: idle_fds(pids, samples=3) == baseline_fds, 10), (
            f"workers hold more descriptors than after the warm-up ({baseline_fds}): "
            f"{ {pid: fd_targets(pid) for pid in pids} }")
        for pid, (_fds, rss) in after.items():
            # Python keeps freed memory in its arenas; growth past this would be a leak per case.
            grown = rss - baseline[pid][1]
            assert grown < 24 * 1024 * 1024, f"worker {pid} grew by {grown} bytes"
        assert wait_until(lambda: supervisor.num_fds() == supervisor_fds, 10)
    return tally


def test_mutated_streams_into_a_live_server_never_hurt_it() -> None:
    seed = os.environ.get("FUZZ_SEED") or os.urandom(6).hex()
    tally = fuzz_live_server(FUZZ_SECONDS, seed)
    assert tally.cases >= 200 and tally.valid > 0 and tally.good_requests > 0


@pytest.mark.soak
def test_mutated_streams_into_a_live_server_for_minutes() -> None:
    seed = os.environ.get("FUZZ_SEED") or os.urandom(6).hex()
    tally = fuzz_live_server(float(os.environ.get("SOAK_FUZZ_SECONDS", "90")), seed)
    assert tally.cases >= 1000
