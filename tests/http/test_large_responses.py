"""
Response bodies held in memory over 64 KiB (a large manifest, a tag list)
are sent as blobs are, by a watched sender, and bounded across connections
by limits.response_memory (L{izreg.http.responses.held_body}): the real
site in memory. A client that stops reading one, on the real server and
its TLS listener: tests/e2e/test_large_responses.py.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.web.test.requesthelper import DummyRequest

from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.limits import BodyBudget
from izreg.http.responses import LARGE_BODY, MIN_READ, HeldBytes, MemoryBody, held_body
from tests.helpers.openguard import OpenGuard
from tests.http.conftest import header, start_server
from tests.http.helpers import OCI_MANIFEST, content_length, digest_of, image_manifest, push_blob, put_manifest, repo

NAME = repo("large/app")
CONFIG, LAYER = b'{"architecture":"amd64","os":"linux"}', b"layer"
#: limits.response_memory (and max_manifest_size, which it may not be below) of the server here
BUDGET = 400_000


def padded_manifest(size: int) -> bytes:
    base = image_manifest(CONFIG, (LAYER,), annotations={"pad": ""})
    data = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(base)) + b'"')
    assert len(data) == size
    return data


@pytest_twisted.async_yield_fixture
async def server(tmp_path):
    srv = await start_server(tmp_path, OpenGuard(), max_manifest_size=BUDGET, response_memory=BUDGET)
    await push_blob(srv, NAME, CONFIG)
    await push_blob(srv, NAME, LAYER)
    yield srv
    await srv.service.stopService()


async def get_ok(server, path: str, data: bytes, method: str = "GET"):
    response, body = await server.request(method, path)
    assert response.code == 200, (method, response.code, body[:300])
    assert body == (data if method == "GET" else b"")
    assert content_length(response) == str(len(data))
    return response


@pytest_twisted.ensureDeferred
async def test_a_large_manifest_is_the_same_bytes_and_headers_and_gives_its_budget_back(server):
    data = padded_manifest(300_001)  # not a whole number of pieces
    response, _ = await put_manifest(server, NAME, "big", data)
    assert response.code == 201
    budget = server.api.responses
    for reference in ("big", digest_of(data)):
        for method in ("GET", "HEAD"):
            response = await get_ok(server, f"/v2/{NAME}/manifests/{reference}", data, method)
            assert header(response, "Docker-Content-Digest") == digest_of(data)
            assert header(response, "ETag") == f'"{digest_of(data)}"'
            assert header(response, "Content-Type") == OCI_MANIFEST
            assert budget.used == 0
    response, body = await server.request("GET", f"/v2/{NAME}/manifests/big",
                                          headers={"If-None-Match": f'"{digest_of(data)}"'})
    assert (response.code, body, budget.used) == (304, b"", 0)


@pytest_twisted.ensureDeferred
async def test_past_the_budget_a_large_body_is_503_with_retry_after_until_it_frees(server):
    data, small = padded_manifest(300_000), padded_manifest(LARGE_BODY)
    for tag, body in (("big", data), ("small", small)):
        response, _ = await put_manifest(server, NAME, tag, body)
        assert response.code == 201
    budget = server.api.responses
    held = BUDGET - 200_000
    assert budget.reserve(held)  # as if other large responses were still on their way
    status, code, response = await server.error("GET", f"/v2/{NAME}/manifests/big")
    assert (status, code) == (503, "UNAVAILABLE")
    assert header(response, "Retry-After") == "1"
    assert header(response, "Content-Type") == "application/json"
    # refused before any header of the manifest was set
    assert header(response, "Docker-Content-Digest") is None and header(response, "ETag") is None
    assert budget.used == held
    # a HEAD holds no body, a body up to 64 KiB is written whole: neither counts
    await get_ok(server, f"/v2/{NAME}/manifests/big", data, "HEAD")
    await get_ok(server, f"/v2/{NAME}/manifests/small", small)
    budget.release(held)  # the others were sent
    await get_ok(server, f"/v2/{NAME}/manifests/big", data)
    assert budget.used == 0


@pytest_twisted.ensureDeferred
async def test_a_large_tag_list_is_bounded_too(server):
    data = image_manifest(CONFIG, (LAYER,))
    tags = sorted(f"{n:04d}" + "t" * 124 for n in range(520))  # 128 characters each: ~68 KB of JSON
    for tag in tags:
        response, _ = await put_manifest(server, NAME, tag, data)
        assert response.code == 201
    listing = json.dumps({"name": NAME, "tags": tags}).encode() + b"\n"
    assert len(listing) > LARGE_BODY
    budget = server.api.responses
    assert budget.reserve(BUDGET - 1000)
    status, code, _ = await server.error("GET", f"/v2/{NAME}/tags/list")
    assert (status, code) == (503, "UNAVAILABLE")
    budget.release(BUDGET - 1000)
    await get_ok(server, f"/v2/{NAME}/tags/list", listing)
    assert budget.used == 0


def request(method: bytes = b"GET") -> DummyRequest:
    answered = DummyRequest([b""])
    answered.method = method
    return answered


def test_held_body_is_the_bytes_themselves_up_to_64_kib_and_for_a_head():
    budget = BodyBudget(1 << 20)
    small, large = b"s" * LARGE_BODY, b"l" * (LARGE_BODY + 1)
    assert held_body(request(), small, budget) is small
    assert held_body(request(b"HEAD"), large, budget) is large
    assert budget.used == 0
    body = held_body(request(), large, budget)
    assert isinstance(body, MemoryBody) and body.length == len(large)
    assert budget.used == len(large)
    body.reader.close()
    assert budget.used == 0


def test_held_body_past_the_budget_is_unavailable_with_retry_after():
    budget = BodyBudget(200_000)
    assert isinstance(held_body(request(), b"a" * 150_000, budget), MemoryBody)
    with pytest.raises(RegistryError) as refused:
        held_body(request(), b"b" * 100_000, budget)
    assert refused.value.code is ErrorCode.UNAVAILABLE
    assert refused.value.headers["Retry-After"] == "1"
    assert "limits.response_memory" in refused.value.message
    assert budget.used == 150_000


def test_a_client_past_its_share_is_told_it_is_its_share_not_the_whole_budget():
    budget = BodyBudget(1_000_000, share=150_000)
    held = held_body(request(), b"a" * 100_000, budget)
    with pytest.raises(RegistryError) as refused:
        held_body(request(), b"b" * 100_000, budget)  # the same client: its share is full, the budget is not
    assert refused.value.code is ErrorCode.UNAVAILABLE and refused.value.headers["Retry-After"] == "1"
    assert "this client" in refused.value.message and "its share of limits.response_memory" in refused.value.message
    assert refused.value.detail == {"share": 150_000, "limit": 1_000_000}
    held.reader.close()
    assert budget.reserve(950_000)  # now the whole budget is what is full
    with pytest.raises(RegistryError) as refused:
        held_body(request(), b"b" * 100_000, budget)
    assert "share" not in refused.value.message and "for all its clients (limits.response_memory)" in refused.value.message


def test_the_edge_s_refusal_names_the_edge_and_its_setting():
    budget = BodyBudget(100_000, setting="edge.response_memory", holder="the edge")
    held_body(request(), b"b" * 200_000, budget)  # over the whole budget: holds all of it
    with pytest.raises(RegistryError) as refused:
        held_body(request(), b"c" * 70_000, budget)
    assert refused.value.message.startswith("the edge is holding") and "(edge.response_memory)" in refused.value.message


def test_held_bytes_leave_the_budget_as_they_are_read_and_the_rest_when_closed():
    budget = BodyBudget(1 << 20)
    data = bytes(range(256)) * 1000  # 256,000: three whole pieces and a part
    assert budget.reserve(len(data))
    reader = HeldBytes(data, budget)
    reader.seek(0)
    got = [reader.read(MIN_READ * 8)]  # a piece at a time, whatever the size asked
    assert got[0] == data[:MIN_READ] and budget.used == len(data) - MIN_READ
    got.append(reader.read(1000))  # less than a piece: the rest of it stays for the next read
    assert len(got[1]) == 1000
    got.append(reader.read(MIN_READ))  # that rest
    assert b"".join(got) == data[:MIN_READ * 2]
    assert budget.used == len(data) - MIN_READ * 2
    reader.close()
    assert budget.used == 0 and reader.read(MIN_READ) == b""
    reader.close()  # twice: nothing more given back
    assert budget.used == 0


def test_a_body_over_the_whole_budget_holds_all_of_it_and_is_sent_when_nothing_else_is():
    # only manifests are bounded below limits.response_memory: a tag list or catalog page over all of it was
    # a 503 at every try, for ever
    budget = BodyBudget(100_000)
    other = held_body(request(), b"o" * 70_000, budget)
    with pytest.raises(RegistryError):
        held_body(request(), b"w" * 250_000, budget)  # does not fit beside another
    other.reader.close()
    whole = held_body(request(), b"w" * 250_000, budget)
    assert isinstance(whole, MemoryBody) and budget.used == 100_000
    with pytest.raises(RegistryError):
        held_body(request(), b"o" * 70_000, budget)  # it holds all of it
    reader = whole.reader
    for _ in range(2):  # while its unsent bytes are more than the budget, they fill it
        assert reader.read(MIN_READ) == b"w" * MIN_READ and budget.used == 100_000
    reader.read(MIN_READ)
    assert budget.used == 250_000 - 3 * MIN_READ  # then they are what it holds
    reader.close()
    assert budget.used == 0
    reader.close()
    assert budget.used == 0


@pytest_twisted.ensureDeferred
async def test_a_tag_list_over_the_whole_budget_is_served(tmp_path):
    srv = await start_server(tmp_path, OpenGuard(), max_manifest_size=70_000, response_memory=70_000)
    try:
        await push_blob(srv, NAME, CONFIG)
        await push_blob(srv, NAME, LAYER)
        data = image_manifest(CONFIG, (LAYER,))
        tags = sorted(f"{n:04d}" + "t" * 124 for n in range(600))  # ~79 KB of JSON, over all of response_memory
        for tag in tags:
            response, _ = await put_manifest(srv, NAME, tag, data)
            assert response.code == 201
        listing = json.dumps({"name": NAME, "tags": tags}).encode() + b"\n"
        assert len(listing) > 70_000
        await get_ok(srv, f"/v2/{NAME}/tags/list", listing)
        assert srv.api.responses.used == 0
    finally:
        await srv.service.stopService()


class _FailingEvents:
    """Pull events whose store fails (the one step between the budget's reservation and the answer that can)."""

    def pulled(self, *args, **kwargs):
        raise OSError("the events store failed")


@pytest_twisted.ensureDeferred
async def test_a_pull_that_fails_after_its_body_was_held_gives_the_budget_back(server):
    data = padded_manifest(300_000)
    response, _ = await put_manifest(server, NAME, "failing", data)
    assert response.code == 201
    server.api.events = _FailingEvents()
    response, _ = await server.request("GET", f"/v2/{NAME}/manifests/failing")
    assert response.code == 500
    assert server.api.responses.used == 0  # not held for ever by a body that was never sent


class _Caller:
    def __init__(self, account: str) -> None:
        self.account = account


def _as(account: str):
    answered = request()
    answered.principal = _Caller(account)
    return answered


def test_one_account_holds_at_most_its_share_and_others_are_still_served():
    """attack11: one tenant's clients that read nothing held all of the budget, and every other account got 503."""
    budget = BodyBudget(1_000_000, share=250_000)
    first = held_body(_as("a" * 32), b"a" * 200_000, budget)  # an account's first body: within the whole budget
    with pytest.raises(RegistryError) as refused:
        held_body(_as("a" * 32), b"a" * 100_000, budget)  # past its share
    assert refused.value.code is ErrorCode.UNAVAILABLE
    others = [held_body(_as(str(n) * 32), b"b" * 250_000, budget) for n in range(3)]  # each a first body
    assert budget.used == 950_000 and budget.by_owner["account:" + "a" * 32] == 200_000
    first.reader.close()
    assert "account:" + "a" * 32 not in budget.by_owner
    held_body(_as("a" * 32), b"a" * 100_000, budget).reader.close()  # given back: served again
    for body in others:
        body.reader.close()
    assert budget.used == 0 and budget.by_owner == {}


def test_an_account_first_body_passes_whatever_its_size_within_the_budget():
    budget = BodyBudget(1_000_000, share=250_000)
    body = held_body(_as("c" * 32), b"c" * 900_000, budget)
    assert budget.used == 900_000
    body.reader.read(MIN_READ)  # leaves the budget and the account's share as it is handed on
    assert budget.by_owner["account:" + "c" * 32] == 900_000 - MIN_READ == budget.used
    body.reader.close()
    assert budget.used == 0 and budget.by_owner == {}


def test_without_a_share_owners_are_not_counted():
    budget = BodyBudget(1_000_000)
    held_body(_as("d" * 32), b"d" * 300_000, budget)
    held_body(_as("d" * 32), b"d" * 300_000, budget)
    assert budget.used == 600_000 and budget.by_owner == {}
