"""
C{limits.body_memory} per owner (L{izreg.http.limits.BodyBudget} with a share, on the request body path:
L{izreg.http.bodies.BoundedBuffer}, L{izreg.http.pending.PendingBody}; the owner from
L{izreg.http.limits.budget_owner}): one account's, or one client address's, stalled bodies hold at most
its share, and the others' still fit. The same over real connections: tests/http/test_bodies.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http_headers import Headers

from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.bodies import BoundedBuffer, Dropped
from izreg.http.clientaddr import TrustedProxies
from izreg.http.limits import BodyBudget, budget_owner
from izreg.http.pending import PendingBody

KIB = 1024


def _refusals():
    refused: list[RegistryError] = []
    return refused, refused.append


def test_an_owner_holds_at_most_its_share_and_the_others_still_fit():
    budget = BodyBudget(400 * KIB, share=100 * KIB)
    refused, refuse = _refusals()
    held = [BoundedBuffer(100 * KIB, budget, refuse, "account:a") for _ in range(2)]
    assert held[0].reserve(60 * KIB) and held[1].reserve(40 * KIB)  # its share, held by two stalled bodies
    over = BoundedBuffer(100 * KIB, budget, refuse, "account:a")
    assert not over.reserve(1) and budget.over_share(1, "account:a")
    others = [BoundedBuffer(100 * KIB, budget, refuse, owner) for owner in ("account:b", "address:192.0.2.7")]
    assert all(buffer.reserve(100 * KIB) for buffer in others)
    assert budget.by_owner == {"account:a": 100 * KIB, "account:b": 100 * KIB, "address:192.0.2.7": 100 * KIB}
    for buffer in held + others + [over]:
        buffer.close()
    assert budget.used == 0 and budget.by_owner == {}


def test_a_chunked_body_past_its_owners_share_is_503_naming_the_share():
    budget = BodyBudget(1024 * KIB, share=128 * KIB)
    refused, refuse = _refusals()
    first = BoundedBuffer(128 * KIB, budget, refuse, "address:192.0.2.7")
    assert first.reserve(100 * KIB)
    chunked = BoundedBuffer(128 * KIB, budget, refuse, "address:192.0.2.7")
    chunked.write(b"x" * 20 * KIB)  # reserves 64 KiB: past the share (100 + 64 > 128)
    assert chunked.overflow and len(refused) == 1
    error = refused[0]
    assert error.code is ErrorCode.UNAVAILABLE and error.headers["Retry-After"] == "1"
    assert "limits.body_memory" in error.message and "share" in error.message
    assert error.detail == {"share": 128 * KIB, "limit": 1024 * KIB}
    assert budget.by_owner == {"address:192.0.2.7": 100 * KIB}  # what the refused body had reserved, given back
    first.close()
    assert budget.used == 0 and budget.by_owner == {}


def test_the_whole_budget_full_still_says_the_registry_is():
    budget = BodyBudget(100 * KIB, share=100 * KIB)
    refused, refuse = _refusals()
    holder = BoundedBuffer(100 * KIB, budget, refuse, "account:a")
    assert holder.reserve(90 * KIB)
    buffer = BoundedBuffer(100 * KIB, budget, refuse, "account:b")
    buffer.write(b"x" * 20 * KIB)
    assert [e.code for e in refused] == [ErrorCode.UNAVAILABLE]
    assert "share" not in refused[0].message and "limits.body_memory" in refused[0].message


def test_without_a_share_no_owner_is_counted():
    budget = BodyBudget(100 * KIB)
    buffer = BoundedBuffer(100 * KIB, budget, None, budget.owner(_request("192.0.2.7")))
    assert buffer.owner is None and buffer.reserve(100 * KIB) and budget.by_owner == {}
    buffer.close()
    assert budget.used == 0


def _request(peer: str, account: str | None = None, headers: dict | None = None, proxies=None):
    address = IPv6Address("TCP", peer, 5000) if ":" in peer else IPv4Address("TCP", peer, 5000)
    request = SimpleNamespace(client=address, requestHeaders=Headers(headers or {}),
                              channel=SimpleNamespace(site=SimpleNamespace(proxies=proxies), transport=None),
                              refused=[])
    request.refuse = request.refused.append
    if account is not None:
        request.principal = SimpleNamespace(account=account)
    return request


@pytest.mark.parametrize(
    "request_, owner",
    [
        (_request("192.0.2.7", account="a" * 32), "account:" + "a" * 32),  # authenticated: its account, wherever
        (_request("192.0.2.7"), "address:192.0.2.7"),
        (_request("2001:db8:0:1::5"), "address:2001:db8:0:1::/64"),  # a host picks addresses in its /64 at will
        # behind a trusted proxy: the client's address, not the proxy's (else one client's share is everyone's)
        (_request("10.1.2.3", headers={"X-Forwarded-For": ["203.0.113.5"]}, proxies=TrustedProxies(["10.0.0.0/8"])),
         "address:203.0.113.5"),
    ],
)
def test_the_owner_is_the_account_else_the_client_address_group(request_, owner):
    assert budget_owner(request_) == owner == BodyBudget(1, share=1).owner(request_)


def test_a_body_awaiting_its_caller_holds_its_address_share_and_gives_it_back():
    """On a shared database the caller is read off the reactor: what its body held meanwhile is its address's."""
    budget = BodyBudget(1000 * KIB, share=100 * KIB)
    stalled = _request("192.0.2.7")
    holding = [PendingBody(stalled, Deferred(), Dropped, budget) for _ in range(2)]
    holding[0].write(b"x" * 60 * KIB)
    holding[1].write(b"x" * 40 * KIB)
    assert budget.by_owner == {"address:192.0.2.7": 100 * KIB}
    over = PendingBody(stalled, Deferred(), Dropped, budget)
    over.write(b"x")
    assert [e.code for e in stalled.refused] == [ErrorCode.UNAVAILABLE] and "share" in stalled.refused[0].message
    other = _request("192.0.2.8")
    PendingBody(other, Deferred(), Dropped, budget).write(b"y" * 100 * KIB)  # another client still fits
    assert other.refused == []
    for pending in holding:
        pending.close()
    assert budget.by_owner == {"address:192.0.2.8": 100 * KIB}
