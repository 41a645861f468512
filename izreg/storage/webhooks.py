# -*- test-case-name: tests.storage.test_webhooks -*-
"""
Webhooks per account and their delivery queue, in the index (LMDB), so
that no event is lost when the registry restarts.

- ``webhooks``: ``account NUL hook id`` -> ``{"id", "account", "url",
  "events", "secret", "created"}``. The secret signs every delivery, so it
  cannot be only hashed: it is encrypted (Fernet: AES-128-CBC + HMAC-SHA256,
  from ``cryptography``) under a key kept in ``<data dir>/webhook.key``
  (mode 0600, created on first use). The index alone (a copied ``data.mdb``)
  does not reveal it; never logged, never printed.
- ``webhook_queue``: delivery id (time-ordered like the audit log) ->
  ``{"hook", "account", "url", "event", "status", "attempts", "next_try",
  "last_status", "last_error", "created", "done"}``; status is ``pending``,
  ``delivered`` or ``failed`` (gave up, or the webhook was removed).
- ``webhook_due``: the ids of pending deliveries (what the dispatcher scans).

Enqueueing is a write: the server does it on its writer thread, right after
the change it reports. Finished deliveries are kept for
L{KEEP_FINISHED} seconds for ``izreg webhook deliveries``.
"""

from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import lmdb
from cryptography.fernet import Fernet, InvalidToken
from zope.interface import implementer

from izreg.core import cloudevents
from izreg.storage import schema
from izreg.storage.interfaces import IWebhookStore
from izreg.storage.lmdbstore import LmdbStore, dump, load

KEY_FILE = "webhook.key"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
#: finished deliveries are listed for a week, then pruned
KEEP_FINISHED = 7 * 24 * 3600
_TIME = struct.Struct(">Q")


class WebhookError(ValueError):
    """A bad webhook definition (one line for the user)."""


@dataclass(frozen=True)
class Hook:
    id: str
    account: str
    url: str
    events: tuple[str, ...]
    created: float

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "account": self.account, "url": self.url, "events": list(self.events),
                "created": self.created}


class SecretBox:
    """
    Encrypts webhook secrets under the data dir's key file (created 0600 on
    first use, unless C{create} is false: then a missing file is a
    L{WebhookError}, as for an C{izreg} command on PostgreSQL, whose nodes
    share one key file that a new one would not match).
    """

    def __init__(self, data_dir: str, create: bool = True) -> None:
        self.path = os.path.join(data_dir, KEY_FILE)
        self.create = create
        self._fernet: Fernet | None = None

    def _key(self) -> Fernet:
        if self._fernet is None:
            if not self.create and not os.path.exists(self.path):
                raise WebhookError(f"no {self.path}: copy the nodes' {KEY_FILE} there (it seals the secrets in the"
                                   " database; docs/deploy.rst), or run this command on a node")
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key())
                    f.flush()
                    os.fsync(f.fileno())
            with open(self.path, "rb") as f:
                self._fernet = Fernet(f.read().strip())
        return self._fernet

    def seal(self, secret: str) -> str:
        return self._key().encrypt(secret.encode()).decode("ascii")

    def open(self, sealed: str) -> bytes:
        try:
            return self._key().decrypt(sealed.encode("ascii"))
        except InvalidToken:
            raise WebhookError(f"cannot decrypt a webhook secret: {self.path} is not the key it was sealed with") from None


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"a webhook URL must be http:// or https:// with a host, not {url[:200]!r}")
    if parts.username or parts.password:
        raise WebhookError("put no credentials in the webhook URL: the receiver checks the signature")
    return url


def _new_id(now: float) -> bytes:
    return _TIME.pack(max(0, int(now * 1_000_000))) + os.urandom(8)


