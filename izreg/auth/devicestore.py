# -*- test-case-name: tests.auth.test_devices -*-
"""
Device revocations and pull records in the LMDB C{devices} database.

Keys (parts joined with NUL, L{izreg.storage.schema.key}; repository names
hold slashes, so slashes cannot separate)::

    revoked NUL serial NUL <hex>                              json {"at", "note"}
    revoked NUL fingerprint NUL <sha256 hex>                  json {"at", "note"}
    pull NUL <account> NUL <device> NUL <repository> NUL <digest>   json {"at"}
    pullof NUL <repokey> NUL <digest> NUL <devicekey>          json {"at", "device"}
    meta NUL pullof                                           b"1" once pullof is complete

``pullof`` is the reverse of ``pull``, written with it: how many devices
pulled a manifest and when last, without scanning the account (the browse
API and the in-use check of deletes read it). Long repository names and
device ids are hashed there (L{izreg.storage.refs.repo_key}), so keys stay
under LMDB's 511 bytes.

Every method is one short transaction. The server reads revocations per
request (L{DeviceStore.revocations_for}: two gets in one read txn), so
C{izreg device revoke} takes effect on the device's next request without a
restart.

Pull records keep the I{last} pull per (device, manifest): a put overwrites.
L{PullRecorder} batches them in memory so a pull costs no fsync; its
C{flush()} writes the batch in one write txn (the service calls it on the
writer thread every few seconds and at stop).

Times are POSIX seconds passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import lmdb
from zope.interface import implementer

from izreg.auth.devices import Revoked, normalize_fingerprint, normalize_serial
from izreg.auth.interfaces import IDeviceStore
from izreg.storage import schema
from izreg.storage.lmdbstore import LmdbStore, dump, load
from izreg.storage.batch import LatestBatch
from izreg.storage.pullkeys import PULL as _PULL
from izreg.storage.pullkeys import PULLOF as _PULLOF
from izreg.storage.pullkeys import pull_key, put_pullof
from izreg.storage.refs import repo_key, scan

SERIAL = "serial"
FINGERPRINT = "fingerprint"
KINDS = (SERIAL, FINGERPRINT)

_REVOKED = b"revoked"


@dataclass(frozen=True)
class Revocation:
    kind: str  # SERIAL or FINGERPRINT
    value: str
    at: float
    note: str = ""


@dataclass(frozen=True)
class PullRecord:
    account: str
    device_id: str
    repository: str
    digest: str
    at: float


def _normalize(kind: str, value: str) -> str:
    if kind == SERIAL:
        return normalize_serial(value)
    if kind == FINGERPRINT:
        return normalize_fingerprint(value)
    raise ValueError(f"unknown revocation kind {kind!r}")


def _check_part(name: str, value: str) -> None:
    if not value or "\x00" in value:
        raise ValueError(f"invalid {name}: {value!r}")


@implementer(IDeviceStore)
class DeviceStore(LmdbStore):
    """Revocations and pull records over an open LMDB environment (see L{izreg.storage.lmdbenv.open_env})."""

    def __init__(self, env: lmdb.Environment) -> None:
        super().__init__(env, schema.DEVICES)
        self._env = env
        self._db = self.handle(schema.DEVICES)  # its pullof index is completed by open_env (pullkeys.index_pulls)

    def pull_devices(self, repository: str, digest: str) -> dict[str, float]:
        """Device id -> its last pull of this manifest."""
        with self.reading(self._db) as txn:
            found = {}
            for _, v in scan(txn, self._db, schema.prefix(_PULLOF, repo_key(repository), digest)):
                record = load(v)
                found[record["device"]] = record["at"]
            return found

    def pulls_of(self, repository: str, digest: str) -> tuple[int, float | None]:
        """How many devices pulled this manifest, and when last (C{None}: never)."""
        found = self.pull_devices(repository, digest)
        return len(found), max(found.values(), default=None)

    # -- revocations ------------------------------------------------------

    def revoke(self, kind: str, value: str, now: float, note: str = "") -> bool:
        """Revoke a serial or fingerprint (normalized first); C{False} if it already was."""
        value = _normalize(kind, value)
        k = schema.key(_REVOKED, kind, value)
        record = dump({"at": now, "note": note})
        with self.writing(self._db) as txn:
            return txn.put(k, record, overwrite=False)

    def unrevoke(self, kind: str, value: str) -> bool:
        """Lift a revocation; C{False} if there was none."""
        k = schema.key(_REVOKED, kind, _normalize(kind, value))
        with self.writing(self._db) as txn:
            return txn.delete(k)

    def revocations_for(self, serial_hex: str, fingerprint: str) -> Revoked:
        """The revoked entries among this certificate's serial and fingerprint (one read txn)."""
        with self.reading(self._db) as txn:
            serial = txn.get(schema.key(_REVOKED, SERIAL, serial_hex)) is not None
            fp = txn.get(schema.key(_REVOKED, FINGERPRINT, fingerprint)) is not None
        return Revoked(frozenset([serial_hex]) if serial else frozenset(),
                       frozenset([fingerprint]) if fp else frozenset())

    def list_revoked(self) -> list[Revocation]:
        out = []
        start = schema.prefix(_REVOKED)
        with self.reading(self._db) as txn:
            cursor = txn.cursor()
            if cursor.set_range(start):
                for k, v in cursor:
                    if not k.startswith(start):
                        break
                    _, kind, value = k.split(schema.SEP)
                    record = load(v)
                    out.append(Revocation(kind.decode(), value.decode(), record["at"], record.get("note", "")))
        return out

    # -- pull records -----------------------------------------------------

    def write_pulls(self, records: Iterable[PullRecord]) -> int:
        """Put every record in one write txn (the last pull per device and manifest wins)."""
        n = 0
        with self.writing(self._db) as txn:
            for r in records:
                txn.put(pull_key(r.account, r.device_id, r.repository, r.digest), dump({"at": r.at}))
                put_pullof(txn, self._db, r.account, r.device_id, r.repository, r.digest, r.at)
                n += 1
        return n

    def list_pulls(self, account: str, repository: str | None = None) -> list[PullRecord]:
        """An account's pull records, by device, repository, digest (optionally one repository only)."""
        start = schema.prefix(_PULL, account)
        out = []
        with self.reading(self._db) as txn:
            cursor = txn.cursor()
            if cursor.set_range(start):
                for k, v in cursor:
                    if not k.startswith(start):
                        break
                    _, acct, device, repo, digest = k.decode().split("\x00")
                    if repository is not None and repo != repository:
                        continue
                    out.append(PullRecord(acct, device, repo, digest, load(v)["at"]))
        return out


