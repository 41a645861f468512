# -*- test-case-name: tests.auth.test_store,tests.auth.test_devices -*-
"""
Accounts, access keys and devices in PostgreSQL: the twins of
L{izreg.auth.store.AuthStore} and L{izreg.auth.devicestore.DeviceStore} for
several nodes sharing one database (tables in ``migrations/0003_auth.sql``).

Same methods, arguments, results and exceptions as the LMDB stores; each
public method is one L{Database.run} transaction. They are synchronous:
the ``izreg`` command calls them directly, the server through its runners
on a bounded thread pool, never on the reactor.

Only a key's hash is stored (L{keys.hash_secret}, as on LMDB). Nothing is
cached here: the server reads a key, its account's existence and a
device's revocations on every request, so a revocation on one node is
refused by every node from the next request on.

L{PgTokenKey} keeps the token signing key in the database, sealed with
the nodes' shared C{webhook.key} (L{SecretBox}), so every node verifies
every other node's tokens and C{izreg token rotate-key} reaches them all.
"""

from __future__ import annotations

import secrets
from typing import Callable, Iterable, Mapping

from zope.interface import implementer

from izreg.auth import keys
from izreg.auth.devicestore import FINGERPRINT, SERIAL, PullRecord, Revocation, _normalize
from izreg.auth.devices import Revoked
from izreg.auth.interfaces import IAuthStore, IDeviceStore
from izreg.auth.keys import AccessKey, RandomBytes
from izreg.auth.store import Account, KeyRecord, UnknownAccount, UnknownKey, _check_name
from izreg.core.names import ACCOUNT_RE
from izreg.storage.pg import Database
from izreg.storage.webhooks import SecretBox, WebhookError

#: serializes create_first_account between processes (any constant: "izboot")
_FIRST_ACCOUNT_LOCK = 0x697A626F6F74
_KEY_COLUMNS = "key_id, account_id, name, read_only, created, last_used, revoked, secret_hash"


def _key(row) -> KeyRecord:
    key_id, account, name, read_only, created, last_used, revoked, secret_hash = row
    return KeyRecord(key_id, account, name, bool(read_only), created, last_used, revoked, secret_hash)