@implementer(IWebhookStore)
class WebhookStore(LmdbStore):
    def __init__(self, env: lmdb.Environment, data_dir: str) -> None:
        super().__init__(env, schema.WEBHOOKS, schema.WEBHOOK_QUEUE, schema.WEBHOOK_DUE)
        self.box = SecretBox(data_dir)
        self._hooks = self.handle(schema.WEBHOOKS)
        self._queue = self.handle(schema.WEBHOOK_QUEUE)
        self._due = self.handle(schema.WEBHOOK_DUE)

    # -- webhooks (the CLI) ---------------------------------------------------

    def add(self, account: str, url: str, secret: str, events: tuple[str, ...], now: float) -> Hook:
        if len(secret) < 16:
            raise WebhookError("the webhook secret must be at least 16 characters")
        hook = Hook(secrets.token_hex(8), account, check_url(url), events, now)
        value = {**hook.public(), "secret": self.box.seal(secret)}
        with self.writing() as txn:
            txn.put(schema.key(account, hook.id), dump(value), db=self._hooks)
        return hook

    def hooks(self, account: str | None = None) -> list[Hook]:
        start = schema.prefix(account) if account else b""
        out = []
        with self.reading() as txn:
            cursor = txn.cursor(db=self._hooks)
            if not cursor.set_range(start):
                return out
            for k, v in cursor:
                if not k.startswith(start):
                    break
                out.append(_hook(load(v)))
        return out

    def remove(self, hook_id: str) -> Hook | None:
        with self.writing() as txn:
            for k, v in txn.cursor(db=self._hooks):
                value = load(v)
                if value["id"] == hook_id:
                    txn.delete(k, db=self._hooks)
                    return _hook(value)
        return None

    def secret(self, account: str, hook_id: str) -> bytes | None:
        """The hook's secret, decrypted; C{None} if the hook is gone."""
        with self.reading() as txn:
            raw = txn.get(schema.key(account, hook_id), db=self._hooks)
        return None if raw is None else self.box.open(load(raw)["secret"])

    def wants(self, account: str, kind: str) -> list[Hook]:
        """The account's hooks subscribed to C{kind} (a quick read)."""
        return [h for h in self.hooks(account) if kind in h.events]

    # -- the queue (the server) ----------------------------------------------------

    def enqueue(self, kind: str, now: float, **fields: Any) -> list[str]:
        """Queue the event for each of the account's hooks that want it (a write); the delivery ids."""
        hooks = self.wants(fields["account"], kind)
        if not hooks:
            return []
        event = cloudevents.cloud_event(kind, secrets.token_hex(16), now, **fields)
        ids = []
        with self.writing() as txn:
            for hook in hooks:
                delivery_id = _new_id(now)
                record = {"hook": hook.id, "account": hook.account, "url": hook.url, "event": event,
                          "status": PENDING, "attempts": 0, "next_try": now, "last_status": None,
                          "last_error": None, "created": now, "done": None}
                txn.put(delivery_id, dump(record), db=self._queue)
                txn.put(delivery_id, b"", db=self._due)
                ids.append(delivery_id.hex())
        return ids

    def due(self, now: float, limit: int, busy: set[str] = frozenset()) -> list[tuple[str, dict]]:
        """Pending deliveries whose time has come (oldest first), except C{busy} ones."""
        out = []
        with self.reading() as txn:
            for k, _ in txn.cursor(db=self._due):
                if len(out) >= limit:
                    break
                if k.hex() in busy:
                    continue
                raw = txn.get(k, db=self._queue)
                if raw is None:
                    continue
                record = load(raw)
                if record["next_try"] <= now:
                    out.append((k.hex(), record))
        return out

    def next_due(self) -> float | None:
        """When the earliest pending delivery is due, or C{None} (a read)."""
        soonest = None
        with self.reading() as txn:
            for k, _ in txn.cursor(db=self._due):
                raw = txn.get(k, db=self._queue)
                if raw is not None:
                    t = load(raw)["next_try"]
                    soonest = t if soonest is None else min(soonest, t)
        return soonest

    def finish(self, delivery_id: str, now: float, status: int | None, error: str | None,
               next_try: float | None) -> dict | None:
        """
        Record an attempt (a write): delivered when C{error} is C{None}; else
        retried at C{next_try}, or failed for good when that is C{None}.
        """
        key = bytes.fromhex(delivery_id)
        with self.writing() as txn:
            raw = txn.get(key, db=self._queue)
            if raw is None:
                return None
            record = load(raw)
            record["attempts"] += 1
            record["last_status"], record["last_error"] = status, error
            if error is None or next_try is None:
                record["status"] = DELIVERED if error is None else FAILED
                record["done"] = now
                txn.delete(key, db=self._due)
            else:
                record["next_try"] = next_try
            txn.put(key, dump(record), db=self._queue)
        return record

    def deliveries(self, account: str | None = None, hook_id: str | None = None, limit: int | None = None) -> list[dict]:
        """Newest first."""
        out = []
        with self.reading() as txn:
            cursor = txn.cursor(db=self._queue)
            if not cursor.last():
                return out
            for k, v in cursor.iterprev():
                if limit is not None and len(out) >= limit:
                    break
                record = load(v)
                if (account and record["account"] != account) or (hook_id and record["hook"] != hook_id):
                    continue
                out.append({"id": k.hex(), **record})
        return out

    def prune(self, before: float) -> int:
        """Drop finished deliveries done before C{before} (a write)."""
        dropped = 0
        with self.writing() as txn:
            cursor = txn.cursor(db=self._queue)
            for k, v in list(cursor):
                record = load(v)
                if record["status"] != PENDING and (record["done"] or 0) < before:
                    txn.delete(k, db=self._queue)
                    dropped += 1
        return dropped


def _hook(value: dict) -> Hook:
    return Hook(value["id"], value["account"], value["url"], tuple(value["events"]), value["created"])
