"""
The request path over a shared database (#16): the in-process server with its
keys, devices and token key in PostgreSQL, read off the reactor through a
threaded C{run_read} (L{tests.http.authhelpers.on_postgres}), as each node of
a cluster does. Two servers on one database stand for two nodes: what one
revokes, the other refuses at the next request, and a token one issues the
other accepts. (The whole access matrix also runs this way:
tests/http/test_auth_matrix.py.)
"""

from __future__ import annotations

import hashlib
import json

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred

from izreg.auth.authenticator import Authenticator
from izreg.auth.failures import FailedAuthentications
from izreg.auth.devices import DeviceVerifier
from izreg.auth.devicestore import SERIAL, DeviceStore
from izreg.auth.pgstore import PgTokenKey
from izreg.auth.policy import Action
from izreg.auth.ratelimit import FailureLimiter
from izreg.auth.store import AuthStore
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository
from izreg.devcerts import make_ca, make_device_cert
from izreg.http.guard import AccessGuard
from izreg.storage.lmdbenv import open_env
from tests.http.authhelpers import Keys, auth, basic, bearer, digest_of, on_postgres, start_upload, threaded
from tests.http.conftest import start_server
from tests.http.helpers import parse_raw
from tests.http.test_bodies import connect, put_head

pytestmark = pytest.mark.postgres


@pytest_twisted.async_yield_fixture
async def nodes(tmp_path, postgres_server):
    """Two servers (own data dirs, own processes' state) on one PostgreSQL database, the token service on."""
    one = await start_server(tmp_path / "one", token_service=True)
    _, _, db = on_postgres(one, postgres_server)
    two = await start_server(tmp_path / "two", token_service=True)
    on_postgres(two, db=db)
    shared_key_dir = str(tmp_path)  # every node holds the same sealing key file (webhook.key)
    for node in (one, two):
        node.api.guard.authenticator.signing_key = PgTokenKey(db, shared_key_dir).secret
    keys = Keys.make(one, one.api.guard.authenticator.store)
    yield one, two, keys
    for node in (one, two):
        await node.service.stopService()
    db.close()


@pytest_twisted.ensureDeferred
async def test_a_key_revoked_through_one_node_is_refused_by_the_other_at_the_next_request(nodes):
    one, two, keys = nodes
    path = f"/v2/{keys.a}/app/tags/list"
    for node in (one, two):
        response, _ = await node.request("GET", path, headers=auth(basic(keys.a_key)))
        assert response.code == 404  # authenticated: the repository just does not exist
    keys.store.revoke_key(keys.a_key_id, 1.0)  # `izreg key revoke` against the database
    for node in (two, one):
        response, body = await node.request("GET", path, headers=auth(basic(keys.a_key)))
        assert response.code == 401 and b"revoked" in body


@pytest_twisted.ensureDeferred
async def test_a_token_from_one_node_works_on_the_other_until_its_key_is_revoked(nodes):
    one, two, keys = nodes
    response, body = await one.request("GET", f"/v2/token?scope=repository:{keys.a}/app:pull,push",
                                       headers=auth(basic(keys.a_key)))
    assert response.code == 200, body
    token = json.loads(body)["token"]
    response, _ = await two.request("GET", f"/v2/{keys.a}/app/tags/list", headers=auth(bearer(token)))
    assert response.code == 404
    keys.store.revoke_key(keys.a_key_id, 1.0)
    response, body = await two.request("GET", f"/v2/{keys.a}/app/tags/list", headers=auth(bearer(token)))
    assert response.code == 401 and b"revoked" in body


@pytest_twisted.ensureDeferred
async def test_a_large_chunk_waits_for_the_database_then_lands_whole(nodes):
    """The body of a request whose caller is being read is held (the connection paused), then written whole."""
    one, _, keys = nodes  # one node: the registry index of these servers is their own LMDB
    name = f"{keys.a}/big"
    data = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32)  # 3 MiB
    location = await start_upload(one, name, keys.a_key)
    response, body = await one.request("PATCH", location, body=data,
                                       headers={**auth(basic(keys.a_key)), "Content-Type": "application/octet-stream"})
    assert response.code == 202, body
    location = response.headers.getRawHeaders("Location")[0]
    digest = digest_of(data)
    sep = "&" if "?" in location else "?"
    response, body = await one.request("PUT", f"{location}{sep}digest={digest}", headers=auth(basic(keys.a_key)))
    assert response.code == 201, body
    response, got = await one.request("GET", f"/v2/{name}/blobs/{digest}", headers=auth(basic(keys.a_key)))
    assert response.code == 200 and got == data


@pytest_twisted.ensureDeferred
async def test_a_chunk_refused_once_its_caller_is_known_gets_its_error(nodes):
    """Out of order: answered 416 whether the body was whole before the database answered or not."""
    one, _, keys = nodes
    name = f"{keys.a}/ooo"
    location = await start_upload(one, name, keys.a_key)
    response, body = await one.request("PATCH", location, body=b"x" * 10,
                                       headers={**auth(basic(keys.a_key)), "Content-Range": "5-14"})
    assert response.code == 416, body
    response, body = await one.request("PATCH", location, body=b"x" * 10, headers=auth(basic(keys.b_key)))
    assert response.code in (401, 403, 404) and json.loads(body)["errors"]


