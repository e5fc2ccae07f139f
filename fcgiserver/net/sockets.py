"""Listening sockets: bind unix/TCP addresses, or adopt fd 0 or systemd's LISTEN_FDS.

Listeners are made once in the supervisor and inherited by every worker across fork().
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat

from fcgiserver.config import Config, ConfigError
from fcgiserver.net.addresses import Address, parse_address
from fcgiserver.ops.usage import os_reason
from fcgiserver.protocol import RecordType
from fcgiserver.protocol.params import encode_params
from fcgiserver.protocol.records import encode_record

log = logging.getLogger("fcgiserver.sockets")

# systemd passes sockets starting at this descriptor (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3
# Seconds a server listening on our unix path gets to answer FCGI_GET_VALUES before its
# socket counts as dead and is replaced.
PROBE_TIMEOUT = 5.0


class BindError(RuntimeError):
    """A listener could not be set up; the message names the address and the reason."""


def open_listeners(config: Config) -> list[socket.socket]:
    """The --bind addresses, else fd 0 when it listens, else LISTEN_FDS; else ConfigError."""
    if config.bind:
        listeners: list[socket.socket] = []
        try:
            for spec in config.bind:
                listeners.append(open_listener(parse_address(spec), config))
        except BaseException:
            close_listeners(listeners, config)
            raise
        return listeners
    adopted = adopt_stdin()
    if adopted is not None:
        return [adopted]
    inherited = adopt_systemd_fds()
    if inherited:
        return inherited
    raise ConfigError(
        "no --bind given, stdin is not a listening socket and no systemd sockets were passed "
        "(LISTEN_FDS); use --bind unix:/path/to.sock or --bind HOST:PORT"
    )


def open_listener(address: Address, config: Config) -> socket.socket:
    if address.kind == "unix":
        return bind_unix(address.path, config)
    if address.kind == "tcp":
        return bind_tcp(address, config.backlog)
    return adopt_fd(address.fd, f"fd://{address.fd}")


def bind_unix(path: str, config: Config) -> socket.socket:
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Created with no permissions for others, then opened up to --socket-mode: a client
    # never gets a window in which the umask's wider default applies.
    old_umask = os.umask(0o177) if config.socket_mode is not None else None
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot bind unix:{path}: {os_reason(path, exc)}") from None
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    try:
        if config.socket_owner is not None:
            os.chown(path, *config.socket_owner)
        if config.socket_mode is not None:
            os.chmod(path, config.socket_mode)
        sock.listen(config.backlog)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise BindError(f"cannot set up unix:{path}: {exc.strerror}") from None
    return sock


def remove_stale_socket(path: str) -> None:
    """Unlinks a socket file left by a dead server, or one whose listener answers nothing;
    refuses a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"cannot bind unix:{path}: the path exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.settimeout(2.0)
            probe.connect(path)
        except ConnectionRefusedError:
            # Nobody listens: the file is what a crashed or killed server left behind.
            log.info("removing stale socket file %s", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                # A full backlog still means somebody is listening.
                raise BindError(f"cannot bind unix:{path}: another server is listening on it") from None
            raise BindError(f"cannot bind unix:{path}: {exc.strerror}") from None
        if answers(probe):
            raise BindError(f"cannot bind unix:{path}: another server is listening on it")
    # Accepted by the kernel, answered by nobody: a listener held by processes that no longer
    # serve (stopped, or stuck) must not keep a new server off its path.
    log.warning("replacing socket file %s: something listens on it but answered nothing within %.0f s",
                path, PROBE_TIMEOUT)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def answers(sock: socket.socket, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the FastCGI server on the connected `sock` answers FCGI_GET_VALUES (any reply
    counts: a server that does not know the record says so)."""
    try:
        sock.settimeout(timeout)
        sock.sendall(encode_record(RecordType.GET_VALUES, 0, encode_params([(b"FCGI_MAX_CONNS", b"")])))
        return sock.recv(1) != b""
    except OSError:
        return False


def bind_tcp(address: Address, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_UNSPEC
    try:
        infos = socket.getaddrinfo(address.host, address.port, family, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot bind {address.spec}: {exc.strerror}") from None
    fam, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(fam, kind, proto)
    try:
        # A restarted server must not wait out TIME_WAIT connections of its predecessor.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot bind {address.spec}: {exc.strerror}") from None
    return sock


def is_listening_socket(fd: int) -> bool:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(fileno=fd)
    try:
        return bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        probe.detach()


def adopt_fd(fd: int, what: str) -> socket.socket:
    if not is_listening_socket(fd):
        raise BindError(f"cannot use {what}: descriptor {fd} is not a listening socket")
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    return sock


def adopt_stdin() -> socket.socket | None:
    """fd 0 as a listener, the way lighttpd's bin-path and spawn-fcgi start a backend."""
    if not is_listening_socket(0):
        return None
    # The listener moves to a new descriptor and fd 0 becomes /dev/null, so an application
    # that reads stdin gets EOF instead of accepting connections by accident.
    sock = socket.socket(fileno=os.dup(0))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    log.info("using the listening socket passed on stdin")
    return sock


def adopt_systemd_fds() -> list[socket.socket]:
    """Sockets passed by systemd socket activation, if they are meant for this process."""
    env = os.environ
    if "LISTEN_FDS" not in env:
        return []
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    # Workers and any program we start must not try to adopt the same descriptors.
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if pid != str(os.getpid()):
        log.warning("ignoring LISTEN_FDS: LISTEN_PID=%s is not this process (%d)", pid, os.getpid())
        return []
    if not count.isdigit():
        raise BindError(f"LISTEN_FDS={count!r} is not a number")
    return [adopt_fd(fd, f"LISTEN_FDS descriptor {fd}")
            for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))]


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return "unix:" + (name.decode("latin-1") if isinstance(name, bytes) else str(name))
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


def bound_here(sock: socket.socket, config: Config) -> bool:
    """True for a listener this server bound from --bind (not one passed in by fd 0, fd://N or
    systemd, which belongs to whoever passed it)."""
    try:
        name = sock.getsockname()
    except OSError:
        return False
    for spec in config.bind:
        address = parse_address(spec)
        if address.kind == "unix" and sock.family == socket.AF_UNIX and name == address.path:
            return True
        if address.kind == "tcp" and sock.family != socket.AF_UNIX and name[1] == address.port:
            return True
    return False


def held_by(sock: socket.socket, pid: int) -> bool | None:
    """Whether process `pid` has `sock` open too; None when we may not look."""
    try:
        target = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for name in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{name}") == target:
                return True
    return False


def releasable(sock: socket.socket, config: Config, spawner: int) -> bool:
    """May a server whose supervisor died shut `sock` down for everyone? Yes for one it bound
    itself, and for one passed in by a process that no longer holds it (lighttpd's bin-path
    and spawn-fcgi close their copy; lighttpd binds a new socket for the backend it starts
    next, and spawns it only when a connect() to the path fails). No when the process that
    started us keeps it (systemd, supervisord's fcgi-program), or when we may not look."""
    return bound_here(sock, config) or held_by(sock, spawner) is False


def close_listeners(listeners: list[socket.socket], config: Config) -> None:
    """Closes the listeners and unlinks the unix socket files that --bind created."""
    ours = {parse_address(spec).path for spec in config.bind if spec.startswith("unix:")}
    for sock in listeners:
        path = None
        if sock.family == socket.AF_UNIX and sock.fileno() >= 0:
            name = sock.getsockname()
            path = name if isinstance(name, str) else None
        sock.close()
        if path and path in ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