class PullRecorder:
    """
    Batches pull records in memory (L{izreg.storage.batch.LatestBatch}):
    C{record()} is a dict put (no I/O); C{flush()} writes the batch in one
    txn, on the writer thread. At most one pending entry per (account,
    device, repository, digest), the latest pull.
    """

    def __init__(self, store: DeviceStore) -> None:
        self._store = store
        self._batch: LatestBatch[tuple[str, str, str, str]] = LatestBatch(
            lambda batch: store.write_pulls(PullRecord(*k, at) for k, at in batch.items()))

    def record(self, account: str, device_id: str, repository: str, digest: str, now: float) -> None:
        for name, value in (("account", account), ("device id", device_id), ("repository", repository),
                            ("digest", digest)):
            _check_part(name, value)
        self._batch.put((account, device_id, repository, digest), now)

    def pending_devices(self, repository: str, digest: str) -> dict[str, float]:
        """Device id -> last pull of this manifest, among the pulls not yet written."""
        return {k[1]: at for k, at in self._batch.items() if k[2] == repository and k[3] == digest}

    def devices(self, repository: str, digest: str) -> dict[str, float]:
        """Device id -> last pull of this manifest, written or not."""
        found = self._store.pull_devices(repository, digest)
        for device, at in self.pending_devices(repository, digest).items():
            found[device] = max(at, found.get(device, at))
        return found

    @property
    def pending(self) -> int:
        return self._batch.pending

    def flush(self) -> int:
        """Write everything recorded so far; return how many records were written."""
        return self._batch.flush()
