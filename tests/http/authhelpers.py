"""
Helpers for the authentication tests over the in-process server
(L{tests.http.conftest.start_server} with the real L{AccessGuard}):
accounts and keys made straight in the server's LMDB environment,
``Authorization`` header values, and small pushes done with a key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass

from izreg.auth.store import AuthStore
from tests.http.conftest import Server, header

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BASIC_CHALLENGE = 'Basic realm="izreg"'
#: a failed Bearer credential (RFC 6750); never Basic, or a browser's fetch() waits for a login prompt
BEARER_INVALID = 'Bearer realm="izreg",error="invalid_token"'


def basic(secret: str, user: str = "KEY") -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")


def bearer(secret: str) -> str:
    return "Bearer " + secret


def auth(value: str | None) -> dict:
    """Request headers carrying C{value} as ``Authorization`` (none for C{None})."""
    return {} if value is None else {"Authorization": value}


def unknown_key() -> str:
    """A well-formed access key that no store knows."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return f"izr_{secrets.token_hex(8)}_{secret}"


def other_secret(key: str) -> str:
    """C{key}'s key id with another (well-formed) secret."""
    key_id = key.split("_")[1]
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return f"izr_{key_id}_{secret}"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Keys:
    """Two accounts, A and B, and keys of each, made in C{server}'s store."""

    store: AuthStore
    a: str  # account ids
    b: str
    a_key: str  # key texts
    a_key_id: str
    a_ro: str
    a_revoked: str
    b_key: str

    @classmethod
    def make(cls, server: Server, store=None) -> "Keys":
        store = store or AuthStore(server.registry.index.env)
        now = server.service.reactor.seconds()
        a = store.create_account(now, "alice").account_id
        b = store.create_account(now, "bob").account_id
        rec, a_key = store.create_key(a, now, name="rw")
        _, a_ro = store.create_key(a, now, name="ro", read_only=True)
        revoked_rec, a_revoked = store.create_key(a, now, name="old")
        store.revoke_key(revoked_rec.key_id, now)
        _, b_key = store.create_key(b, now, name="rw")
        return cls(store, a, b, a_key.reveal(), rec.key_id, a_ro.reveal(), a_revoked.reveal(), b_key.reveal())


#: the body of L{uploading}'s request: 1000 bytes, of which it sends 10
UPLOAD = b"x" * 1000


def uploading(keys: Keys) -> bytes:
    """
    Raw bytes of a request in progress (its headers all in, its body still coming: busy, never closed
    for a newcomer at max_connections): a monolithic upload into C{keys.a}'s ``app`` with its key, 10
    bytes of L{UPLOAD}; the rest, sent later, completes it (201).
    """
    head = (f"POST /v2/{keys.a}/app/blobs/uploads/?digest={digest_of(UPLOAD)} HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: {basic(keys.a_key)}\r\nContent-Length: {len(UPLOAD)}\r\n\r\n")
    return head.encode() + UPLOAD[:10]


def threaded(f, *args):
    """A runner as on PostgreSQL: C{f} on the reactor's thread pool, a Deferred of its value."""
    from twisted.internet import reactor, threads

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


async def keyed_server(tmp_path, backend: str, request, **config):
    """
    A started in-process server and its L{Keys}: on C{backend}
    ``"postgresql"`` its keys are read off the reactor, as on a node of a
    cluster (C{request}: the fixture's, for the session's PostgreSQL).
    C{(server, keys, db)}; close C{db} (if any) after stopping the server.
    """
    from tests.http.conftest import start_server

    server = await start_server(tmp_path, **config)
    if backend != "postgresql":
        return server, Keys.make(server), None
    store, _, db = on_postgres(server, request.getfixturevalue("postgres_server"))
    return server, Keys.make(server, store), db


def on_postgres(server: Server, postgres_server=None, db=None):
    """
    Point C{server}'s guard at PostgreSQL (C{db}, or a new database of
    C{postgres_server}), read off the reactor as a node of a cluster does;
    its (PgAuthStore, PgDeviceStore, Database).
    """
    from izreg.auth.pgstore import PgAuthStore, PgDeviceStore
    from izreg.storage.batch import LatestBatch
    from izreg.storage.pg import Database

    if db is None:
        db = Database(postgres_server.create_database(), max_size=4)
        db.upgrade()
    store, device_store = PgAuthStore(db), PgDeviceStore(db)
    guard = server.api.guard
    guard.run_read = guard.authenticator.run_read = threaded
    guard.authenticator.store = store
    guard.authenticator.last_used = LatestBatch(store.touch_keys)
    if guard.devices is not None:
        import dataclasses

        guard.devices = dataclasses.replace(guard.devices, revoked=device_store.revocations_for)
    return store, device_store, db


async def push_blob(server: Server, repo: str, data: bytes, key: str) -> str:
    """Monolithic POST of C{data} into C{repo}; its digest."""
    digest = digest_of(data)
    response, body = await server.request(
        "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body=data, headers=auth(basic(key)))
    assert response.code == 201, (response.code, body)
    return digest


def image_manifest(config: bytes, layer: bytes, subject: tuple[str, int] | None = None) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest_of(layer), "size": len(layer)}],
    }
    if subject is not None:
        document["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]}
    return json.dumps(document).encode()


async def push_blobs_for(server: Server, repo: str, key: str, seed: str) -> bytes:
    """Push a config and a layer unique to C{seed}; the manifest naming them (not pushed)."""
    config = json.dumps({"seed": seed}).encode()
    layer = f"layer {seed}".encode()
    await push_blob(server, repo, config, key)
    await push_blob(server, repo, layer, key)
    return image_manifest(config, layer)


async def push_image(server: Server, repo: str, key: str, seed: str, tag: str | None = "v1") -> tuple[str, bytes]:
    """Push blobs and a manifest (tagged C{tag}, or by digest); (manifest digest, manifest)."""
    manifest = await push_blobs_for(server, repo, key, seed)
    digest = digest_of(manifest)
    response, body = await server.request(
        "PUT", f"/v2/{repo}/manifests/{tag or digest}", body=manifest,
        headers={**auth(basic(key)), "Content-Type": OCI_MANIFEST})
    assert response.code == 201, (response.code, body)
    assert header(response, "Docker-Content-Digest") == digest
    return digest, manifest


async def start_upload(server: Server, repo: str, key: str) -> str:
    """POST a new upload session; its Location path."""
    response, body = await server.request("POST", f"/v2/{repo}/blobs/uploads/", headers=auth(basic(key)))
    assert response.code == 202, (response.code, body)
    return header(response, "Location")


def error_of(body: bytes) -> dict:
    """The first OCI error of a response body."""
    document = json.loads(body)
    assert set(document["errors"][0]) == {"code", "message", "detail"}
    return document["errors"][0]
