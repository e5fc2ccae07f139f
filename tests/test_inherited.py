"""inherited.py and sharedconns.py in this process and in real forked children."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from fcgiserver import forksafety
from fcgiserver.safety import inherited
from fcgiserver.safety.inherited import InheritanceGuard, Refused, close_after_fork, survey
from fcgiserver.safety.sharedconns import SharedConnectionCheck, ShareInfo, ShareTable, socket_inodes

# Module globals, so the holder search has something to name.
HELD: list[socket.socket] = []
HELD_FILES: list[object] = []


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    """A listener, a client connected to it, and the accepted end."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        yield listener, client, accepted
    finally:
        for s in (listener, client, accepted):
            s.close()


def fds_of(resources: list[inherited.Resource]) -> set[int]:
    return {fd for r in resources for fd in r.fds}


def test_survey_lists_connected_stream_sockets_only() -> None:
    with tcp_pair() as (listener, client, accepted):
        unconnected = socket.socket()
        datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        datagram.connect(("127.0.0.1", 9))
        try:
            found = survey()
        finally:
            unconnected.close()
            datagram.close()
        fds = fds_of(found)
        assert {client.fileno(), accepted.fileno()} <= fds
        assert not {listener.fileno(), unconnected.fileno(), datagram.fileno()} & fds
        by_fd = {r.fds[0]: r for r in found}
        port = listener.getsockname()[1]
        assert by_fd[client.fileno()].description.endswith(f"-> 127.0.0.1:{port}")
        # Our own descriptors are the caller's to leave out.
        assert client.fileno() not in fds_of(survey(own_fds=[client.fileno()]))


def test_survey_lists_files_open_for_writing_but_not_our_logs(tmp_path: Path) -> None:
    written, ours, read_only = tmp_path / "w.txt", tmp_path / "ours.log", tmp_path / "r.txt"
    read_only.write_text("x")
    with open(written, "a") as w, open(ours, "a") as o, open(read_only) as r:
        fds = fds_of(survey(own_files=[str(ours)]))
        assert w.fileno() in fds
        assert o.fileno() not in fds and r.fileno() not in fds


def test_holders_are_named_and_sqlite_files_become_connections(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "a.sqlite3")
    db.execute("PRAGMA journal_mode=WAL").fetchall()
    db.execute("CREATE TABLE t (x)")
    a, b = socket.socketpair()
    HELD.append(a)
    try:
        named = inherited.name_holders(survey())
        pair = named[(os.fstat(a.fileno()).st_dev, os.fstat(a.fileno()).st_ino)]
        assert pair.holder == "held by tests.test_inherited.HELD (socket.socket)", pair
        unheld = named[(os.fstat(b.fileno()).st_dev, os.fstat(b.fileno()).st_ino)]
        assert "held by no module global" in unheld.holder, unheld
        databases = {r for r in named.values() if r.kind == "sqlite"}
        # The database and its -wal and -shm files: one connection.
        assert len(databases) == 1, databases
        (conn,) = databases
        assert conn.description == f"sqlite3 connection to {tmp_path / 'a.sqlite3'}"
        assert len(conn.fds) >= 2
    finally:
        HELD.clear()
        a.close()
        b.close()
        db.close()


