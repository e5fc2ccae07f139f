"""A FastCGI client, as a library and as ``fcgiserver client`` (or ``python -m fcgiserver.client``).

It speaks to a FastCGI application the way a web server would (BEGIN_REQUEST, PARAMS,
STDIN, then reads STDOUT/STDERR/END_REQUEST), so a local socket can be tried without
setting up a front end.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

from fcgiserver.net.addresses import parse_address
from fcgiserver.ops.usage import Parser
from fcgiserver.protocol import (
    FCGI_KEEP_CONN,
    MAX_CONTENT_LEN,
    NULL_REQUEST_ID,
    ProtocolStatus,
    Record,
    RecordReader,
    RecordType,
    RemoteProtocolError,
    Role,
    decode_params,
    encode_params,
    encode_record,
    encode_stream,
)
from fcgiserver.protocol.records import BEGIN_BODY, END_BODY
from fcgiserver.spec import EXIT_CLIENT_CONNECTION, EXIT_CLIENT_REFUSED, EXIT_OK, EXIT_USAGE

__all__ = ["ClientError", "FastCGIClient", "Response", "main"]

_RECV_SIZE = 256 * 1024
# Stays below the 16-bit request id limit; 0 is reserved for management records.
_MAX_REQUEST_ID = 0xFFFF

Body = bytes | bytearray | memoryview | BinaryIO
ParamValue = str | bytes
Trace = Callable[[str], None]


class ClientError(Exception):
    """The exchange failed: no connection, a broken reply, or the peer went away."""


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes
    app_status: int
    protocol_status: int
    request_id: int = 0
    # The raw STDOUT stream, for callers that want the CGI headers exactly as written.
    stdout: bytes = field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        """The first header called `name` (any case), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_list(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


class FastCGIClient:
    """Sends requests to one FastCGI address; with keep_conn, all on one connection."""

    def __init__(self, address: str, timeout: float = 30.0, keep_conn: bool = False) -> None:
        try:
            parsed = parse_address(address)
        except ValueError as exc:
            raise ClientError(f"bad address {address!r}: {exc}") from None
        if parsed.kind == "fd":
            raise ClientError("a client needs unix:/path, /path, HOST:PORT or [IPV6]:PORT")
        self._address = parsed
        self.timeout = timeout
        self.keep_conn = keep_conn
        self.trace: Trace | None = None
        self._sock: socket.socket | None = None
        self._reader = RecordReader()
        self._next_id = 1

    # -- public API ----------------------------------------------------------

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        query: str = "",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: Body | None = None,
        params: Mapping[str, ParamValue] | None = None,
        role: Role = Role.RESPONDER,
    ) -> Response:
        """One request; `path` may carry "?query" when `query` is not given."""
        deadline = time.monotonic() + self.timeout
        header_pairs = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        body_size = _body_size(body)
        cgi = build_params(method, path, query=query, headers=header_pairs, content_length=body_size)
        if params:
            cgi.update(params)
        request_id = self._take_request_id()
        sock = self._connect(deadline)
        try:
            self._send_request(sock, request_id, role, cgi, body, deadline)
            response = self._read_response(sock, request_id, deadline)
        except BaseException:
            self.close()
            raise
        if not self.keep_conn:
            self.close()
        return response

    def get_values(self, names: Iterable[str]) -> dict[str, str]:
        """Ask the application for FCGI_GET_VALUES, e.g. FCGI_MAX_CONNS; unknown names are left out."""
        deadline = time.monotonic() + self.timeout
        wanted = list(names)
        asked = encode_params((name.encode("latin-1"), b"") for name in wanted)
        sock = self._connect(deadline)
        try:
            self._send(sock, encode_record(RecordType.GET_VALUES, NULL_REQUEST_ID, asked), deadline)
            self._trace(f"> GET_VALUES {' '.join(wanted)}")
            while True:
                record = self._next_record(sock, deadline)
                if record.type == RecordType.GET_VALUES_RESULT and record.request_id == NULL_REQUEST_ID:
                    break
                if record.type == RecordType.UNKNOWN_TYPE:
                    raise ClientError("the application does not know FCGI_GET_VALUES")
        except BaseException:
            self.close()
            raise
        if not self.keep_conn:
            self.close()
        try:
            pairs = decode_params(record.content)
        except RemoteProtocolError as exc:
            raise ClientError(f"garbled GET_VALUES_RESULT: {exc}") from None
        return {name.decode("latin-1"): value.decode("latin-1") for name, value in pairs}

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._reader = RecordReader()

    def __enter__(self) -> FastCGIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- wire ------------------------------------------------------------------

    def _take_request_id(self) -> int:
        # Different ids on a kept connection show whether the application answers the right one.
        request_id = self._next_id
        self._next_id = request_id % _MAX_REQUEST_ID + 1
        return request_id

    def _connect(self, deadline: float) -> socket.socket:
        if self._sock is not None:
            return self._sock
        addr = self._address
        try:
            if addr.kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                target: str | tuple[str, int] = addr.path
            else:
                family = socket.AF_INET6 if addr.is_ipv6 else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                target = (addr.host, addr.port)
            try:
                sock.settimeout(_remaining(deadline))
                sock.connect(target)
            except BaseException:
                sock.close()
                raise
        except TimeoutError:
            raise ClientError(f"timed out connecting to {addr.spec}") from None
        except OSError as exc:
            raise ClientError(f"cannot connect to {addr.spec}: {exc.strerror or exc}") from None
        if addr.kind == "tcp":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = RecordReader()
        self._trace(f"* connected to {addr.spec}")
        return sock

    def _send_request(
        self,
        sock: socket.socket,
        request_id: int,
        role: Role,
        cgi: Mapping[str, ParamValue],
        body: Body | None,
        deadline: float,
    ) -> None:
        flags = FCGI_KEEP_CONN if self.keep_conn else 0
        self._trace(f"> BEGIN_REQUEST id={request_id} role={role.name} keep_conn={bool(flags)}")
        for name, value in cgi.items():
            self._trace(f"> {name}: {_as_text(value)}")
        pairs = encode_params((name.encode("latin-1"), _as_bytes(value)) for name, value in cgi.items())
        head = b"".join(
            (
                encode_record(RecordType.BEGIN_REQUEST, request_id, BEGIN_BODY.pack(role, flags)),
                encode_stream(RecordType.PARAMS, request_id, pairs),
                encode_record(RecordType.PARAMS, request_id),
            )
        )
        try:
            if body is None or isinstance(body, bytes | bytearray | memoryview):
                payload = encode_stream(RecordType.STDIN, request_id, body or b"")
                self._send(sock, head + payload + encode_record(RecordType.STDIN, request_id), deadline)
            else:
                self._send(sock, head, deadline)
                for chunk in _read_chunks(body):
                    self._send(sock, encode_record(RecordType.STDIN, request_id, chunk), deadline)
                self._send(sock, encode_record(RecordType.STDIN, request_id), deadline)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The application may have answered early (say, 413) and closed: read what it said.
            self._trace(f"* sending stopped: {exc}")

    def _read_response(self, sock: socket.socket, request_id: int, deadline: float) -> Response:
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        while True:
            record = self._next_record(sock, deadline)
            rtype = record.type
            if record.request_id != request_id:
                self._trace(f"< type {rtype} for request {record.request_id} ignored")
                continue
            if rtype == RecordType.STDOUT:
                stdout.append(record.content)
            elif rtype == RecordType.STDERR:
                stderr.append(record.content)
            elif rtype == RecordType.END_REQUEST:
                if len(record.content) != END_BODY.size:
                    raise ClientError(f"END_REQUEST body of {len(record.content)} bytes, expected 8")
                app_status, protocol_status = END_BODY.unpack(record.content)
                self._trace(
                    f"< END_REQUEST app_status={app_status} protocol_status={_status_name(protocol_status)}"
                )
                break
            else:
                raise ClientError(f"unexpected record type {rtype} for request {request_id}")
        raw = b"".join(stdout)
        status, reason, headers, body = parse_cgi_output(raw)
        return Response(
            status=status,
            reason=reason,
            headers=headers,
            body=body,
            stderr=b"".join(stderr),
            app_status=app_status,
            protocol_status=protocol_status,
            request_id=request_id,
            stdout=raw,
        )

    def _next_record(self, sock: socket.socket, deadline: float) -> Record:
        reader = self._reader
        while True:
            try:
                record = reader.next_record()
            except RemoteProtocolError as exc:
                raise ClientError(f"garbled reply: {exc}") from None
            if record is not None:
                self._trace(f"< {_type_name(record.type)} id={record.request_id} {len(record.content)} bytes")
                return record
            try:
                sock.settimeout(_remaining(deadline))
                data = sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise ClientError(f"timed out after {self.timeout:g}s waiting for the reply") from None
            except OSError as exc:
                raise ClientError(f"connection failed: {exc.strerror or exc}") from None
            if not data:
                where = " inside a record" if reader.pending() else ""
                raise ClientError(f"connection closed by the application{where} before the reply ended")
            reader.feed(data)

    def _send(self, sock: socket.socket, data: bytes, deadline: float) -> None:
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(data)
        except TimeoutError:
            raise ClientError(f"timed out after {self.timeout:g}s sending the request") from None

    def _trace(self, line: str) -> None:
        if self.trace is not None:
            self.trace(line)


