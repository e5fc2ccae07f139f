"""Which TCP peers may speak FastCGI to us: --allow-from and FCGI_WEB_SERVER_ADDRS.

Whoever reaches the socket sends the params the app trusts (REMOTE_ADDR, HTTPS, ...), so
over TCP only the front's addresses should get through (PHP-FPM's listen.allowed_clients).
FCGI_WEB_SERVER_ADDRS is read as libfcgi and flup read it: a comma-separated list of
addresses; set and non-empty, it restricts, even when no entry in it is valid (a typo must
not open the server to everyone). Here an entry may also be a network (10.0.0.0/8), and the
two sources add up. Unix sockets are guarded by their file mode instead.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Mapping

from fcgiserver.config import Config

log = logging.getLogger("fcgiserver.allowlist")

ENV = "FCGI_WEB_SERVER_ADDRS"
# A refused address is logged at most once per this many seconds (per worker).
LOG_INTERVAL = 60.0
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowList:
    __slots__ = ("_exact", "_logged", "_networks", "described")

    def __init__(self, networks: list[_Network]) -> None:
        # Single addresses are the usual case: a set lookup on the peer's text, no parsing.
        self._exact = frozenset(str(n.network_address) for n in networks
                                if n.prefixlen == n.max_prefixlen)
        self._networks = [n for n in networks if n.prefixlen != n.max_prefixlen]
        self._logged: dict[str, float] = {}
        self.described = ", ".join(str(n) for n in networks) or "nobody"

    def allows(self, host: str) -> bool:
        if host in self._exact:
            return True
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
            if str(ip) in self._exact:
                return True
        return any(ip in n for n in self._networks)

    def refused(self, host: str) -> None:
        now = time.monotonic()
        if now - self._logged.get(host, -LOG_INTERVAL) < LOG_INTERVAL:
            return
        if len(self._logged) > 1024:  # many addresses: forget those logged long ago
            self._logged = {h: t for h, t in self._logged.items() if now - t < LOG_INTERVAL}
        self._logged[host] = now
        log.warning("refused a connection from %s: not in --allow-from / %s (%s)", host, ENV,
                    self.described)


def build(config: Config, environ: Mapping[str, str] = os.environ) -> AllowList | None:
    """The allowlist for TCP clients, or None when every client is allowed."""
    networks = [ipaddress.ip_network(n) for n in config.allow_from]
    listed = [item.strip() for item in environ.get(ENV, "").split(",") if item.strip()]
    for item in listed:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            log.warning("%s: %r is not an address; it matches nothing", ENV, item)
    if not config.allow_from and not listed:
        return None
    return AllowList(networks)
