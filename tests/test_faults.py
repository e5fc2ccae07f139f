"""Fault injection under load: workers killed or stopped, clients that stall or vanish, a full disk.

The load is bounded loopback traffic (wrk through a real lighttpd, or threads speaking
FastCGI); the asserts compare what failed with what was injected, never a timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from fcgiserver.client import ClientError, FastCGIClient
from fcgiserver.protocol import RecordType, encode_params, encode_record
from tests.support.frontends import running_lighttpd
from tests.support.load import fastcgi_load, fd_targets, idle_fds, wrk_load
from tests.support.server import ServerProcess, running_server, short_tempdir, wait_until

APP = "reliability_apps:application"
KILL_SECONDS = float(os.environ.get("FAULT_KILL_SECONDS", "10"))
KILL_EVERY = 0.1


def ok(server: ServerProcess, path: str = "/", timeout: float = 30.0) -> bytes:
    """A good request is answered in full (raises otherwise)."""
    response = FastCGIClient(server.address, timeout=timeout).request("GET", path)
    assert response.status == 200, (response, server.log_text()[-3000:])
    return response.body


def kill_random_workers(server: ServerProcess, seconds: float, every: float, rng: random.Random) -> int:
    """SIGKILL a random live worker every `every` seconds; returns how many were killed."""
    kills = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
        time.sleep(every)
    return kills


# -- kill -9 under load ---------------------------------------------------------------------------


def test_kill_9_every_100_ms_under_wrk_through_lighttpd_fails_only_in_flight_requests(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("FAULT_SEED", "kill-9"))
    with running_server(APP, workers=2) as server:
        assert server.socket_path is not None
        with running_lighttpd(tmp_path / "front", socket_path=server.socket_path) as front:
            with wrk_load(front.base_url + "/", seconds=KILL_SECONDS, connections=4) as load:
                time.sleep(0.5)
                kills = kill_random_workers(server, KILL_SECONDS - 1.0, KILL_EVERY, rng)
            result = load.result
            # The pool is whole again (the crash back-off caps the wait at 10 s) and serves.
            server.wait_for_workers(2, timeout=40)
            assert server.proc.poll() is None
            for _ in range(20):
                ok(server)
            after = subprocess.run(["wrk", "-t1", "-c2", "-d1s", front.base_url + "/"],
                                   capture_output=True, text=True, timeout=30).stdout
        print(f"\nkill -9: {kills} kills, {result.requests} requests, {result.failed} failed "
              f"{dict(result.statuses)} read_errors={result.read_errors} timeouts={result.timeouts}")
        # The crash back-off (0.1 s doubling) spaces the respawns, so fewer workers exist to kill
        # than kill attempts are made.
        assert kills >= 5, "the faults were not injected"
        assert result.requests > 0, result.output
        # One worker serves one connection at a time: each kill can take at most the request
        # it was answering. Nothing queued in the backlog or in the front may be lost.
        assert result.failed <= kills, (result.output, server.log_text()[-3000:])
        assert "Non-2xx" not in after and "Socket errors" not in after, after


def test_kill_9_under_fastcgi_load_fails_at_most_one_request_per_kill() -> None:
    rng = random.Random(os.environ.get("FAULT_SEED", "kill-9-fcgi"))
    with running_server(APP, workers=2) as server:
        with fastcgi_load(server.address, threads=3) as load:
            time.sleep(0.3)
            kills = kill_random_workers(server, 3.0, KILL_EVERY, rng)
            server.wait_for_workers(2, timeout=40)
            time.sleep(0.5)
        print(f"\nkill -9 (FastCGI): {kills} kills, {load.requests} requests, {dict(load.outcomes)}")
        assert kills >= 5
        assert load.failed <= kills, (load.errors, server.log_text()[-3000:])
        for _ in range(10):
            ok(server)


# -- SIGSTOP ----------------------------------------------------------------------------------------


def _in_thread(fn: object, results: list[object]) -> threading.Thread:
    def run() -> None:
        try:
            results.append(fn())  # type: ignore[operator]
        except Exception as exc:
            results.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_stopped_busy_worker_is_killed_at_the_timeout_and_queued_requests_are_served(
        tmp_path: Path) -> None:
    with running_server(APP, workers=1, args=["--timeout", "2"]) as server:
        (victim,) = server.worker_pids()
        mark = tmp_path / "inside"
        first: list[object] = []
        threads = [_in_thread(lambda: ok(server, f"/sleep?s=1&mark={mark}"), first)]
        assert wait_until(mark.exists, 30)
        os.kill(victim, signal.SIGSTOP)
        # Requests that arrive meanwhile wait in the listen backlog for a live worker.
        queued: list[object] = []
        threads += [_in_thread(lambda: ok(server, "/", timeout=60), queued) for _ in range(3)]
        (replacement,) = server.wait_for_workers(1, timeout=30, exclude=[victim])
        for t in threads:
            t.join(60)
        assert len(first) == 1 and isinstance(first[0], ClientError), first
        assert queued == [f"ok {replacement}\n".encode()] * 3, queued
        assert server.wait_for_log("timed out after", 10)
        assert ok(server) == f"ok {replacement}\n".encode()


def test_a_stopped_idle_worker_holds_no_request_and_a_stop_still_ends_it(tmp_path: Path) -> None:
    with running_server(APP, workers=2, args=["--timeout", "2", "--graceful-timeout", "2"]) as server:
        stopped, other = server.worker_pids()
        os.kill(stopped, signal.SIGSTOP)
        try:
            # Every request, one after another or several at once, goes to the live worker.
            answers = [ok(server) for _ in range(30)]
            together: list[object] = []
            for t in [_in_thread(lambda: ok(server, "/sleep?s=0.2"), together) for _ in range(4)]:
                t.join(60)
            assert set(answers) == {f"ok {other}\n".encode()}
            assert together == [f"slept {other}\n".encode()] * 4, together
            # Not busy, so not a timeout: the supervisor leaves it alone.
            time.sleep(2.5)
            assert psutil.Process(stopped).status() == psutil.STATUS_STOPPED
            assert "timed out" not in server.log_text()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        # Woken up, it serves again.
        seen: set[bytes] = set()
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            results: list[object] = []
            for t in [_in_thread(lambda: ok(server, "/sleep?s=0.3"), results) for _ in range(2)]:
                t.join(60)
            seen |= {r for r in results if isinstance(r, bytes)}
        assert seen == {f"slept {stopped}\n".encode(), f"slept {other}\n".encode()}
        # Stopped again, it cannot hear TERM: a stop kills it after the graceful timeout.
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        assert server.stop(timeout=30) == 0
        assert time.monotonic() - started < 20
        assert not psutil.pid_exists(stopped) or psutil.Process(stopped).status() == psutil.STATUS_ZOMBIE


# -- slow clients -----------------------------------------------------------------------------------


def _begin(request_id: int = 1) -> bytes:
    return encode_record(RecordType.BEGIN_REQUEST, request_id, struct.pack("!HB5x", 1, 0))


def _params(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return (encode_record(RecordType.PARAMS, 1, encode_params(pairs))
            + encode_record(RecordType.PARAMS, 1, b""))


GET_PARAMS = [(b"REQUEST_METHOD", b"GET"), (b"SCRIPT_NAME", b""), (b"PATH_INFO", b"/"),
              (b"QUERY_STRING", b""), (b"SERVER_PROTOCOL", b"HTTP/1.1")]
POST_PARAMS = [(b"REQUEST_METHOD", b"POST"), (b"SCRIPT_NAME", b""), (b"PATH_INFO", b"/echo"),
               (b"QUERY_STRING", b""), (b"SERVER_PROTOCOL", b"HTTP/1.1"), (b"CONTENT_LENGTH", b"1000")]

# Where a client stops sending, and stays connected: each must cost a worker only the read timeout.
STALLS = {
    "half_a_header": _begin()[:4],
    "half_a_begin_body": _begin()[:12],
    "params_not_ended": _begin() + encode_record(RecordType.PARAMS, 1, encode_params(GET_PARAMS)),
    "half_a_params_record": _begin() + encode_record(RecordType.PARAMS, 1, encode_params(GET_PARAMS))[:20],
    "half_the_body": _begin() + _params(POST_PARAMS) + encode_record(RecordType.STDIN, 1, b"x" * 500),
    "stdin_not_ended": _begin() + _params(POST_PARAMS) + encode_record(RecordType.STDIN, 1, b"x" * 1000),
}


def _stalled_connection(path: str, data: bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    sock.sendall(data)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_stalled_clients_are_dropped_at_the_read_timeout_and_cannot_block_the_pool() -> None:
    # Two stalls per worker of every kind: 12 stalled connections against 2 workers.
    with running_server(APP, workers=2, args=["--read-timeout", "1", "--timeout", "20"]) as server:
        assert server.socket_path is not None
        fds_before = idle_fds(server.worker_pids())
        stalled = [_stalled_connection(server.socket_path, data)
                   for data in STALLS.values() for _ in range(2)]
        try:
            # A good request queued behind every stall is still answered.
            assert ok(server, timeout=60).startswith(b"ok ")
            for sock in stalled:
                assert _closed_by_peer(sock)
        finally:
            for sock in stalled:
                sock.close()
        log = server.log_text()
        assert log.count("closing connection: the peer sent nothing") >= 6, log
        # No worker was lost or replaced over it, and none keeps a descriptor of a stall.
        assert wait_until(lambda: idle_fds(server.worker_pids(), samples=3) == fds_before, 10)
        assert ok(server).startswith(b"ok ")


def test_a_client_trickling_params_byte_by_byte_is_dropped_within_the_request_timeout() -> None:
    with running_server(APP, workers=1, args=["--read-timeout", "1", "--timeout", "3"]) as server:
        assert server.socket_path is not None
        data = _begin() + encode_record(RecordType.PARAMS, 1, encode_params([(b"X_PAD", b"p" * 60_000)]))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(server.socket_path)
            started = time.monotonic()
            dropped = False
            for i in range(len(data)):
                try:
                    sock.sendall(data[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    dropped = True
                    break
                if time.monotonic() - started > 7:
                    break
                time.sleep(0.4)
        assert dropped, "one byte every 0.4 s held the only worker for 7 s (read timeout 1 s, timeout 3 s)"


# -- a full disk ------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """A small tmpfs at `path` (needs mount rights: root or CAP_SYS_ADMIN), always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    # The tests run as root (the Makefile installs Debian packages too), so mounting works.
    assert done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.strip()}"
    try:
        yield path
    finally:
        # Lazy: a process of the test that still holds a file there must not keep it mounted.
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        with contextlib.suppress(OSError):
            path.rmdir()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_until(root: Path, free: int) -> None:
    """Leaves `free` bytes free on root's filesystem, with one filler file outside the storage dirs."""
    filler = root / "filler"
    filler.unlink(missing_ok=True)
    spare = free_bytes(root) - free
    if spare > 0:
        with open(filler, "wb") as fh:
            fh.write(b"\0" * spare)
            fh.flush()
            os.fsync(fh.fileno())


