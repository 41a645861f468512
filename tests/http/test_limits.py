"""L{ConnectionLimits} per client group: IPv4 per address, IPv6 per /64, trusted proxies apart."""

from __future__ import annotations

from izreg.http.clientaddr import TrustedProxies
from izreg.http.limits import ConnectionLimits


def test_ipv6_addresses_count_per_64_and_ipv4_per_address():
    limits = ConnectionLimits(100, 3)
    assert [limits.admit(f"2001:db8:0:1::{i}") for i in range(1, 4)] == [None] * 3
    refused = limits.admit("2001:db8:0:1:ffff::9")  # another address of the same /64
    assert refused is not None and refused[0].code.name == "TOOMANYREQUESTS"
    assert "3 connections open from 2001:db8:0:1::/64" in refused[1]
    assert limits.admit("2001:db8:0:2::1") is None  # the next /64
    assert [limits.admit(f"192.0.2.{i}") for i in range(1, 5)] == [None] * 4  # a /24 is not one group here
    mapped = [limits.admit("::ffff:198.51.100.1"), limits.admit("198.51.100.1"), limits.admit("198.51.100.1")]
    assert mapped == [None] * 3
    assert "3 connections open from 198.51.100.1 " in limits.admit("::ffff:198.51.100.1")[1]
    assert "3 connections open from this address" in limits.admit("198.51.100.1")[1]
    limits.release("2001:db8:0:1::2")
    assert limits.admit("2001:db8:0:1::77") is None
    for address in ["2001:db8:0:1::1", "2001:db8:0:1::3", "2001:db8:0:1::77", "2001:db8:0:2::1",
                    "::ffff:198.51.100.1", "198.51.100.1", "198.51.100.1"] + [f"192.0.2.{i}" for i in range(1, 5)]:
        limits.release(address)
    assert limits.by_address == {} and limits.total == 0


def test_a_trusted_proxy_does_not_use_up_its_64s_share():
    limits = ConnectionLimits(100, 2, TrustedProxies(["2001:db8::1"]).trusted)
    assert [limits.admit("2001:db8::1") for _ in range(5)] == [None] * 5
    assert [limits.admit("2001:db8::2"), limits.admit("2001:db8::3")] == [None, None]
    assert limits.admit("2001:db8::4") is not None
    for _ in range(5):
        limits.release("2001:db8::1")
    assert limits.by_address == {"2001:db8::/64": 2}


def test_a_trusted_ipv4_proxy_seen_ipv4_mapped_is_not_capped_per_address():
    """A dual-stack listener (interface=::) sees an IPv4 proxy as ::ffff:a.b.c.d: still exempt."""
    limits = ConnectionLimits(0, 2, TrustedProxies(["10.0.0.0/8"]).trusted)
    assert [limits.admit("::ffff:10.1.2.3") for _ in range(5)] == [None] * 5
    assert limits.admit("::ffff:198.51.100.9") is None and limits.admit("::ffff:198.51.100.9") is None
    assert limits.admit("::ffff:198.51.100.9") is not None
