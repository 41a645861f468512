"""
izreg.service.tls.fallback: the TLS listener's factory is izreg's fast one
while this Twisted has every internal it leans on, else Twisted's stock one
(with a warning), which serves the same TLS (real clients: curl).
"""

from __future__ import annotations

import importlib
import types

import pytest
import pytest_twisted
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory

from izreg.http.internals import STOCK_ENV, missing
from izreg.service import fasttls, tlsthreads
from izreg.service.tls import fallback
from izreg.service.tls.fallback import FASTTLS_NEEDS, TLSTHREADS_NEEDS, tls_factory_class
from izreg.service.tlsthreads import ThreadedTLSFactory
from tests.helpers.internals import private_names_used
from tests.service.test_tls import ACCOUNT, certs, curl, needs_tools, server, store  # noqa: F401  (fixtures)


def _without(module: str, name: str):
    real = importlib.import_module(module)
    fake = types.ModuleType(module)
    fake.__dict__.update({k: v for k, v in vars(real).items() if k != name})
    return lambda wanted: fake if wanted == module else importlib.import_module(wanted)


def test_the_fast_factory_while_twisted_has_what_it_needs():
    assert missing(FASTTLS_NEEDS + TLSTHREADS_NEEDS) == []
    assert tls_factory_class(environ={}) is ThreadedTLSFactory


def test_the_stock_factory_with_a_warning_when_an_internal_is_gone():
    with capturedLogs() as events:
        chosen = tls_factory_class(environ={}, import_module=_without("twisted.internet.tcp", "Server"))
    assert chosen is TLSMemoryBIOFactory
    [event] = events
    assert event["log_level"].name == "warn" and "twisted.internet.tcp.Server.connected is missing" in event["problems"]


def test_the_environment_forces_the_stock_factory():
    assert tls_factory_class(environ={STOCK_ENV: "1"}) is TLSMemoryBIOFactory


@pytest.mark.parametrize("module", [fasttls, tlsthreads], ids=lambda m: m.__name__)
def test_every_private_name_the_tls_transport_uses_is_checked(module):
    """A new use of a Twisted (or pyOpenSSL) internal in fasttls.py or tlsthreads.py must be added to the lists."""
    checked = {name for need in FASTTLS_NEEDS + TLSTHREADS_NEEDS for name in (*need.path.split("."), *need.uses)}
    assert private_names_used(module, own_attributes=("_creator",)) - checked == set()


@pytest.fixture
def stock(monkeypatch):
    """Twisted's stock factory for the listeners started after it (the C{server} fixture)."""
    monkeypatch.setattr(fallback, "chosen_factory_class", lambda: TLSMemoryBIOFactory)


@needs_tools
@pytest_twisted.ensureDeferred
async def test_the_stock_factory_serves_the_same_tls(stock, server, certs):  # noqa: F811
    port, _, whoami = server
    status, body, _ = await curl(port, certs, certs.device_cert, certs.device_key)
    assert status == 200 and body["secure"] is True
    assert body["device"] == [ACCOUNT, "gw-17"]
    code, body, err = await curl(port, certs, certs.stranger_cert, certs.stranger_key)
    assert code != 0 and body is None and "unknown ca" in err