# Devices -----------------------------------------------------------------------------------

NOW = 1_700_000_000.0


class DeviceRequest:
    """Just what the guard reads of a request over TLS with a verified client certificate."""

    def __init__(self, cert) -> None:
        self.headers = {b"host": b"registry.example:5443"}
        self.transport = type("T", (), {"getHandle": lambda self: SSL.Connection(SSL.Context(SSL.TLS_METHOD), None),
                                        "peerCertificate": cert})()
        self.client = type("Address", (), {"host": "192.0.2.7"})()

    def getHeader(self, name: bytes):
        return self.headers.get(name.lower())

    def isSecure(self) -> bool:
        return True


@pytest.fixture(params=["lmdb", "postgresql"])
def device_store(request, tmp_path):
    if request.param == "postgresql":
        from izreg.auth.pgstore import PgDeviceStore

        return PgDeviceStore(request.getfixturevalue("pg_db"))
    return DeviceStore(open_env(str(tmp_path), 1 << 30))


@pytest_twisted.ensureDeferred
async def test_a_device_revoked_elsewhere_is_refused_at_its_next_request(device_store, tmp_path):
    ca = make_ca(NOW - 60)
    accounts = AuthStore(open_env(str(tmp_path / "auth"), 1 << 30))
    account = accounts.create_account(NOW).account_id  # a device of a deleted account is refused too
    device = make_device_cert(ca, account, "gw-1", NOW - 60)
    verifier = DeviceVerifier(cas=lambda: [ca.cert], revoked=device_store.revocations_for)
    authenticator = Authenticator(accounts, lambda: NOW,
                                  token_service=False, failures=FailedAuthentications(FailureLimiter(limit=3, window=60)))
    guard = AccessGuard(authenticator, verifier, lambda: NOW, run_read=threaded)
    own = Repository.parse(f"{account}/app")
    principal = await guard.check(DeviceRequest(device.cert), own, Action.PULL)
    assert principal.kind == "device" and principal.device_id == "gw-1"
    device_store.revoke(SERIAL, format(device.cert.serial_number, "x"), NOW)  # another node, the CLI
    with pytest.raises(RegistryError) as e:
        await guard.check(DeviceRequest(device.cert), own, Action.PULL)
    assert e.value.code is ErrorCode.UNAUTHORIZED


@pytest_twisted.ensureDeferred
async def test_a_node_that_cannot_reach_the_database_answers_503(tmp_path, postgres_server):
    """Never a 500 or a dropped connection: with and without a body, the OCI error UNAVAILABLE."""
    node = await start_server(tmp_path / "node")
    store, _, db = on_postgres(node, postgres_server)
    keys = Keys.make(node, store)
    db.close()  # the database is gone (every call: DatabaseUnavailable)
    try:
        response, body = await node.request("GET", f"/v2/{keys.a}/app/tags/list", headers=auth(basic(keys.a_key)))
        assert response.code == 503 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        response, body = await node.request("PUT", f"/v2/{keys.a}/app/manifests/v1", body=b"{}",
                                            headers={**auth(basic(keys.a_key)),
                                                     "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert response.code == 503 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        await node.service.stopService()


# A body held while its caller is read, whose connection ends first ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_body_whose_connection_ends_before_its_caller_is_known_holds_nothing_after(tmp_path, postgres_server):
    """
    A manifest PUT's connection is closed (its body too slow: body_grace, body_min_rate) while its key is still
    being read from the database (a slow database, a failover): once the key is read, no buffer is made for the
    gone request. One was, and reserved the body's Content-Length in limits.body_memory with nothing to give it
    back: after a few such, its account's share (or the whole budget) was full for good, every manifest push
    of the account 503 until a restart.
    """
    server = await start_server(tmp_path, socket=True, body_grace=1)
    _, _, db = on_postgres(server, postgres_server)
    keys = Keys.make(server, server.api.guard.authenticator.store)
    held: list[tuple[Deferred, object, tuple]] = []

    def gated(f, *args):  # the database answers once the connection is gone
        waiting = Deferred()
        held.append((waiting, f, args))
        return waiting

    guard = server.api.guard
    guard.run_read = guard.authenticator.run_read = gated
    lost = []
    body_for = server.service.site.body_for

    def seen(request, *args):
        lost.append(request.notifyFinish().addErrback(lambda failure: None))
        return body_for(request, *args)

    server.service.site.body_for = seen
    try:
        head = put_head(f"/v2/{keys.a}/app/manifests/v1", 100_000, basic(keys.a_key))
        client = await connect(server, head + b"{" * 10)
        answer = await client.closed.addTimeout(30, reactor)
        assert parse_raw(answer)[0] == 408 and held
        await lost[0]  # the request is lost with its connection
        guard.run_read = guard.authenticator.run_read = threaded
        answers = []
        while held:
            waiting, f, args = held.pop(0)
            answers.append(threaded(f, *args).addBoth(waiting.callback))
        await defer.gatherResults(answers)
        budget = server.api.budget
        assert (budget.used, budget.by_owner) == (0, {})
    finally:
        await server.service.stopService()
        db.close()
