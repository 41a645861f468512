"""
izreg.edge.pool: the Twisted internals of the edge's upstream connection pool,
checked at start (izreg.http.internals' mechanism), and the fallback to
Twisted's own factory. The real edge on that fallback is in
test_edge_upstream.py (test_the_edge_pulls_with_twisteds_own_pool_factory).
"""

from __future__ import annotations

import importlib
import types

import pytest
import twisted
from twisted.internet import reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web import client
from twisted.web.client import HTTP11ClientProtocol

from izreg.edge import pool
from izreg.edge.pool import POOL_NEEDS, noting_factory
from izreg.http.internals import STOCK_ENV, missing
from tests.helpers.internals import importer_without, private_names_used


def test_this_twisted_has_what_the_pool_needs():
    assert missing(POOL_NEEDS) == []
    assert pool.checked()


def test_the_installed_factory_tells_how_each_connection_ended():
    lost = []
    connections = client.HTTPConnectionPool(reactor, persistent=False)
    assert pool.install(connections, lambda transport, reason: lost.append((transport, reason)))
    factory = connections._factory(lambda protocol: None, "metadata")
    assert not factory.noisy  # no "Starting factory" line per upstream connection
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, HTTP11ClientProtocol)
    transport = types.SimpleNamespace()
    protocol.transport = transport
    reason = Failure(ConnectionError("gone"))
    protocol.connectionLost(reason)
    assert lost == [(transport, reason)]


@pytest.mark.parametrize("module, name, problem", [
    ("twisted.web.client", "_HTTP11ClientFactory", "twisted.web.client._HTTP11ClientFactory.__init__ is missing"),
    ("twisted.web.client", "HTTPConnectionPool", "twisted.web.client.HTTPConnectionPool._factory is missing"),
    ("twisted.web._newclient", "HTTP11ClientProtocol",
     "twisted.web._newclient.HTTP11ClientProtocol.__init__ is missing"),
])
def test_a_missing_name_is_told_once_with_the_twisted_version(module, name, problem):
    with capturedLogs() as events:
        assert noting_factory(lambda transport, reason: None, environ={},
                              import_module=importer_without(module, name)) is None
    [event] = events
    text = formatEvent(event)
    assert event["log_level"].name == "warn"
    assert text.startswith(f"the edge's upstream connections: Twisted {twisted.__version__} is not what"), text
    assert problem in text and "using Twisted's stock _HTTP11ClientFactory instead (pulls work the same" in text


def test_a_changed_build_protocol_is_told():
    """The factory's buildProtocol is replaced by a copy: a Twisted that does more there is not used."""
    class Changed(client._HTTP11ClientFactory):
        def buildProtocol(self, addr):
            protocol = HTTP11ClientProtocol(self._quiescentCallback)
            protocol.factory = self._metadata
            return protocol

    fake = types.ModuleType("twisted.web.client")
    fake.__dict__.update(vars(client), _HTTP11ClientFactory=Changed)
    with capturedLogs() as events:
        assert noting_factory(lambda transport, reason: None, environ={},
                              import_module=lambda wanted: fake if wanted == "twisted.web.client"
                              else importlib.import_module(wanted)) is None
    [event] = events
    assert "twisted.web.client._HTTP11ClientFactory.buildProtocol changed (it now also uses _metadata, factory)" \
        in formatEvent(event)


def test_the_environment_forces_twisteds_factory():
    with capturedLogs() as events:
        assert noting_factory(lambda transport, reason: None, environ={STOCK_ENV: "1"}) is None
    assert [formatEvent(e) for e in events] == [
        f"the edge's upstream connections: Twisted's stock _HTTP11ClientFactory ({STOCK_ENV} is set)"]


def test_every_private_name_the_pool_uses_is_checked():
    """A new use of a Twisted internal in izreg/edge/pool.py must be added to POOL_NEEDS."""
    checked = {name for need in POOL_NEEDS for name in (*need.path.split("."), *need.uses)}
    assert private_names_used(pool) - checked == set()
    assert {"_factory", "_quiescentCallback", "_HTTP11ClientFactory"} <= private_names_used(pool)


def test_nothing_else_in_the_edge_uses_twisteds_http_client_internals():
    """The edge's other modules reach Twisted's client internals only through izreg.edge.pool (which checks them)."""
    import ast
    import inspect
    import pkgutil

    import izreg.edge

    internal = {"_factory", "_quiescentCallback", "_HTTP11ClientFactory", "HTTP11ClientProtocol"}
    for info in pkgutil.iter_modules(izreg.edge.__path__):
        if info.name == "pool":
            continue
        tree = ast.parse(inspect.getsource(__import__(f"izreg.edge.{info.name}", fromlist=["_"])))
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                used |= {node.module or ""} | {alias.name for alias in node.names}
        assert not used & (internal | {"twisted.web._newclient"}), (info.name, used & internal)
