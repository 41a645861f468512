# -*- test-case-name: tests.storage.test_webhooks -*-
"""
Webhooks and their delivery queue in PostgreSQL (tables ``webhooks`` and
``webhook_deliveries``): the twin of L{izreg.storage.webhooks.WebhookStore}
for several nodes sharing one database.

Secrets are sealed exactly as on LMDB (L{SecretBox}: Fernet under
``<data dir>/webhook.key``); every node needs the same key file, so copy it
from the first node to the others (a database dump alone reveals no secret).

Each queued event is delivered by one node at a time: L{PgWebhookStore.due}
claims the due deliveries with ``SELECT ... FOR UPDATE SKIP LOCKED`` and
moves their next try C{lease} seconds ahead in the same transaction, so no
other node takes them until L{PgWebhookStore.finish} records the outcome; if
the node dies meanwhile, the lease ends and another node sends it again (at
least once, durable).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

from zope.interface import implementer

from izreg.core import cloudevents
from izreg.storage.interfaces import IWebhookStore
from izreg.storage.pgaudit import select
from izreg.storage.pg import Database
from izreg.storage.webhooks import (DELIVERED, FAILED, KEY_FILE, PENDING, Hook, SecretBox, WebhookError, _new_id,
                                   check_url)

#: seconds a node holds the deliveries it claimed (longer than a delivery's timeout)
LEASE = 300.0

#: the row of C{sealed_secrets} that the first node seals to show which C{webhook.key} the nodes share
KEY_CHECK = "webhook.key check"


def check_sealing_key(db: Database, data_dir: str) -> None:
    """
    At a node's start: refuse (L{WebhookError}, one line) a C{data_dir} whose
    C{webhook.key} is missing or not the one the database's secrets (the token
    key, webhook secrets) were sealed with. A node without it would make a key
    of its own and open nothing another node sealed. On a database that holds
    no sealed secret yet, the first node to start seals a check value with its
    key (made now if missing): a second node started at the same time with a
    key of its own is refused at once, not when it first needs a secret.
    """
    def sample(cur):
        cur.execute("SELECT sealed FROM sealed_secrets ORDER BY name LIMIT 1")
        row = cur.fetchone()
        if row is None:
            cur.execute("SELECT secret FROM webhooks ORDER BY account, id LIMIT 1")
            row = cur.fetchone()
        return None if row is None else row[0]

    sealed = db.run(sample)
    if sealed is None:
        check = SecretBox(data_dir).seal(secrets.token_hex(16))

        def claim(cur):  # the first node's check value stays; a later one's insert does nothing
            cur.execute("INSERT INTO sealed_secrets (name, sealed, created) VALUES (%s, %s, %s)"
                        " ON CONFLICT (name) DO NOTHING", (KEY_CHECK, check, time.time()))

        db.run(claim)
        sealed = db.run(sample)
    path = os.path.join(data_dir, KEY_FILE)
    if not os.path.exists(path):
        raise WebhookError(f"no {path}, but the database holds secrets sealed with the nodes' {KEY_FILE}: copy it"
                           " from another node before starting this one (docs/deploy.rst)")
    try:
        SecretBox(data_dir, create=False).open(sealed)
    except (WebhookError, ValueError):  # ValueError: not a Fernet key at all
        raise WebhookError(f"{path} is not the key the database's secrets were sealed with: copy the nodes'"
                           f" {KEY_FILE} from another node (docs/deploy.rst)") from None


def _hook(row) -> Hook:
    hook_id, account, url, events, created = row
    return Hook(hook_id, account, url, tuple(json.loads(events)), created)


@implementer(IWebhookStore)
class PgWebhookStore:
    """
    Webhooks over a L{Database} (upgraded); C{data_dir} holds the sealing key
    (C{webhook.key}, the same file on every node). Does not own or close the database.
    """

    def __init__(self, db: Database, data_dir: str, lease: float = LEASE) -> None:
        self.db = db
        self.box = SecretBox(data_dir)
        self.lease = lease

    # -- webhooks (the CLI) ---------------------------------------------------

    def add(self, account: str, url: str, secret: str, events: tuple[str, ...], now: float) -> Hook:
        if len(secret) < 16:
            raise WebhookError("the webhook secret must be at least 16 characters")
        hook = Hook(secrets.token_hex(8), account, check_url(url), events, now)
        sealed = self.box.seal(secret)

        def add(cur):
            cur.execute("INSERT INTO webhooks (account, id, url, events, secret, created) VALUES (%s, %s, %s, %s, %s, %s)",
                        (account, hook.id, hook.url, json.dumps(list(events)), sealed, now))

        self.db.run(add)
        return hook

    def hooks(self, account: str | None = None) -> list[Hook]:
        return [_hook(row) for row in self.db.read(_hooks, account)]

    def remove(self, hook_id: str) -> Hook | None:
        def remove(cur):
            cur.execute("DELETE FROM webhooks WHERE id = %s RETURNING id, account, url, events, created", (hook_id,))
            return cur.fetchone()

        row = self.db.run(remove)
        return None if row is None else _hook(row)

    def secret(self, account: str, hook_id: str) -> bytes | None:
        def read(cur):
            cur.execute("SELECT secret FROM webhooks WHERE account = %s AND id = %s", (account, hook_id))
            return cur.fetchone()

        row = self.db.read(read)
        return None if row is None else self.box.open(row[0])

    def wants(self, account: str, kind: str) -> list[Hook]:
        return [h for h in self.hooks(account) if kind in h.events]

    # -- the queue (the server) ----------------------------------------------------

    def enqueue(self, kind: str, now: float, **fields: Any) -> list[str]:
        def enqueue(cur):
            hooks = [h for h in map(_hook, _hooks(cur, fields["account"])) if kind in h.events]
            if not hooks:
                return []
            event = cloudevents.cloud_event(kind, secrets.token_hex(16), now, **fields)
            ids = []
            for hook in hooks:
                delivery_id = _new_id(now).hex()
                record = {"hook": hook.id, "account": hook.account, "url": hook.url, "event": event,
                          "status": PENDING, "attempts": 0, "next_try": now, "last_status": None,
                          "last_error": None, "created": now, "done": None}
                cur.execute("INSERT INTO webhook_deliveries (id, account, hook, status, next_try, record)"
                            " VALUES (%s, %s, %s, %s, %s, %s)",
                            (delivery_id, hook.account, hook.id, PENDING, now, json.dumps(record)))
                ids.append(delivery_id)
            return ids

        return self.db.run(enqueue)

    def due(self, now: float, limit: int, busy: set[str] = frozenset()) -> list[tuple[str, dict]]:
        """Claim the due deliveries (oldest first) for C{lease} seconds: no other node gets them meanwhile."""
        if limit <= 0:
            return []

        def claim(cur):
            cur.execute("SELECT id, record FROM webhook_deliveries WHERE status = %s AND next_try <= %s"
                        " AND NOT (id = ANY(%s)) ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                        (PENDING, now, list(busy), limit))
            found = [(delivery_id, json.loads(record)) for delivery_id, record in cur.fetchall()]
            if found:
                cur.execute("UPDATE webhook_deliveries SET next_try = %s WHERE id = ANY(%s)",
                            (now + self.lease, [delivery_id for delivery_id, _ in found]))
            return found

        return self.db.run(claim)

    def next_due(self) -> float | None:
        def read(cur):
            cur.execute("SELECT min(next_try) FROM webhook_deliveries WHERE status = %s", (PENDING,))
            return cur.fetchone()[0]

        return self.db.run(read)

    def finish(self, delivery_id: str, now: float, status: int | None, error: str | None,
               next_try: float | None) -> dict | None:
        def finish(cur):
            cur.execute("SELECT record FROM webhook_deliveries WHERE id = %s FOR UPDATE", (delivery_id,))
            row = cur.fetchone()
            if row is None:
                return None
            record = json.loads(row[0])
            record["attempts"] += 1
            record["last_status"], record["last_error"] = status, error
            if error is None or next_try is None:
                record["status"] = DELIVERED if error is None else FAILED
                record["done"] = now
            else:
                record["next_try"] = next_try
            cur.execute("UPDATE webhook_deliveries SET status = %s, next_try = %s, done = %s, record = %s WHERE id = %s",
                        (record["status"], record["next_try"], record["done"], json.dumps(record), delivery_id))
            return record

        return self.db.run(finish)

    def deliveries(self, account: str | None = None, hook_id: str | None = None, limit: int | None = None) -> list[dict]:
        rows = self.db.run(select, "SELECT id, record FROM webhook_deliveries",
                           {"account = %s": account or None, "hook = %s": hook_id or None}, "id DESC", limit)
        return [{"id": delivery_id, **json.loads(record)} for delivery_id, record in rows]

    def prune(self, before: float) -> int:
        def prune(cur):
            cur.execute("DELETE FROM webhook_deliveries WHERE status <> %s AND COALESCE(done, 0) < %s", (PENDING, before))
            return cur.rowcount

        return self.db.run(prune)


def _hooks(cur, account: str | None) -> list[tuple]:
    if account:
        cur.execute("SELECT id, account, url, events, created FROM webhooks WHERE account = %s ORDER BY id", (account,))
    else:
        cur.execute("SELECT id, account, url, events, created FROM webhooks ORDER BY account, id")
    return cur.fetchall()