@implementer(IAuthStore)
class PgAuthStore:
    """
    Accounts and keys over a L{Database} (upgraded). Does not own or close it.

    @param random: source of random bytes (C{secrets.token_bytes}); tests inject one.
    """

    def __init__(self, db: Database, random: RandomBytes = secrets.token_bytes) -> None:
        self.db = db
        self._random = random

    # Accounts ----------------------------------------------------------------

    def create_account(self, now: float, name: str = "") -> Account:
        name = _check_name(name)
        return self.db.run(self._put_new_account, now, name)

    def create_first_account(
        self,
        now: float,
        name: str,
        key_name: str,
        then: Callable[[Account, AccessKey], None],
    ) -> Account | None:
        name, key_name = _check_name(name), _check_name(key_name)

        def first(cur):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_FIRST_ACCOUNT_LOCK,))
            cur.execute("SELECT 1 FROM accounts LIMIT 1")
            if cur.fetchone() is not None:
                return None
            account = self._put_new_account(cur, now, name)
            _, key = self._put_new_key(cur, account.account_id, key_name, False, now)
            then(account, key)
            return account

        return self.db.run(first)

    def get_account(self, account_id: str) -> Account | None:
        if not ACCOUNT_RE.fullmatch(account_id):
            return None

        def get(cur):
            cur.execute("SELECT name, created FROM accounts WHERE account_id = %s", (account_id,))
            return cur.fetchone()

        row = self.db.run(get)
        return None if row is None else Account(account_id, row[0], row[1])

    def list_accounts(self) -> list[Account]:
        def every(cur):
            cur.execute("SELECT account_id, name, created FROM accounts ORDER BY account_id")
            return cur.fetchall()

        return [Account(*row) for row in self.db.run(every)]

    def delete_account(self, account_id: str) -> int:
        def delete(cur):
            cur.execute("DELETE FROM accounts WHERE account_id = %s", (account_id,))
            if cur.rowcount == 0:
                raise UnknownAccount(account_id)
            cur.execute("DELETE FROM access_keys WHERE account_id = %s", (account_id,))
            return cur.rowcount

        return self.db.run(delete)

    # Keys --------------------------------------------------------------------

    def create_key(self, account_id: str, now: float, name: str = "", read_only: bool = False) -> tuple[KeyRecord, AccessKey]:
        name = _check_name(name)

        def create(cur):
            if not _has_account(cur, account_id, lock=True):
                raise UnknownAccount(account_id)
            return self._put_new_key(cur, account_id, name, read_only, now)

        return self.db.run(create)

    def get_key(self, key_id: str) -> KeyRecord | None:
        if not keys.is_key_id(key_id):
            return None

        def get(cur):
            cur.execute(f"SELECT {_KEY_COLUMNS} FROM access_keys WHERE key_id = %s", (key_id,))
            return cur.fetchone()

        row = self.db.read(get)
        return None if row is None else _key(row)

    def list_keys(self, account_id: str) -> list[KeyRecord]:
        def every(cur):
            if not _has_account(cur, account_id):
                raise UnknownAccount(account_id)
            cur.execute(f"SELECT {_KEY_COLUMNS} FROM access_keys WHERE account_id = %s ORDER BY created, key_id",
                        (account_id,))
            return cur.fetchall()

        return [_key(row) for row in self.db.run(every)]

    def revoke_key(self, key_id: str, now: float) -> KeyRecord:
        if not keys.is_key_id(key_id):
            raise UnknownKey(key_id)

        def revoke(cur):
            cur.execute(f"UPDATE access_keys SET revoked = COALESCE(revoked, %s) WHERE key_id = %s"
                        f" RETURNING {_KEY_COLUMNS}", (now, key_id))
            row = cur.fetchone()
            if row is None:
                raise UnknownKey(key_id)
            return _key(row)

        return self.db.run(revoke)

    def touch_keys(self, stamps: Mapping[str, float]) -> int:
        # sorted: two nodes touching the same keys lock them in the same order (no deadlock)
        rows = sorted((k, float(t)) for k, t in stamps.items() if keys.is_key_id(k))
        if not rows:
            return 0

        def touch(cur):
            cur.execute(
                "UPDATE access_keys AS k SET last_used = s.at"
                " FROM unnest(%s::text[], %s::float8[]) AS s(key_id, at)"
                " WHERE k.key_id = s.key_id AND (k.last_used IS NULL OR k.last_used < s.at)",
                ([k for k, _ in rows], [t for _, t in rows]))
            return cur.rowcount

        return self.db.run(touch)

    # Internals ---------------------------------------------------------------

    def _put_new_account(self, cur, now: float, name: str) -> Account:
        while True:
            account_id = keys.generate_account_id(self._random)
            cur.execute("INSERT INTO accounts (account_id, name, created) VALUES (%s, %s, %s)"
                        " ON CONFLICT DO NOTHING", (account_id, name, now))
            if cur.rowcount == 1:
                return Account(account_id, name, now)

    def _put_new_key(self, cur, account_id: str, name: str, read_only: bool, now: float) -> tuple[KeyRecord, AccessKey]:
        while True:
            key = keys.generate(self._random)
            record = KeyRecord(key.key_id, account_id, name, read_only, now, None, None, keys.hash_secret(key))
            cur.execute("INSERT INTO access_keys (key_id, account_id, name, secret_hash, read_only, created)"
                        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (record.key_id, account_id, name, record.secret_hash, read_only, now))
            if cur.rowcount == 1:
                return record, key


def _has_account(cur, account_id: str, lock: bool = False) -> bool:
    """Whether the account exists; C{lock}: hold it (a concurrent delete waits, and no key outlives it)."""
    if not ACCOUNT_RE.fullmatch(account_id):
        return False
    cur.execute("SELECT 1 FROM accounts WHERE account_id = %s" + (" FOR SHARE" if lock else ""), (account_id,))
    return cur.fetchone() is not None


