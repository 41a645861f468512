"""izreg.http.internals: the self-check of the private Twisted names the fast paths use, and the chunked fallback."""

from __future__ import annotations

import types

from twisted.logger import capturedLogs
from twisted.web import http
from twisted.web.http_headers import Headers

from izreg.http import internals
from izreg.http.internals import CHUNKED_NEEDS, STOCK_ENV, Needs, fast_path, forced_stock, missing
from tests.helpers.internals import importer_without, private_names_used


def test_this_twisted_has_what_the_chunked_decoder_needs():
    assert missing(CHUNKED_NEEDS) == []
    assert internals.chunked_decoder() is not None


def test_a_missing_name_is_named():
    problems = missing(CHUNKED_NEEDS, importer_without("twisted.web.http", "_ChunkedTransferDecoder"))
    assert "twisted.web.http._ChunkedTransferDecoder.dataReceived is missing" in problems
    assert missing([Needs("no.such.module", "x")]) == ["no.such.module.x is missing"]


def test_a_function_that_no_longer_uses_an_attribute_or_changed_is_named():
    def copied(self):
        self.a = self.b

    module = types.SimpleNamespace(f=copied)
    fake = lambda name: module  # noqa: E731
    assert missing([Needs("m", "f", ("a", "b"))], fake) == []
    assert missing([Needs("m", "f", ("a", "c"))], fake) == ["m.f no longer uses c"]
    assert missing([Needs("m", "f", ("a",), exactly=True)], fake) == ["m.f changed (it now also uses b)"]


def test_fast_path_warns_once_and_says_no_when_something_is_missing():
    with capturedLogs() as events:
        assert not fast_path("chunked request bodies", "_ChunkedTransferDecoder", CHUNKED_NEEDS, environ={},
                             import_module=importer_without("twisted.web._abnf", "_hexint"))
    [event] = events
    assert event["log_level"].name == "warn"
    assert "twisted.web._abnf._hexint is missing" in event["problems"]
    with capturedLogs() as events:
        assert fast_path("chunked request bodies", "_ChunkedTransferDecoder", CHUNKED_NEEDS, environ={})
    assert events == []


def test_the_environment_forces_the_stock_code():
    assert not forced_stock({}) and not forced_stock({STOCK_ENV: ""}) and not forced_stock({STOCK_ENV: "0"})
    assert forced_stock({STOCK_ENV: "1"})
    assert not fast_path("x", "y", CHUNKED_NEEDS, environ={STOCK_ENV: "1"})


def _decoder_for_a_chunked_body():
    from izreg.http.bodies import RegistryChannel

    channel = RegistryChannel()
    channel._version = b"HTTP/1.1"  # (its request line's: a Transfer-Encoding is refused on HTTP/1.0)
    channel.requests = [types.SimpleNamespace(handleContentChunk=lambda data: None, requestHeaders=Headers())]
    assert channel._maybeChooseTransferDecoder(b"Transfer-Encoding", b"chunked")
    return type(channel._transferDecoder)


def test_with_the_fallback_a_chunked_body_goes_through_twisteds_own_decoder(monkeypatch):
    from izreg.http import bodies
    from izreg.http.chunked import ChunkedDecoder

    assert _decoder_for_a_chunked_body() is ChunkedDecoder
    monkeypatch.setattr(bodies, "chunked_decoder", lambda: None)
    assert _decoder_for_a_chunked_body() is http._ChunkedTransferDecoder


def test_every_private_name_the_chunked_decoder_uses_is_checked():
    """A new use of a Twisted internal in chunked.py must be added to CHUNKED_NEEDS."""
    from izreg.http import chunked

    checked = {name for need in CHUNKED_NEEDS for name in (*need.path.split("."), *need.uses)}
    assert private_names_used(chunked) - checked == set()


# -- the copy of twisted.web.server.Request.process (RegistryRequest._serve) ---------------------------------


def test_this_twisted_has_the_process_izreg_copies():
    assert internals.missing(internals.PROCESS_NEEDS) == []
    assert internals.copied_process()


def test_every_name_the_copy_of_process_uses_is_checked():
    """A name RegistryRequest._serve reads of Twisted must be in PROCESS_NEEDS (or the request's own)."""
    from izreg.http.bodies import RegistryRequest

    checked = {name for need in internals.PROCESS_NEEDS for name in (*need.path.split("."), *need.uses)}
    used = set(RegistryRequest._serve.__code__.co_names)
    ours = {"copied_process", "server", "http_date", "resource", "Request", "process", "self"}
    assert used - checked - ours == set()


def _head_of(request) -> list[bytes]:
    return [name for name, _ in request.responseHeaders.getAllRawHeaders()]


def test_with_the_fallback_twisteds_process_sets_the_same_headers(monkeypatch):
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.test.requesthelper import DummyChannel

    from izreg.http import bodies

    class Leaf(Resource):
        isLeaf = True

        def render_GET(self, request):
            return b"ok"

    def processed() -> list[bytes]:
        channel = DummyChannel()
        channel.site = Site(Leaf())
        request = bodies.RegistryRequest(channel)
        request.method, request.uri, request.path, request.clientproto = b"GET", b"/x", b"/x", b"HTTP/1.1"
        request.requestHeaders.setRawHeaders(b"host", [b"registry.example"])
        request.process()
        return _head_of(request), request.responseHeaders.getRawHeaders(b"Date")

    copied, copied_date = processed()
    monkeypatch.setattr(bodies, "copied_process", lambda: False)
    stock, stock_date = processed()
    assert copied == stock and b"Date" in copied and b"Server" in copied
    assert abs(http.stringToDatetime(copied_date[0]) - http.stringToDatetime(stock_date[0])) <= 1