def noise_png(nbytes: int, seed: int) -> bytes:
    from tests.support.stack import noise_png as make

    return make(nbytes, seed=seed)


STORAGE_DIRS = ("pictures", "large", "thumbs", ".tmp", ".claims", ".meta", ".gone", ".blobs", ".txn")


def storage_files(root: Path) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(root / d)) for d in STORAGE_DIRS if (root / d).is_dir()}


def test_disk_filling_up_at_every_stage_of_an_upload_is_a_507_that_leaves_no_partial_file(
        tmp_path: Path) -> None:
    from handlers.storage import check_consistency
    from tests.support.stack import http_request, multipart, running_stack

    picture = noise_png(200_000, seed=5)
    body, ctype = multipart("filling.png", "image/png", picture)
    headers = {"Content-Type": ctype, "Accept": "application/json"}
    outcomes: list[tuple[int, int]] = []
    with tmpfs(tmp_path.resolve() / "media", 2048) as root, running_stack(
            tmp_path, env={"UPLOAD_SECRET": "s" * 32, "UPLOAD_LARGE_BYTES": str(10 * 1024 * 1024)}) as stack:
        assert stack.media_root == root
        # From too little room for the spooled upload, through room for the spool but not the
        # public copy, the thumbnail or the record, up to room for all of it.
        for free in range(64 * 1024, 640 * 1024, 24 * 1024):
            fill_until(root, free)
            reply = http_request(stack.base_url, "POST", "/upload", body=body, headers=headers)
            outcomes.append((free, reply.status))
            if reply.status == 507:
                assert b'"disk_full"' in reply.body, reply.body
                files = storage_files(root)
                assert all(not names for d, names in files.items() if d != ".gone"), (free, files)
            else:
                assert reply.status == 201, (free, reply.status, reply.body, stack.logs()[-3000:])
                record = json.loads(reply.body)["files"][0]
                assert http_request(stack.base_url, "GET", record["url"]).body == picture
                deleted = http_request(stack.base_url, "POST", record["delete_url"],
                                       headers={"X-Delete-Token": record["delete_token"]})
                assert deleted.status == 200
            assert check_consistency(root, deep=True) == [], free
        (root / "filler").unlink()
        print(f"\nfull disk: (free bytes, status) {outcomes}")
        statuses = [status for _, status in outcomes]
        assert 507 in statuses and 201 in statuses, outcomes
        # Once there is room the service stores pictures again; nothing broke on the way.
        assert http_request(stack.base_url, "POST", "/upload", body=body, headers=headers).status == 201
        assert "Traceback" not in stack.server.log_text()


