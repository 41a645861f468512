"""
Webhook delivery from several nodes sharing one PostgreSQL queue: two
L{Dispatcher}s (two nodes) read it off the reactor through a threaded
C{run_read}; each queued event reaches the receiver from exactly one of
them, signed, and is recorded delivered.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from izreg.core import cloudevents
from izreg.service.config import Config
from izreg.service.webhooks import Dispatcher
from izreg.storage.pgwebhooks import PgWebhookStore
from izreg.storage.webhooks import DELIVERED
from tests.e2e.test_webhooks import SECRET, Receiver
from tests.helpers.server import free_port
from tests.http.authhelpers import threaded

pytestmark = pytest.mark.postgres

A = "0123456789abcdef0123456789abcdef"


@pytest_twisted.ensureDeferred
async def test_each_event_is_delivered_by_one_node(pg_db, tmp_path):
    receiver = Receiver(free_port())
    stores = [PgWebhookStore(pg_db, str(tmp_path)) for _ in range(2)]
    stores[0].add(A, receiver.url, SECRET, (cloudevents.PUSH,), time.time())
    ids = [stores[0].enqueue(cloudevents.PUSH, reactor.seconds(), account=A, repository=f"{A}/app",
                             digest="sha256:" + f"{i:064x}", tag=None)[0] for i in range(12)]
    nodes = [Dispatcher(store, reactor, threaded, Config(), run_read=threaded) for store in stores]
    for node in nodes:
        node.startService()
    try:
        deadline = time.monotonic() + 60
        while not all(d["status"] == DELIVERED for d in stores[1].deliveries()):
            assert time.monotonic() < deadline, stores[1].deliveries()
            await task.deferLater(reactor, 0.05, lambda: None)
    finally:
        for node in nodes:
            await node.stopService()
    got = []
    while not receiver.received.empty():
        headers, body = receiver.next()
        assert cloudevents.verify(SECRET.encode(), body, headers[cloudevents.SIGNATURE_HEADER])
        got.append(headers[cloudevents.DELIVERY_HEADER])
    receiver.close()
    assert sorted(got) == sorted(ids)  # every one, none twice
    assert all(d["attempts"] == 1 for d in stores[0].deliveries())
    assert stores[0].deliveries()[0]["event"]["type"] == cloudevents.TYPES[cloudevents.PUSH]
