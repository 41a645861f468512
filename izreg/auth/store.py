# -*- test-case-name: tests.auth.test_store -*-
"""
Accounts and access keys in the shared LMDB environment.

=========  ===================  ==============================================================
database   key                  value (JSON)
=========  ===================  ==============================================================
accounts   account id (ascii)   {"name", "created"}
keys       key id (ascii)       {"account", "name", "hash", "read_only", "created",
                                 "last_used", "revoked"}
=========  ===================  ==============================================================

Times are POSIX seconds (floats); C{last_used} and C{revoked} may be
C{None}. Revoked keys keep their record (so ``key list`` shows them) but
never authenticate again.

Every method is one short transaction, opened and closed inside it: none is
held across a Deferred or an C{await}, and the server and the ``izreg``
command may use the same environment at the same time (LMDB serialises
writers across processes). Reads are a few microseconds, so the server may
call L{AuthStore.get_key} on the reactor thread.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import lmdb
from zope.interface import implementer

from izreg.auth import keys
from izreg.auth.interfaces import IAuthStore
from izreg.auth.keys import AccessKey, RandomBytes
from izreg.core.names import ACCOUNT_RE
from izreg.storage import schema
from izreg.storage.lmdbstore import LmdbStore, dump, load

MAX_NAME_LENGTH = 200
#: decoded key records kept (L{AuthStore.get_key}), by their stored bytes; past it the memo starts over
DECODED_KEYS = 1024


class UnknownAccount(LookupError):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"no such account: {account_id}")
        self.account_id = account_id


class UnknownKey(LookupError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no such key: {key_id}")
        self.key_id = key_id


class InvalidName(ValueError):
    pass


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    created: float


@dataclass(frozen=True)
class KeyRecord:
    """A stored key. Its repr leaves out the hash (not a secret, but nobody's business)."""

    key_id: str
    account: str
    name: str
    read_only: bool
    created: float
    last_used: float | None
    revoked: float | None
    secret_hash: str = field(repr=False)

    @property
    def active(self) -> bool:
        return self.revoked is None

    @property
    def scope(self) -> str:
        return "read-only" if self.read_only else "read-write"


@implementer(IAuthStore)
class AuthStore(LmdbStore):
    """
    Accounts and keys over an open LMDB environment (from
    L{izreg.storage.lmdbenv.open_env}). Does not own or close the environment.

    @param random: source of random bytes (C{secrets.token_bytes}); tests inject one.
    """

    def __init__(self, env: lmdb.Environment, random: RandomBytes = secrets.token_bytes) -> None:
        super().__init__(env, schema.ACCOUNTS, schema.KEYS)
        self._env = env
        self._random = random
        self._accounts = self.handle(schema.ACCOUNTS)
        self._keys = self.handle(schema.KEYS)
        #: (key id, stored bytes) -> its KeyRecord: the JSON decoding of the record a request reads, done once
        self._decoded: dict[tuple[str, bytes], KeyRecord] = {}

    # Accounts ----------------------------------------------------------------

    def create_account(self, now: float, name: str = "") -> Account:
        """A new account with a fresh random id."""
        name = _check_name(name)
        with self.writing() as txn:
            return self._put_new_account(txn, now, name)

    def create_first_account(
        self,
        now: float,
        name: str,
        key_name: str,
        then: Callable[[Account, AccessKey], None],
    ) -> Account | None:
        """
        If there is no account at all, create one with one read-write key and
        call C{then(account, key)} before committing; else return C{None}.

        One transaction: two processes starting on an empty directory create
        one account between them, and if C{then} raises (e.g. it could not
        write the bootstrap file) nothing is committed, so the next start
        tries again instead of leaving a key nobody has ever seen.
        """
        name, key_name = _check_name(name), _check_name(key_name)
        with self.writing() as txn:
            if txn.cursor(db=self._accounts).first():
                return None
            account = self._put_new_account(txn, now, name)
            _, key = self._put_new_key(txn, account.account_id, key_name, False, now)
            then(account, key)
            return account

    def get_account(self, account_id: str) -> Account | None:
        if not ACCOUNT_RE.fullmatch(account_id):
            return None
        with self.reading() as txn:
            raw = txn.get(account_id.encode("ascii"), db=self._accounts)
        return None if raw is None else _account(account_id, raw)

    def list_accounts(self) -> list[Account]:
        """Every account, by id."""
        with self.reading() as txn:
            return [_account(k.decode("ascii"), bytes(v)) for k, v in txn.cursor(db=self._accounts)]

    def delete_account(self, account_id: str) -> int:
        """Delete an account and every key of it (they fail from the next request on); return the key count."""
        with self.writing() as txn:
            if not txn.delete(account_id.encode("ascii"), db=self._accounts):
                raise UnknownAccount(account_id)
            doomed = [k for k, v in txn.cursor(db=self._keys) if load(v).get("account") == account_id]
            for k in doomed:
                txn.delete(k, db=self._keys)
            return len(doomed)

    # Keys --------------------------------------------------------------------

    def create_key(self, account_id: str, now: float, name: str = "", read_only: bool = False) -> tuple[KeyRecord, AccessKey]:
        """
        A new key of C{account_id}. The returned L{AccessKey} is the only
        copy of the secret: show it once, never log it.

        @raise UnknownAccount: if there is no such account.
        """
        name = _check_name(name)
        with self.writing() as txn:
            if not _has_account(txn, self._accounts, account_id):
                raise UnknownAccount(account_id)
            return self._put_new_key(txn, account_id, name, read_only, now)

    def get_key(self, key_id: str) -> KeyRecord | None:
        """The record of C{key_id} (revoked or not), for authentication."""
        if not keys.is_key_id(key_id):
            return None
        with self.reading() as txn:
            raw = txn.get(key_id.encode("ascii"), db=self._keys)
        if raw is None:
            return None
        # read on every request (a revocation by any process shows in the bytes); only their decoding is kept
        record = self._decoded.get((key_id, raw))
        if record is None:
            record = _key(key_id, raw)
            if len(self._decoded) >= DECODED_KEYS:
                self._decoded.clear()
            self._decoded[(key_id, raw)] = record
        return record

    def list_keys(self, account_id: str) -> list[KeyRecord]:
        """
        The keys of C{account_id}, oldest first, revoked ones included.

        @raise UnknownAccount: if there is no such account.
        """
        with self.reading() as txn:
            if not _has_account(txn, self._accounts, account_id):
                raise UnknownAccount(account_id)
            found = [r for r in self._all_keys(txn) if r.account == account_id]
        return sorted(found, key=lambda r: (r.created, r.key_id))

    def revoke_key(self, key_id: str, now: float) -> KeyRecord:
        """
        Revoke C{key_id} (idempotent: an already revoked key keeps its time).
        It fails from the next request on.

        @raise UnknownKey: if there is no such key.
        """
        return self._update_key(key_id, lambda v: v if v.get("revoked") is not None else {**v, "revoked": now})

    def touch_keys(self, stamps: Mapping[str, float]) -> int:
        """
        Record when each key was last used, in one write transaction (a stamp
        never moves backwards; unknown keys are skipped). The number written.
        """
        n = 0
        with self.writing(self._keys) as txn:
            for key_id, now in stamps.items():
                raw = txn.get(key_id.encode("ascii")) if keys.is_key_id(key_id) else None
                if raw is None:
                    continue
                value = load(raw)
                if now > (value.get("last_used") or 0):
                    txn.put(key_id.encode("ascii"), dump({**value, "last_used": now}))
                    n += 1
        return n

    # Internals ---------------------------------------------------------------

    def _put_new_account(self, txn: lmdb.Transaction, now: float, name: str) -> Account:
        while True:
            account_id = keys.generate_account_id(self._random)
            value = dump({"name": name, "created": now})
            if txn.put(account_id.encode("ascii"), value, db=self._accounts, overwrite=False):
                return Account(account_id, name, now)

    def _put_new_key(
        self, txn: lmdb.Transaction, account_id: str, name: str, read_only: bool, now: float
    ) -> tuple[KeyRecord, AccessKey]:
        while True:
            key = keys.generate(self._random)
            record = KeyRecord(key.key_id, account_id, name, read_only, now, None, None, keys.hash_secret(key))
            if txn.put(key.key_id.encode("ascii"), _encode_key(record), db=self._keys, overwrite=False):
                return record, key

    def _update_key(self, key_id: str, change: Callable[[dict], dict]) -> KeyRecord:
        if not keys.is_key_id(key_id):
            raise UnknownKey(key_id)
        with self.writing() as txn:
            raw = txn.get(key_id.encode("ascii"), db=self._keys)
            if raw is None:
                raise UnknownKey(key_id)
            value = change(load(raw))
            txn.put(key_id.encode("ascii"), dump(value), db=self._keys)
        return _key(key_id, dump(value))

    def _all_keys(self, txn: lmdb.Transaction) -> Iterator[KeyRecord]:
        for k, v in txn.cursor(db=self._keys):
            if not k.startswith(b"\x00"):
                yield _key(k.decode("ascii"), bytes(v))


def _has_account(txn: lmdb.Transaction, db: object, account_id: str) -> bool:
    return bool(ACCOUNT_RE.fullmatch(account_id)) and txn.get(account_id.encode("ascii"), db=db) is not None


def _check_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidName(f"names are at most {MAX_NAME_LENGTH} printable characters")
    return name


def _account(account_id: str, raw: bytes) -> Account:
    value = load(raw)
    return Account(account_id, value.get("name", ""), value["created"])


def _encode_key(record: KeyRecord) -> bytes:
    return dump(
        {
            "account": record.account,
            "name": record.name,
            "hash": record.secret_hash,
            "read_only": record.read_only,
            "created": record.created,
            "last_used": record.last_used,
            "revoked": record.revoked,
        }
    )


def _key(key_id: str, raw: bytes) -> KeyRecord:
    value = load(raw)
    return KeyRecord(
        key_id=key_id,
        account=value["account"],
        name=value.get("name", ""),
        read_only=bool(value.get("read_only")),
        created=value["created"],
        last_used=value.get("last_used"),
        revoked=value.get("revoked"),
        secret_hash=value["hash"],
    )
