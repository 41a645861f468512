"""Client addresses grouped by prefix (izreg/core/netgroup.py)."""

from __future__ import annotations

import pytest

from izreg.core.netgroup import address_group


@pytest.mark.parametrize("address, v4, v6, group", [
    ("192.0.2.77", 32, 64, "192.0.2.77"),
    ("192.0.2.77", 24, 64, "192.0.2.0/24"),
    ("192.0.2.77", 16, 64, "192.0.0.0/16"),
    ("2001:db8:1:2:aaaa::1", 32, 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", 32, 64, "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", 32, 64, "2001:db8:1:3::/64"),
    ("2001:db8:1:2ff::1", 32, 56, "2001:db8:1:200::/56"),
    ("2001:DB8::1", 32, 128, "2001:db8::1"),
    ("fe80::1%eth0", 32, 64, "fe80::/64"),  # the zone is not part of the address
    ("::ffff:192.0.2.77", 32, 64, "192.0.2.77"),  # IPv4-mapped: the IPv4 address
    ("::ffff:192.0.2.77", 24, 64, "192.0.2.0/24"),
    ("::1", 32, 64, "::/64"),
    ("local", 24, 64, "local"),  # not an IP address: its own group
    ("not:an:address", 32, 64, "not:an:address"),
    ("", 24, 64, ""),
])
def test_groups(address, v4, v6, group):
    assert address_group(address, v4, v6) == group


def test_every_address_of_a_64_is_one_group_and_its_neighbour_another():
    groups = {address_group(f"2001:db8:0:7:{i:x}::{i:x}") for i in range(1, 500)}
    assert groups == {"2001:db8:0:7::/64"}
    assert address_group("2001:db8:0:8::1") != address_group("2001:db8:0:7::1")
