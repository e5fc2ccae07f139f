"""Events a ServerConnection reports to its caller."""

from __future__ import annotations

from dataclasses import dataclass

from .constants import Role

# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made
# building the two events of a request cost more than half a microsecond. Events are
# read-only by convention; nothing in the server changes one after it is made.

@dataclass(slots=True)
class RequestStarted:
    """The PARAMS stream ended; params are latin-1 strings as PEP 3333 wants.

    The dict belongs to the caller, who may mutate it.
    """

    request_id: int
    role: Role
    keep_conn: bool
    params: dict[str, str]


@dataclass(slots=True)
class StdinData:
    request_id: int
    data: bytes


@dataclass(slots=True)
class StdinEnd:
    request_id: int


@dataclass(slots=True)
class RequestAborted:
    """FCGI_ABORT_REQUEST arrived, or the peer closed while a request was active."""

    request_id: int


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed the connection on a record boundary."""


class NeedData:
    """Type of the NEED_DATA sentinel: feed more bytes before asking again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()

Event = RequestStarted | StdinData | StdinEnd | RequestAborted | ConnectionClosed