def test_a_full_spool_folder_answers_507_and_says_why_in_the_log(tmp_path: Path) -> None:
    # The server spools request bodies above --spool-threshold to TMPDIR before the app runs.
    body = os.urandom(300_000)
    with tmpfs(Path(short_tempdir("spool-")), 128) as spool, running_server(
            APP, workers=1, env={"TMPDIR": str(spool)}, args=["--spool-threshold", "65536"]) as server:
        assert server.socket_path is not None
        with running_lighttpd(tmp_path / "front", socket_path=server.socket_path) as front:
            from tests.support.stack import http_request

            reply = http_request(front.base_url, "POST", "/echo", body=body,
                                 headers={"Content-Type": "application/octet-stream"})
            small = http_request(front.base_url, "POST", "/echo", body=b"fits in memory")
        assert os.listdir(spool) == []
        assert small.status == 200
        assert reply.status == 507, (reply, server.log_text()[-2000:], front.logs()[-2000:])
        # The worker's log line travels through the supervisor's relay: it may trail the reply.
        assert server.wait_for_log("No space left on device"), server.log_text()[-2000:]
        assert ok(server).startswith(b"ok ")


# -- clients that vanish mid-response ---------------------------------------------------------------


def _request_bytes(path: str, query: str) -> bytes:
    pairs = [(b"REQUEST_METHOD", b"GET"), (b"SCRIPT_NAME", b""), (b"PATH_INFO", path.encode()),
             (b"QUERY_STRING", query.encode()), (b"SERVER_PROTOCOL", b"HTTP/1.1")]
    return _begin() + _params(pairs) + encode_record(RecordType.STDIN, 1, b"")


