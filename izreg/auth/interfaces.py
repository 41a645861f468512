"""
What the server and the ``izreg`` command may ask of the accounts-and-keys
store and of the device store. Two implementations of each: LMDB
(L{izreg.auth.store.AuthStore}, L{izreg.auth.devicestore.DeviceStore}), the
embedded default of one node, and PostgreSQL (L{izreg.auth.pgstore}), shared
by several nodes. ``tests/auth/test_store.py`` and ``tests/auth/test_devices.py``
hold both to the same behaviour.

Every method is synchronous and one transaction. The server calls them
through its runners (C{run_read}/C{run_write}), never directly on the
reactor: the LMDB runner for reads calls inline (microseconds), the
PostgreSQL one runs them on a bounded thread pool.
"""

from __future__ import annotations

from zope.interface import Interface


class IAuthStore(Interface):
    """Accounts and access keys (L{izreg.auth.store.Account}, L{izreg.auth.store.KeyRecord})."""

    def create_account(now: float, name: str = ""):
        """A new L{Account} with a fresh random id. @raise InvalidName."""

    def create_first_account(now: float, name: str, key_name: str, then):
        """
        If there is no account at all, create one with one read-write key and
        call C{then(account, key)} before committing (nothing is committed if
        it raises); else return C{None}. Two processes at once create one.
        """

    def get_account(account_id: str):
        """The L{Account} or C{None}."""

    def list_accounts():
        """Every L{Account}, by id."""

    def delete_account(account_id: str) -> int:
        """Delete an account and its keys; the key count. @raise UnknownAccount."""

    def create_key(account_id: str, now: float, name: str = "", read_only: bool = False):
        """C{(KeyRecord, AccessKey)}: the only copy of the secret; only its hash is stored. @raise UnknownAccount."""

    def get_key(key_id: str):
        """The L{KeyRecord} (revoked or not) or C{None}: read on every authenticated request."""

    def list_keys(account_id: str):
        """The account's keys, oldest first, revoked ones included. @raise UnknownAccount."""

    def revoke_key(key_id: str, now: float):
        """Revoke (idempotent: keeps the first time); the L{KeyRecord}. @raise UnknownKey."""

    def touch_keys(stamps) -> int:
        """Last-used stamps C{{key id: time}} in one transaction (never backwards; unknown skipped); the count written."""


class IDeviceStore(Interface):
    """Device revocations and pull records (L{izreg.auth.devicestore.Revocation}, L{PullRecord})."""

    def revoke(kind: str, value: str, now: float, note: str = "") -> bool:
        """Revoke a serial or fingerprint (normalized); C{False} if it already was. @raise ValueError."""

    def unrevoke(kind: str, value: str) -> bool:
        """Lift a revocation; C{False} if there was none."""

    def revocations_for(serial_hex: str, fingerprint: str):
        """The L{Revoked} entries among this certificate's serial and fingerprint: read on every device request."""

    def list_revoked():
        """Every L{Revocation}, by kind then value."""

    def write_pulls(records) -> int:
        """Write pull records in one transaction (the last pull per device and manifest is kept); the count."""

    def list_pulls(account: str, repository: str | None = None):
        """An account's L{PullRecord}s by device, repository, digest."""

    def pull_devices(repository: str, digest: str):
        """Device id -> its last pull of this manifest."""

    def pulls_of(repository: str, digest: str):
        """C{(devices, last pull or None)} of this manifest."""
