# -*- test-case-name: tests.e2e.test_gc -*-
"""
The server's garbage-collection sweep: L{izreg.storage.gc.Collector}'s
scans on the I/O pool, the deletes on the writer thread (a batch of
candidates per short transaction, ordered with every push), retention through the registry's
own delete (in-use protection and audit record included).
"""

from __future__ import annotations

from twisted.logger import Logger

from izreg.core.digest import Digest
from izreg.core.errors import RegistryError
from izreg.core.names import Repository
from izreg.storage.audit import PRUNE_BATCH, Retention, prune_batches
from izreg.storage.gc import Collector, PgSweepLock, SweepLock, SweepResult

log = Logger()


async def sweep(registry, collector: Collector, lock: SweepLock | PgSweepLock,
                retention: Retention = Retention()) -> SweepResult | None:
    """
    One sweep, then the audit log pruned to C{retention}, unless another
    sweep (``izreg gc``, another node) holds the lock; C{None} then.
    """
    if not await registry.run_io(lock.acquire):  # a thread: the lock may be in the database
        log.info("gc: a sweep is already running (izreg gc, or another node); skipping this one")
        return None
    try:
        result = await _sweep(registry, collector)
        result.audit = await prune_audit(registry, retention)
        return result
    finally:
        await registry.run_io(lock.release)


async def prune_audit(registry, retention: Retention) -> int:
    """The audit records older or more than C{retention} keeps go, a batch per write transaction; how many."""
    if registry.audit is None:
        return 0
    total = await prune_batches(registry.audit, retention, registry.now(), PRUNE_BATCH, registry.run_write)
    if total:
        log.info("audit: pruned {count} records past the retention", count=total)
    return total


async def _sweep(registry, collector: Collector) -> SweepResult:
    result = await collector.run(registry.now, run_read=registry.run_io, run_write=registry.run_write,
                                 expire=lambda name, digest: _expire(registry, name, digest))
    if result.files or result.links or result.manifests:
        log.info("gc: freed {files} files, {bytes} bytes; unlinked {links} stale links; expired {manifests}"
                 " untagged manifests ({batches} write transactions)", **result.to_json())
    return result


async def _expire(registry, name: str, digest: str) -> bool:
    """Delete an untagged manifest through the registry (in-use protection, audit record); whether it went."""
    try:
        await registry.delete_manifest(Repository(name), Digest.parse(digest), ("retention", None))
    except RegistryError as e:
        log.info("retention kept {name}@{digest}: {reason}", name=name, digest=digest, reason=e.message)
        return False
    return True
