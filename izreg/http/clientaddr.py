# -*- test-case-name: tests.http.test_clientaddr -*-
"""
The client's address, behind trusted reverse proxies (pure but for the request).

The peer of the TCP connection is the client, unless it is one of
``[server] trusted_proxies`` (addresses or CIDR networks): then the
``Forwarded`` header (RFC 7239 ``for=``), else ``X-Forwarded-For``, is read
from the right, skipping trusted proxies, and the first address that is not
one is the client. A hop that names no address (a ``Forwarded`` element
without ``for=``, ``for=unknown``, an obfuscated ``for=_hidden``, anything
unreadable) ends the walk: the client is the last trusted proxy read, never
a hop further left, which whoever sent the request may have written. Headers from any other peer are ignored, so a client
cannot choose its own address (for the failed-authentication brake, the
connection caps and the logs).

A proxy sets one of the two headers (haproxy's C{option forwardfor}:
C{X-Forwarded-For}) and passes the other on as the client sent it. So when
a trusted proxy's request carries both and they name different clients,
neither is believed: the client is the proxy itself. Else a client behind
haproxy would send C{Forwarded: for=<anyone>} and be anyone: guess keys
past the brake from ever new addresses, or brake another client's key from
that client's address (a 429 for its every request), and sign the log
lines with that address.
"""

from __future__ import annotations

import ipaddress
import re


class TrustedProxies:
    def __init__(self, networks=()) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack listener's (interface=::) view of an IPv4 proxy
        return any(ip in network for network in self.networks)

    def client(self, peer: str, headers) -> str:
        """The client address of a request from C{peer} with C{headers} (twisted Headers)."""
        if not self.networks or not self.trusted(peer):
            return peer
        forwarded = _forwarded(headers.getRawHeaders(b"forwarded") or [])
        xff = [h.strip() for v in headers.getRawHeaders(b"x-forwarded-for") or []
               for h in v.decode("latin-1").split(",")][-MAX_HOPS:]
        if forwarded and xff:  # one is the proxy's, the other the client's own: believe neither if they differ
            client = self._hops(peer, forwarded)
            return client if client == self._hops(peer, xff) else peer
        return self._hops(peer, forwarded or xff)

    def _hops(self, peer: str, hops: list[str]) -> str:
        """The client of C{peer}'s request whose forwarding header names C{hops}, the nearest last."""
        address = peer
        for hop in reversed(hops[-MAX_HOPS:]):  # past them, the farthest trusted proxy read
            hop = _strip_port(hop)
            try:
                ip = ipaddress.ip_address(hop)
            except ValueError:
                return address  # a hop we cannot read: the last proxy we trust is all we know
            if getattr(ip, "scope_id", None) is not None:
                return address  # an IPv6 zone is any text (control characters into the log, a brake per zone)
            if ip.version == 6 and ip.ipv4_mapped is not None:  # haproxy on a dual-stack bind (:::443 v4v6)
                ip = ip.ipv4_mapped  # names an IPv4 client ::ffff:192.0.2.1: logged ::ffff:c000:201, braked apart
            hop = str(ip)  # one spelling per address: one brake, a clean log line
            address = hop
            if not self.trusted(hop):
                return hop
        return address


#: the most hops read, from the right: a chain of trusted proxies is a few long, and every hop is parsed (a
#: client behind one sent 1,000 trusted addresses in 11 KB of X-Forwarded-For: 5 ms of the reactor a request)
MAX_HOPS = 16

_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)', re.I)


def _forwarded(values: list[bytes]) -> list[str]:
    """
    The C{for=} of the last L{MAX_HOPS} elements of the C{Forwarded} headers
    C{values}; C{""} (not an address: it ends the walk) for an element without
    one. RFC 7239 lets a proxy leave C{for=} out: skipped, the client's own
    C{for=} left of that proxy's element would be read as the client.
    """
    elements = [e.strip() for value in values for e in value.decode("latin-1").split(",")]
    hops = []
    for element in [e for e in elements if e][-MAX_HOPS:]:  # empty list elements are none (RFC 9110 5.6.1)
        match = _FOR.search(element)
        hops.append(match.group(1).strip('"') if match else "")
    return hops


def _strip_port(hop: str) -> str:
    if hop.startswith("["):
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:
        return hop.partition(":")[0]
    return hop


def forwarded_scheme(request) -> str | None:
    """
    C{"https"} or C{"http"}: the scheme a trusted proxy says the client used
    (C{X-Forwarded-Proto}, its last value: the nearest proxy's; haproxy:
    C{http-request set-header X-Forwarded-Proto https}), else C{None} (no
    such header, another value, or a peer not in C{trusted_proxies}).
    """
    peer, proxies = _peer(request)
    if not proxies or not proxies.trusted(peer):
        return None
    values = [v.strip().lower() for value in request.requestHeaders.getRawHeaders(b"x-forwarded-proto") or []
              for v in value.decode("latin-1").split(",")]
    return values[-1] if values and values[-1] in ("http", "https") else None


def client_address(request) -> str:
    """The client address of a twisted request (the site's trusted proxies applied)."""
    peer, proxies = _peer(request)
    if proxies:
        return proxies.client(peer, request.requestHeaders)
    return peer


def _peer(request) -> tuple[str, TrustedProxies | None]:
    """The TCP peer of a twisted request (C{"unknown"} when it has none) and its site's trusted proxies."""
    peer = getattr(getattr(request, "client", None), "host", None) or "unknown"
    return peer, getattr(getattr(getattr(request, "channel", None), "site", None), "proxies", None)