def test_shareable_takes_sockets_only(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f, pytest.raises(TypeError):
        forksafety.shareable(f)
    with tcp_pair() as (_, client, _accepted):
        assert forksafety.shareable(client) is client
        try:
            assert client.fileno() not in fds_of(survey())
        finally:
            inherited._shareable.clear()


def test_refuse_lists_connections_and_not_files(tmp_path: Path) -> None:
    with tcp_pair() as (_, client, accepted), open(tmp_path / "w", "w"):
        with pytest.raises(Refused) as caught:
            InheritanceGuard("refuse").before_fork()
        assert {r.kind for r in caught.value.resources} == {"tcp"}
        assert {client.fileno(), accepted.fileno()} <= fds_of(caught.value.resources)


def _in_child(guard: InheritanceGuard, sock: socket.socket) -> int:
    """Fork; in the child, close_after_fork() and then try the socket. Returns the errno seen."""
    guard.before_fork()
    pid = os.fork()
    if pid == 0:
        code = 100
        try:
            close_after_fork()
            # The number stays taken: a new descriptor does not land on it.
            probe = os.open("/dev/null", os.O_RDONLY)
            if probe == sock.fileno():
                os._exit(101)
            try:
                sock.sendall(b"from the child\n")
                code = 0
            except OSError as exc:
                code = exc.errno or 102
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_close_fails_the_childs_next_use_and_keeps_the_parents_copy() -> None:
    with tcp_pair() as (_, client, accepted):
        assert _in_child(InheritanceGuard("close"), client) == errno.EPIPE
        # Nothing the child did reached the peer, and the parent's copy still works.
        client.sendall(b"from the parent\n")
        accepted.settimeout(5)
        assert accepted.recv(100) == b"from the parent\n"


def test_warn_leaves_the_childs_copy_connected() -> None:
    with tcp_pair() as (_, client, accepted):
        assert _in_child(InheritanceGuard("warn"), client) == 0
        accepted.settimeout(5)
        assert accepted.recv(100) == b"from the child\n"


def test_close_leaves_a_shareable_socket_connected() -> None:
    with tcp_pair() as (_, client, accepted):
        forksafety.shareable(client)
        try:
            assert _in_child(InheritanceGuard("close"), client) == 0
        finally:
            inherited._shareable.clear()
        accepted.settimeout(5)
        assert accepted.recv(100) == b"from the child\n"


# ---- the run-time check ----------------------------------------------------------------------

@contextlib.contextmanager
def sleeping_children(count: int) -> Iterator[list[int]]:
    pids = []
    try:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                signal.pause()
                os._exit(0)
            pids.append(pid)
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_two_children_holding_one_socket_are_reported_once_with_both_pids() -> None:
    a, b = socket.socketpair()
    try:
        with sleeping_children(2) as (first, second):
            inode = os.fstat(a.fileno()).st_ino
            assert inode in socket_inodes(first)
            check = SharedConnectionCheck(4)
            dups = check.check({first: 0, second: 3})
            assert {(d.inode, d.first, d.second) for d in dups} == {
                (inode, min(first, second), max(first, second)),
                (os.fstat(b.fileno()).st_ino, min(first, second), max(first, second))}
            assert check.check({first: 0, second: 3}) == []
            assert check.table.read(0) == ShareInfo(first, 2, (second,))
            assert check.table.read(3) == ShareInfo(second, 2, (first,))
            # Excluded inodes (our listeners, shareable sockets) do not count.
            check.check({first: 0, second: 3}, frozenset({inode, os.fstat(b.fileno()).st_ino}))
            assert check.table.read(0) == ShareInfo(first, 0, ())
            # A worker gone: its entry is cleared.
            check.check({first: 0})
            assert check.table.read(3) == ShareInfo(0, 0, ())
    finally:
        a.close()
        b.close()


def test_share_table_keeps_at_most_max_peers() -> None:
    table = ShareTable(2)
    table.write(1, ShareInfo(7, 3, tuple(range(100, 120))))
    info = table.read(1)
    assert info.pid == 7 and info.sockets == 3 and info.peers == tuple(range(100, 108))
    assert table.read(0) == ShareInfo(0, 0, ())


def test_a_socket_no_python_object_owns_is_named_without_a_module(tmp_path: Path) -> None:
    with tcp_pair() as (_, client, _accepted):
        raw = os.dup(client.fileno())  # as a C library holds one: a number, no socket object
        try:
            with open(tmp_path / "out.txt", "w") as log_file:
                HELD_FILES.append(log_file)
                named = inherited.name_holders(survey())
                st = os.fstat(raw)
                assert named[(st.st_dev, st.st_ino)].holder.startswith("held by ")  # client owns it too
                by_fd = {fd: r for r in named.values() for fd in r.fds}
                holder = by_fd[log_file.fileno()].holder
                assert holder.startswith("held by tests.test_inherited.HELD_FILES (_io.TextIOWrapper"), holder
                assert holder.endswith("_io.FileIO)"), holder
            # The socket object lets go of its number without closing it.
            os.close(client.detach())
            found = {f: r for r in inherited.name_holders(survey()).values() for f in r.fds}
            assert found[raw].holder.startswith("held by no Python object"), found[raw]
        finally:
            HELD_FILES.clear()
            os.close(raw)


def test_an_applications_row_factory_does_not_hide_its_database(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "rows.sqlite3")
    db.row_factory = lambda cursor, row: {"row": row}  # rows that cannot be indexed
    db.execute("CREATE TABLE t (x)")
    try:
        named = inherited.name_holders(survey())
        assert f"sqlite3 connection to {tmp_path / 'rows.sqlite3'}" in {r.description for r in named.values()}
    finally:
        db.close()


def test_the_policy_is_an_option_of_its_own() -> None:
    from fcgiserver.config import ConfigError, build_config

    assert build_config({}).inherited_connections == "warn"
    assert build_config({"inherited_connections": "CLOSE"}).inherited_connections == "close"
    assert build_config({}, {"inherited-connections": "refuse"}).inherited_connections == "refuse"
    with pytest.raises(ConfigError, match="--inherited-connections: expected one of warn, close, refuse"):
        build_config({"inherited_connections": "ignore"})
