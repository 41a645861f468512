"""How a blob body reaches a plain-TCP client: sendfile(2) or copies ([server] sendfile, izreg.http.responses)."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from izreg.http.responses import SENDFILE_MODES, uses_sendfile


class Peer:
    def __init__(self, address) -> None:
        self.address = address

    def getPeer(self):
        return self.address


@pytest.mark.parametrize(
    "address, mode, expected",
    [
        (IPv4Address("TCP", "10.1.2.3", 40000), "auto", True),  # another machine: the card reads the page cache
        (IPv6Address("TCP", "2001:db8::7", 40000), "auto", True),
        (IPv6Address("TCP", "fe80::1%eth0", 40000), "auto", True),
        (IPv4Address("TCP", "127.0.0.1", 40000), "auto", False),  # this machine: 32 KiB copies
        (IPv4Address("TCP", "127.3.2.1", 40000), "auto", False),
        (IPv6Address("TCP", "::1", 40000), "auto", False),
        (IPv6Address("TCP", "::ffff:127.0.0.1", 40000), "auto", False),
        (UNIXAddress(b"/run/izreg.sock"), "auto", False),
        (IPv4Address("TCP", "127.0.0.1", 40000), "on", True),
        (UNIXAddress(b"/run/izreg.sock"), "on", True),
        (IPv4Address("TCP", "10.1.2.3", 40000), "off", False),
    ],
)
def test_sendfile_to_other_machines_copies_to_this_one(address, mode, expected):
    assert mode in SENDFILE_MODES
    assert uses_sendfile(Peer(address), mode) is expected