@implementer(IDeviceStore)
class PgDeviceStore:
    """Device revocations and pull records over a L{Database} (upgraded). Does not own or close it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- revocations ------------------------------------------------------

    def revoke(self, kind: str, value: str, now: float, note: str = "") -> bool:
        value = _normalize(kind, value)

        def revoke(cur):
            cur.execute("INSERT INTO device_revocations (kind, value, at, note) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING", (kind, value, now, note))
            return cur.rowcount == 1

        return self.db.run(revoke)

    def unrevoke(self, kind: str, value: str) -> bool:
        value = _normalize(kind, value)

        def unrevoke(cur):
            cur.execute("DELETE FROM device_revocations WHERE kind = %s AND value = %s", (kind, value))
            return cur.rowcount == 1

        return self.db.run(unrevoke)

    def revocations_for(self, serial_hex: str, fingerprint: str) -> Revoked:
        def read(cur):
            cur.execute("SELECT kind FROM device_revocations WHERE (kind = %s AND value = %s) OR (kind = %s AND value = %s)",
                        (SERIAL, serial_hex, FINGERPRINT, fingerprint))
            return {kind for (kind,) in cur.fetchall()}

        found = self.db.read(read)
        return Revoked(frozenset([serial_hex]) if SERIAL in found else frozenset(),
                       frozenset([fingerprint]) if FINGERPRINT in found else frozenset())

    def list_revoked(self) -> list[Revocation]:
        def every(cur):
            cur.execute("SELECT kind, value, at, note FROM device_revocations ORDER BY kind, value")
            return cur.fetchall()

        return [Revocation(*row) for row in self.db.run(every)]

    # -- pull records -----------------------------------------------------

    def write_pulls(self, records: Iterable[PullRecord]) -> int:
        latest: dict[tuple[str, str, str, str], float] = {}
        n = 0
        for r in records:
            k = (r.account, r.device_id, r.repository, r.digest)
            latest[k] = max(r.at, latest.get(k, r.at))
            n += 1
        if not latest:
            return 0
        # sorted: nodes flushing the same rows lock them in the same order (no deadlock)
        rows = sorted((*k, at) for k, at in latest.items())

        def write(cur):
            cur.execute(
                "INSERT INTO device_pulls (account, device, repository, digest, at)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[])"
                " ON CONFLICT (account, device, repository, digest)"
                " DO UPDATE SET at = GREATEST(device_pulls.at, EXCLUDED.at)",
                [list(column) for column in zip(*rows)])

        self.db.run(write)
        return n

    def list_pulls(self, account: str, repository: str | None = None) -> list[PullRecord]:
        def every(cur):
            if repository is None:
                cur.execute("SELECT account, device, repository, digest, at FROM device_pulls WHERE account = %s"
                            " ORDER BY device, repository, digest", (account,))
            else:
                cur.execute("SELECT account, device, repository, digest, at FROM device_pulls"
                            " WHERE account = %s AND repository = %s ORDER BY device, repository, digest",
                            (account, repository))
            return cur.fetchall()

        return [PullRecord(*row) for row in self.db.run(every)]

    def pull_devices(self, repository: str, digest: str) -> dict[str, float]:
        def read(cur):
            cur.execute("SELECT device, max(at) FROM device_pulls WHERE repository = %s AND digest = %s"
                        " GROUP BY device ORDER BY device", (repository, digest))
            return cur.fetchall()

        return dict(self.db.run(read))

    def pulls_of(self, repository: str, digest: str) -> tuple[int, float | None]:
        def read(cur):
            cur.execute("SELECT count(DISTINCT device), max(at) FROM device_pulls WHERE repository = %s AND digest = %s",
                        (repository, digest))
            return cur.fetchone()

        count, last = self.db.run(read)
        return int(count), last


TOKEN_KEY = "token.key"


class PgTokenKey:
    """
    The token signing key of every node, in the database, sealed with the
    nodes' shared C{webhook.key} (L{SecretBox}): the twin of
    L{izreg.auth.tokenkey.TokenKey} (same C{secret()} and C{rotate()}).
    Each C{secret()} is one read (the server calls it through its reader
    runner), so a rotation on one node reaches every node at its next token.
    """

    def __init__(self, db: Database, data_dir: str, now: Callable[[], float] | None = None) -> None:
        import time

        self.db = db
        self.box = SecretBox(data_dir)
        self._now = now or time.time
        self._opened: tuple[str, bytes] | None = None  # (sealed, secret): unseal once per value

    def __repr__(self) -> str:
        return "PgTokenKey(<in the database>)"

    def secret(self) -> bytes:
        def read(cur):
            cur.execute("SELECT sealed FROM sealed_secrets WHERE name = %s", (TOKEN_KEY,))
            row = cur.fetchone()
            return None if row is None else row[0]

        sealed = self.db.read(read)
        if sealed is None:
            self.rotate(replace=False)
            sealed = self.db.read(read)
        opened = self._opened
        if opened is None or opened[0] != sealed:
            try:
                secret = bytes.fromhex(self.box.open(sealed).decode("ascii"))
            except WebhookError:
                raise WebhookError(f"the token key in the database was sealed under another {self.box.path}: every"
                                   " node needs the same file (copy it from the first node)") from None
            if len(secret) < 32:
                raise ValueError("the token key in the database is not a 32-byte key")
            self._opened = opened = (sealed, secret)
        return opened[1]

    def rotate(self, replace: bool = True) -> None:
        """A new key (every token signed with the old one fails); C{replace=False}: keep an existing one."""
        sealed = self.box.seal(secrets.token_bytes(32).hex())
        now = self._now()

        def write(cur):
            cur.execute("INSERT INTO sealed_secrets (name, sealed, created) VALUES (%s, %s, %s) ON CONFLICT (name) "
                        + ("DO UPDATE SET sealed = EXCLUDED.sealed, created = EXCLUDED.created" if replace else "DO NOTHING"),
                        (TOKEN_KEY, sealed, now))

        self.db.run(write)