def test_clients_that_disconnect_mid_response_cost_nothing(tmp_path: Path) -> None:
    rng = random.Random("disconnects")
    with running_server(APP, workers=2, args=["--read-timeout", "5"]) as server:
        assert server.socket_path is not None
        pids = server.worker_pids()
        fds_before = idle_fds(pids)
        # Straight to the socket: gone after 0 bytes, after the head, or somewhere in a 6 MB body,
        # closing cleanly or with a reset.
        for i in range(30):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(30)
                sock.connect(server.socket_path)
                sock.sendall(_request_bytes("/stream", "n=100&size=65536"))
                wanted = rng.choice([0, 1, 100, 70_000, 3_000_000])
                got = 0
                while got < wanted and (chunk := sock.recv(65536)):
                    got += len(chunk)
                if i % 2:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Through lighttpd: HTTP clients that read part of a 13 MB download and hang up.
        with running_lighttpd(tmp_path / "front", socket_path=server.socket_path) as front:
            for _ in range(10):
                with socket.create_connection(("127.0.0.1", front.port), timeout=30) as sock:
                    sock.sendall(b"GET /stream?n=200&size=65536 HTTP/1.1\r\n"
                                 b"Host: x\r\nConnection: close\r\n\r\n")
                    got, wanted = 0, rng.choice([1, 200_000, 2_000_000])
                    while got < wanted and (chunk := sock.recv(65536)):
                        got += len(chunk)
            from tests.support.stack import http_request

            assert http_request(front.base_url, "GET", "/").status == 200
        assert server.worker_pids() == pids, "a worker died of a client that went away"
        assert wait_until(lambda: idle_fds(pids, samples=3) == fds_before, 30), (
            {pid: fd_targets(pid) for pid in pids}, fds_before, server.log_text()[-3000:])
        assert "unexpected error" not in server.log_text()
        assert ok(server).startswith(b"ok ")


