# -*- test-case-name: tests.service.test_tap -*-
"""
The storage lifecycle: LMDB and the thread pools are opened in
C{startService} (after twistd has forked: LMDB must never cross a fork)
and closed in C{stopService}.
"""

from __future__ import annotations

import os

from twisted.application import service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from izreg.registry import Limits, Registry
from izreg.service.config import Config
from izreg.storage.blobs import BlobStore
from izreg.storage.lmdbenv import open_env
from izreg.storage.lmdbindex import Index
from izreg.storage.uploads import Uploads


class RegistryService(service.MultiService):
    """Owns the storage; its children (listeners, timers) start once it is open."""

    log = Logger()

    def __init__(self, config: Config, api, reactor) -> None:
        super().__init__()
        self.config = config
        self.api = api
        self.reactor = reactor
        self.registry: Registry | None = None
        self._pools: list[ThreadPool] = []

    def _runner(self, pool: ThreadPool):
        def run(f, *args, **kwargs):
            return deferToThreadPool(self.reactor, pool, f, *args, **kwargs)

        return run

    def startService(self) -> None:
        root = os.path.abspath(self.config.data_dir)
        os.makedirs(root, mode=0o700, exist_ok=True)
        index = Index(open_env(root, map_size=self.config.lmdb_map_size))
        writer = ThreadPool(1, 1, "izreg-writer")
        io = ThreadPool(0, 4, "izreg-io")
        for pool in (writer, io):
            pool.start()
            self._pools.append(pool)
        self.registry = Registry(
            index,
            BlobStore(root),
            Uploads(root),
            now=self.reactor.seconds,
            run_write=self._runner(writer),
            run_io=self._runner(io),
            limits=Limits(self.config.max_manifest_size, self.config.upload_ttl, self.config.delete_enabled),
        )
        for path in self.registry.orphan_uploads():
            os.unlink(path)
        self.api.registry = self.registry
        self.log.info("izreg storage open at {root}", root=root)
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        yield super().stopService()
        for pool in self._pools:
            pool.stop()
        self._pools = []
        if self.registry is not None:
            self.registry.index.close()
            self.registry = None

    async def expire_uploads(self) -> None:
        """Timer task: drop upload sessions idle for longer than the TTL."""
        if self.registry is None:
            return
        try:
            count = await self.registry.expire_uploads(self.reactor.seconds() - self.config.upload_ttl)
            if count:
                self.log.info("expired {count} abandoned upload(s)", count=count)
        except Exception:
            self.log.failure("upload expiry failed")