def build_params(
    method: str,
    path: str,
    *,
    query: str = "",
    headers: Sequence[tuple[str, str]] = (),
    content_length: int | None = 0,
    server_name: str = "localhost",
    server_port: int = 80,
    remote_addr: str = "127.0.0.1",
) -> dict[str, ParamValue]:
    """CGI/1.1 variables the way a web server builds them for `method path?query`."""
    raw_path, _, raw_query = path.partition("?")
    query = query or raw_query
    host = server_name
    params: dict[str, ParamValue] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "fcgiserver-client",
        "REQUEST_METHOD": method.upper(),
        "SCRIPT_NAME": "",
        # Fronts hand over PATH_INFO percent-decoded, as raw bytes.
        "PATH_INFO": unquote_to_bytes(raw_path or "/"),
        "REQUEST_URI": (raw_path or "/") + (f"?{query}" if query else ""),
        "QUERY_STRING": query,
        "CONTENT_LENGTH": "" if content_length is None else str(content_length),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_SCHEME": "http",
        "REMOTE_ADDR": remote_addr,
        "REMOTE_PORT": "0",
    }
    for name, value in headers:
        key = name.strip().upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            params["CONTENT_TYPE"] = value
        elif key == "CONTENT_LENGTH":
            continue  # the body decides it
        else:
            cgi_name = "HTTP_" + key
            # Repeated headers fold into one comma-separated value, as in HTTP.
            previous = params.get(cgi_name)
            params[cgi_name] = f"{_as_text(previous)}, {value}" if previous is not None else value
            if key == "HOST":
                host = value
    name, port = _split_host(host)
    params["SERVER_NAME"] = name or server_name
    params["SERVER_PORT"] = port or str(server_port)
    return params


