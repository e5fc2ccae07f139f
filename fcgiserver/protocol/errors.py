"""The only exceptions the protocol layer raises on purpose.

Anything else escaping the parser is a bug in this package.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: the FastCGI conversation cannot go on as it is."""


class LocalProtocolError(ProtocolError):
    """Our own caller used the API in a way the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol; close that connection."""
