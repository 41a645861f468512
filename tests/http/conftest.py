"""
In-process API fixtures: the real service make_server builds (Site,
Registry, LMDB and blob files in a temp dir) on the test reactor, driven
with treq: in memory (treq's in-memory agent drives the very Site the
listeners would serve: no port, no TCP), or, for a test marked
``socket``, on a free loopback port (raw HTTP, connection limits, slow
senders, real clients).

C{any_server} runs a test module's routes over each storage backend: the
filesystem (on a port), the in-memory fake (no port: treq's in-memory agent
drives the very same Site), S3 (a real moto server, marker ``s3``), and the
in-memory fake with its metadata index on PostgreSQL (marker ``postgres``:
L{izreg.storage.pgindex.PgIndex}, every index call on a thread pool as the
server does it). A module opts in with ``server = any_server``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.python import threadable

from tests.helpers.openguard import OpenGuard
from izreg.service.config import Config
from izreg.storage.pg import Database
from izreg.tap import make_server

ACCOUNT = "0123456789abcdef0123456789abcdef"
OTHER_ACCOUNT = "fedcba9876543210fedcba9876543210"


@dataclass
class Server:
    url: str
    service: object
    kind: str = "filesystem"

    @property
    def registry(self):
        return self.service.registry

    @property
    def api(self):
        return self.service.api

    async def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, **kw):
        """Send a request; return (response, body bytes)."""
        response = await treq.request(method, self.url + path, data=body, headers=headers or {}, persistent=False, **kw)
        content = await response.content()
        return response, content

    async def error(self, method: str, path: str, **kw):
        """Send a request that must fail with an OCI error; return (status, code, response)."""
        response, content = await self.request(method, path, **kw)
        if method == "HEAD":
            return response.code, None, response
        document = json.loads(content)
        assert set(document["errors"][0]) == {"code", "message", "detail"}
        return response.code, document["errors"][0]["code"], response


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


async def start_server(tmp_path, guard=None, socket: bool = False, **config) -> Server:
    """
    Start a registry over C{tmp_path}: the service C{make_server} builds
    (storage, threads, the real site). Requests go through treq's in-memory
    agent to that site, unless C{socket}: then it listens on a free loopback
    port (for raw connections, connection limits, slow senders, real clients).
    """
    listen = ("tcp:0:interface=127.0.0.1",) if socket else ()
    cfg = Config(data_dir=str(tmp_path / "data"), listen=listen, **config)
    service = make_server(cfg, reactor, guard=guard)
    service.startService()
    if not socket:
        return InMemory(service.site, service, cfg.storage_backend)
    # the listeners are children; start them, then ask the endpoint service for its port
    listener = service.services[0]
    port = await listener._waitingForPort
    return Server(f"http://127.0.0.1:{port.getHost().port}", service, cfg.storage_backend)


class MemoryService:
    """What the memory server keeps of a service: its registry, API and site; no listener, no threads."""

    def __init__(self, registry, api, site) -> None:
        self.registry, self.api, self.site = registry, api, site

    def stopService(self):
        self.registry.index.close()
        if self.pool is not None:
            self.pool.stop()
        return defer.succeed(None)

    pool = None


class InMemory(Server):
    """
    A site driven with no port: requests go through treq's in-memory agent.
    The bytes are moved when either side does something (a write, a close, a
    producer registered): every such call on the in-memory transports wakes the
    waiting request, which pumps on the test reactor's next turn. So thread
    pools, timers and held bodies still work, and a request that waits for a
    thread costs no turns of the reactor meanwhile (no busy loop).
    """

    #: the longest wait for a wake-up; only a change no transport call shows
    #: (none is known) would ever need it
    SAFETY_NET = 0.05

    def __init__(self, site, service, kind: str) -> None:
        from treq.client import HTTPClient
        from treq.testing import RequestTraversalAgent

        self._agent = RequestTraversalAgent(site.resource)
        self._agent._serverFactory = site
        self._client = HTTPClient(self._agent)
        self._waiters: list[defer.Deferred] = []
        self._wake_call = None
        self._watched: set = set()
        super().__init__("http://registry.test", service, kind)

    async def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, **kw):
        answer = self._client.request(method, self.url + path, data=body, headers=headers or {}, **kw)
        response = await self._pumped(answer)
        content = await self._pumped(treq.content(response))
        return response, content

    _WATCHED = ("write", "writeSequence", "loseConnection", "abortConnection", "registerProducer",
                "unregisterProducer", "stopProducing")

    def _watch(self) -> None:
        """Make every in-memory transport of the agent wake the waiting requests when it is used."""
        for pump in self._agent._pumps:
            for transport in (pump.clientIO, pump.serverIO):
                if id(transport) in self._watched:
                    continue
                self._watched.add(id(transport))
                for name in self._WATCHED:
                    original = getattr(transport, name)

                    def watched(*args, _original=original, **kw):
                        try:
                            return _original(*args, **kw)
                        finally:
                            self._wake()
                    setattr(transport, name, watched)

    def _wake(self) -> None:
        """Pump on the reactor's next turn (never from inside the protocol call that woke us)."""
        if self._waiters and (self._wake_call is None or not self._wake_call.active()):
            self._wake_call = reactor.callLater(0, self._woken)

    def _woken(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _pumped(self, d):
        done = []
        d.addBoth(lambda result: done.append(result) or self._wake() or result)
        while True:
            self._watch()
            self._agent.flush()
            if done:
                break
            waiter = defer.Deferred()
            self._waiters.append(waiter)
            # a safety net only: every known change shows as a transport call, which wakes us
            net = reactor.callLater(self.SAFETY_NET, lambda: waiter.called or self._woken())
            await waiter
            if net.active():
                net.cancel()
        return await d


class MemoryServer(InMemory):
    """
    The real RegistrySite and routes over the in-memory stores (and LMDB in
    a temp dir, or the given index), with no port.
    """

    def __init__(self, tmp_path, guard, index=None, pool=None, uploads=None) -> None:
        from izreg.http.app import RegistryAPI
        from izreg.http.bodies import RegistrySite
        from izreg.registry import Limits, Registry
        from izreg.storage.lmdbenv import open_env
        from izreg.storage.lmdbindex import Index
        from izreg.storage.memory import MemoryBlobs, MemoryUploads

        inline = defer.maybeDeferred
        run_read, run_write = None, inline
        if pool is not None:  # the index on PostgreSQL: reads and writes on the pool, never on the reactor
            from twisted.internet.threads import deferToThreadPool

            run_read = run_write = lambda f, *args, **kw: deferToThreadPool(reactor, pool, f, *args, **kw)
        if uploads is None:
            uploads = MemoryUploads(MemoryBlobs())
        if index is None:
            index = Index(open_env(str(tmp_path / "index"), 1 << 30))
        defaults = Config()
        registry = Registry(index, uploads.blobs, uploads, now=reactor.seconds, run_write=run_write, run_io=inline,
                            limits=Limits(defaults.max_manifest_size, defaults.delete_enabled, defaults.max_open_uploads),
                            run_read=run_read)
        api = RegistryAPI(registry, guard, reactor.seconds, chunk_min_length=defaults.chunk_min_length, ui=defaults.ui_enabled)
        site = RegistrySite(api.resource(), api.body_for)
        super().__init__(site, MemoryService(registry, api, site), "memory")
        self.service.pool = pool


def wants_socket(request) -> bool:
    """A test (or its module) marked C{socket} gets a server on a port; others go in memory."""
    return request.node.get_closest_marker("socket") is not None


class OffReactorDatabase(Database):
    """A Database that fails any transaction started on the reactor thread (the seam's promise)."""

    def run(self, f, *args):
        assert not threadable.isInIOThread(), "the metadata index was called on the reactor thread"
        return super().run(f, *args)


def pg_server(pg_dsn: str, guard=None, uploads=None) -> MemoryServer:
    """
    The memory server with its index on PostgreSQL (a node: its own pool of
    connections and threads); several over one C{pg_dsn} and one C{uploads}
    are several nodes over one database and one store.
    """
    from twisted.python.threadpool import ThreadPool

    from izreg.storage.pgindex import PgIndex

    upgrader = Database(pg_dsn, max_size=1)
    upgrader.upgrade()
    upgrader.close()
    db = OffReactorDatabase(pg_dsn, max_size=4)
    pool = ThreadPool(minthreads=1, maxthreads=db.max_size, name="izreg-pg")
    pool.start()
    return MemoryServer(None, guard or OpenGuard(), index=PgIndex(db), pool=pool, uploads=uploads)


async def start_any_server(kind: str, tmp_path, request, guard=None, **config) -> Server:
    """A registry over the C{kind} storage backend ("filesystem", "memory", "s3" or "postgres")."""
    if kind == "memory":
        return MemoryServer(tmp_path, guard or OpenGuard())
    if kind == "postgres":
        return pg_server(request.getfixturevalue("pg_schema_dsn"), guard)
    if kind == "s3":
        moto = request.getfixturevalue("moto_server")
        config = dict(storage_backend="s3", s3_bucket=request.getfixturevalue("s3_bucket"),
                      s3_endpoint_url=moto.url, s3_threads=4, **config)
    return await start_server(tmp_path, guard or OpenGuard(), socket=True, **config)


@pytest_twisted.async_yield_fixture(params=["filesystem", "memory", pytest.param("s3", marks=pytest.mark.s3),
                                            pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_server(request, tmp_path):
    srv = await start_any_server(request.param, tmp_path, request)
    yield srv
    await srv.service.stopService()


@pytest_twisted.async_yield_fixture
async def server(request, tmp_path):
    srv = await start_server(tmp_path, OpenGuard(), socket=wants_socket(request))
    yield srv
    await srv.service.stopService()