def _split_host(host: str) -> tuple[str, str]:
    """("name", "port") from a Host header: "a.b:8080", "a.b", "[::1]:8080"."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    name, _, port = host.partition(":")
    return name, port if port.isdigit() else ""


def parse_cgi_output(stdout: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Split CGI output into (status, reason, headers, body); "Status:" sets the status line."""
    if not stdout:
        return 0, "", [], b""
    crlf = stdout.find(b"\r\n\r\n")
    lf = stdout.find(b"\n\n")
    if crlf != -1 and (lf == -1 or crlf < lf):
        head, body = stdout[:crlf], stdout[crlf + 4 :]
    elif lf != -1:
        head, body = stdout[:lf], stdout[lf + 2 :]
    else:
        head, body = stdout, b""
    status, reason = 200, "OK"
    headers: list[tuple[str, str]] = []
    has_location = has_status = False
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if not line:
            continue
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise ClientError(f"malformed CGI header line {line[:80]!r}")
        value = value.strip()
        if name.lower() == "status":
            code, _, text = value.partition(" ")
            if not (code.isdigit() and len(code) == 3):
                raise ClientError(f"malformed Status header {value!r}")
            status, reason = int(code), text.strip()
            has_status = True
            continue
        has_location = has_location or name.lower() == "location"
        headers.append((name, value))
    if has_location and not has_status:
        # CGI 6.2.3: a Location header without Status is a redirect.
        status, reason = 302, "Found"
    return status, reason, headers, body


