"""
``POST /v2/_izreg/pulls`` (an edge gateway's cache-hit pull reports), in
process: a guard that answers with a fixed principal stands in for the TLS
client certificate (the end-to-end edge tests send a real one).
"""

from __future__ import annotations

import json

import pytest_twisted

from izreg.auth.devicestore import DeviceStore
from izreg.auth.policy import Principal
from izreg.http import pullreports
from tests.http.conftest import ACCOUNT, OTHER_ACCOUNT, start_server

DIGEST = "sha256:" + "ab" * 32


class FixedGuard:
    def __init__(self, principal):
        self.principal = principal

    def check(self, request, repository, action):
        return self.principal

    def authorize(self, request, access, repository):
        return self.principal

    def catalog_account(self, request):
        return ACCOUNT


DEVICE = Principal("device", ACCOUNT, read_only=True, device_id="gw-1")
KEY = Principal("key", ACCOUNT, key_id="k1")


def report(*entries):
    return json.dumps({"pulls": list(entries)}).encode()


def entry(repository=f"{ACCOUNT}/app", digest=DIGEST, time=1_700_000_000):
    return {"repository": repository, "digest": digest, "time": time}


async def _with(tmp_path, principal, body):
    server = await start_server(tmp_path, FixedGuard(principal))
    try:
        response, content = await server.request("POST", "/v2/_izreg/pulls", body=body,
                                                  headers={"Content-Type": "application/json"})
        await server.service.flush_pulls()
        records = DeviceStore(server.registry.index.env).list_pulls(ACCOUNT)
        return response.code, json.loads(content), records
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_device_reports_pulls_of_its_account(tmp_path):
    code, _, records = await _with(tmp_path, DEVICE, report(entry(), entry(f"{ACCOUNT}/other/app")))
    assert code == 202
    assert sorted((r.device_id, r.repository, r.digest, r.at) for r in records) == [
        ("gw-1", f"{ACCOUNT}/app", DIGEST, 1_700_000_000),
        ("gw-1", f"{ACCOUNT}/other/app", DIGEST, 1_700_000_000),
    ]


@pytest_twisted.ensureDeferred
async def test_a_time_in_the_future_counts_as_now(tmp_path):
    code, _, records = await _with(tmp_path, DEVICE, report(entry(time=9e12)))
    assert code == 202 and records[0].at < 9e12


@pytest_twisted.ensureDeferred
async def test_another_accounts_repository_is_denied_and_nothing_recorded(tmp_path):
    code, document, records = await _with(tmp_path, DEVICE, report(entry(), entry(f"{OTHER_ACCOUNT}/app")))
    assert (code, document["errors"][0]["code"], records) == (403, "DENIED", [])


@pytest_twisted.ensureDeferred
async def test_an_access_key_may_not_report(tmp_path):
    code, document, records = await _with(tmp_path, KEY, report(entry()))
    assert (code, document["errors"][0]["code"], records) == (403, "DENIED", [])


@pytest_twisted.ensureDeferred
async def test_bad_bodies_are_clear_errors(tmp_path):
    server = await start_server(tmp_path, FixedGuard(DEVICE))
    try:
        cases = [
            (b"not json", 400, "UNSUPPORTED"),
            (b"[" * 5000 + b"]" * 5000, 400, "UNSUPPORTED"),  # json's RecursionError was a 500
            (b'{"pull": []}', 400, "UNSUPPORTED"),
            (report({"repository": f"{ACCOUNT}/app", "digest": DIGEST}), 400, "UNSUPPORTED"),
            (report(entry(time="yesterday")), 400, "UNSUPPORTED"),
            (report(entry(repository="Not/A/Name")), 400, "NAME_INVALID"),
            (report(entry(digest="sha256:short")), 400, "DIGEST_INVALID"),
            (report(*[entry()] * (pullreports.MAX_ENTRIES + 1)), 400, "UNSUPPORTED"),
            (b"[" + b" " * pullreports.BODY_LIMIT + b"]", 413, "SIZE_INVALID"),
        ]
        for body, status, code in cases:
            response, content = await server.request("POST", "/v2/_izreg/pulls", body=body)
            assert (response.code, json.loads(content)["errors"][0]["code"]) == (status, code), body[:80]
        assert server.service.pulls.pending == 0
    finally:
        await server.service.stopService()
