# -*- test-case-name: tests.core.test_netgroup -*-
"""
Client addresses grouped by network prefix: what one client, or one site,
may hold of the server before it is known (L{izreg.service.tls.admission},
L{izreg.http.limits.ConnectionLimits}).

One IPv4 address is usually one site (a NAT); an IPv6 site, or one host,
has a whole /64 (SLAAC, privacy addresses: any number of addresses at will),
so IPv6 addresses count per /64, not each. An IPv4-mapped IPv6 address
(C{::ffff:192.0.2.1}, a dual-stack socket's view of an IPv4 client) is that
IPv4 address. Anything that is not an IP address (a UNIX socket's "local")
is its own group.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address


def address_group(address: str, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """
    The group of C{address}: the address itself for a full-length prefix, else
    its network in CIDR form (C{"203.0.113.0/24"}, C{"2001:db8:1:2::/64"}).
    """
    if ":" not in address:
        if ipv4_prefix >= 32:
            return address  # the common case, parsed by nothing
        return _ipv4_group(address, ipv4_prefix)
    try:
        ip = IPv6Address(address.partition("%")[0])  # a link-local address's zone is not part of it
    except ValueError:
        return address
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return str(mapped) if ipv4_prefix >= 32 else _ipv4_group(str(mapped), ipv4_prefix)
    if ipv6_prefix >= 128:
        return str(ip)
    shift = 128 - ipv6_prefix
    return f"{IPv6Address(int(ip) >> shift << shift)}/{ipv6_prefix}"


def _ipv4_group(address: str, prefix: int) -> str:
    try:
        shift = 32 - prefix
        return f"{IPv4Address(int(IPv4Address(address)) >> shift << shift)}/{prefix}"
    except ValueError:
        return address