def _body_size(body: Body | None) -> int | None:
    if body is None:
        return 0
    if isinstance(body, bytes | bytearray | memoryview):
        return memoryview(body).nbytes
    try:
        return os.fstat(body.fileno()).st_size - body.tell()
    except (OSError, AttributeError, io.UnsupportedOperation):
        pass
    try:
        here = body.tell()
        end = body.seek(0, io.SEEK_END)
        body.seek(here)
        return end - here
    except (OSError, io.UnsupportedOperation):
        return None


def _read_chunks(body: BinaryIO) -> Iterator[bytes]:
    while chunk := body.read(MAX_CONTENT_LEN):
        yield chunk


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _as_bytes(value: ParamValue) -> bytes:
    # Text goes out as UTF-8, the bytes a browser would have sent for it.
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _as_text(value: ParamValue) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _type_name(rtype: int) -> str:
    try:
        return RecordType(rtype).name
    except ValueError:
        return f"type {rtype}"


def _status_name(status: int) -> str:
    try:
        return ProtocolStatus(status).name
    except ValueError:
        return str(status)


# -- command line ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="fcgiserver client",
        description="Send one request to a FastCGI application and print the response, like curl.",
        epilog="Exit status: 0 the application answered, 1 connection or protocol failure, "
        "2 usage error, 3 the application refused the request (CANT_MPX_CONN, OVERLOADED, UNKNOWN_ROLE).",
    )
    p.add_argument("address", help="unix:/path.sock, /path.sock, HOST:PORT or [IPV6]:PORT")
    p.add_argument("method", nargs="?", default="GET", help="HTTP method (default GET)")
    p.add_argument("path", nargs="?", default="/", help="path with optional ?query (default /)")
    p.add_argument(
        "-H", "--header", action="append", default=[], metavar="'Name: value'", help="request header"
    )
    p.add_argument(
        "-d", "--data", metavar="TEXT|@FILE", help="request body; @FILE streams a file, @- reads stdin"
    )
    p.add_argument("-i", "--include", action="store_true", help="print the status line and headers too")
    p.add_argument("-v", "--verbose", action="store_true", help="show the params and records on stderr")
    p.add_argument("--authorizer", action="store_true", help="use the AUTHORIZER role")
    p.add_argument("--get-values", action="store_true", help="ask FCGI_MAX_CONNS/MAX_REQS/MPXS_CONNS instead")
    p.add_argument("-m", "--timeout", type=float, default=30.0, metavar="SECONDS", help="overall time limit")
    return p


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"header {text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = sys.stderr
    out = sys.stdout.buffer
    try:
        headers = [_parse_header(h) for h in args.header]
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    try:
        client = FastCGIClient(args.address, timeout=args.timeout)
    except ClientError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    if args.verbose:
        client.trace = lambda line: print(line, file=err, flush=True)
    try:
        with client:
            if args.get_values:
                values = client.get_values(["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"])
                for name, value in values.items():
                    out.write(f"{name}={value}\n".encode("latin-1"))
                out.flush()
                return EXIT_OK
            response = _send_cli_request(client, args, headers)
    except ClientError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_CLIENT_CONNECTION
    except OSError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_CLIENT_CONNECTION
    if response.stderr:
        err.write(response.stderr.decode("utf-8", "replace"))
        err.flush()
    if response.protocol_status != ProtocolStatus.REQUEST_COMPLETE:
        print(f"error: request refused: {_status_name(response.protocol_status)}", file=err)
        return EXIT_CLIENT_REFUSED
    if args.include:
        lines = [f"HTTP/1.1 {response.status} {response.reason}".rstrip()]
        lines += [f"{name}: {value}" for name, value in response.headers]
        out.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    out.write(response.body)
    out.flush()
    return EXIT_OK


def _send_cli_request(
    client: FastCGIClient, args: argparse.Namespace, headers: list[tuple[str, str]]
) -> Response:
    role = Role.AUTHORIZER if args.authorizer else Role.RESPONDER
    data: str | None = args.data
    if data is None:
        return client.request(args.method, args.path, headers=headers, role=role)
    if data == "@-":
        return client.request(
            args.method, args.path, headers=headers, body=sys.stdin.buffer.read(), role=role
        )
    if data.startswith("@"):
        with open(data[1:], "rb") as f:
            return client.request(args.method, args.path, headers=headers, body=f, role=role)
    return client.request(args.method, args.path, headers=headers, body=data.encode("utf-8"), role=role)


if __name__ == "__main__":
    raise SystemExit(main())