# -- a worker killed inside the storage's critical steps --------------------------------------------


def test_a_delete_killed_after_its_tombstone_is_finished_by_recovery(tmp_path: Path) -> None:
    from handlers.recovery import recover
    from handlers.storage import Storage, check_consistency
    from tests.support.stack import http_request, multipart, running_stack

    # No recovery thread in the workers: this test is the only one to recover, so the state
    # it checks before recovering cannot change under it.
    env = {"UPLOAD_SECRET": "s" * 32, "UPLOAD_RECOVER_SECONDS": "0"}
    with running_stack(tmp_path, env=env) as stack:
        body, ctype = multipart("a.png", "image/png", noise_png(5000, seed=9))
        reply = http_request(stack.base_url, "POST", "/upload", body=body,
                             headers={"Content-Type": ctype, "Accept": "application/json"})
        assert reply.status == 201
        pid = json.loads(reply.body)["files"][0]["id"]
        # A delete links .gone/<id> first (the delete happens once), then unlinks the files: a
        # SIGKILL between the two, its journal lost, leaves exactly this on disk.
        (stack.media_root / ".gone" / pid).touch()
        assert http_request(stack.base_url, "GET", f"/{pid}").status == 404
        root = stack.media_root
        assert check_consistency(root) != []
        assert f".gone/{pid}" in recover(Storage(root), full=True)
        assert http_request(stack.base_url, "GET", f"/pictures/{pid}.png").status == 404
    assert check_consistency(root, deep=True) == []


# -- a notify socket nobody reads -------------------------------------------------------------------


def test_a_notify_socket_nobody_reads_never_stalls_the_supervisor() -> None:
    # systemd reads its notify socket; a stuck or absent reader must not stop the supervisor
    # from reaping, respawning and reloading. The queue of a unix datagram socket holds
    # net.unix.max_dgram_qlen datagrams (10 by default): fill it before the server starts.
    folder = short_tempdir("notify-")
    path = os.path.join(folder, "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.setblocking(False)
    try:
        with contextlib.suppress(BlockingIOError):
            for _ in range(10_000):
                sender.sendto(b"STATUS=filler", path)
        with running_server(APP, workers=2, env={"NOTIFY_SOCKET": path}) as server:
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            server.wait_for_workers(2, timeout=30, exclude=[victim])
            server.send_signal(signal.SIGHUP)
            assert server.wait_for_log("reload complete", timeout=30), server.log_text()[-3000:]
            assert ok(server).startswith(b"ok ")
    finally:
        sender.close()
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(folder)
