# -*- test-case-name: tests.http.test_internals -*-
"""
A start-up self-check of the private names izreg's fast paths use.

Three fast paths replace Twisted code by a faster copy that leans on Twisted's
internals: the chunked request-body decoder (L{izreg.http.chunked}, over
C{twisted.web.http._ChunkedTransferDecoder}), the TLS transport
(L{izreg.service.fasttls}, over C{twisted.protocols.tls} and
C{twisted.internet.tcp}) and a request's C{process} (L{izreg.http.bodies},
C{twisted.web.server.Request.process} with its ``Date`` made once a second). Each lists what it needs (L{Needs}); before a
fast path is first used, L{fast_path} checks that this Twisted (and
pyOpenSSL) still has every name, and that the Twisted functions the fast
path copies still use the attributes the copy sets. If not, one warning is
logged and Twisted's stock code serves instead: an upgrade of Twisted costs
speed, never correctness.

C{IZREG_STOCK_TWISTED=1} in the environment forces the stock code (for the
tests of the fallback, and to rule the fast paths out when chasing a bug).
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from twisted.logger import Logger

#: the environment variable that forces Twisted's stock code (any value but empty or 0)
STOCK_ENV = "IZREG_STOCK_TWISTED"

log = Logger()


@dataclass(frozen=True)
class Needs:
    """
    C{module}'s attribute C{path} (dotted: C{"Class.method"}) must exist; when
    it is a function, its code must use the attribute names C{uses} (with
    C{exactly}: those and no others, for a function the fast path replaces
    by a copy).
    """

    module: str
    path: str
    uses: tuple[str, ...] = ()
    exactly: bool = False

    def __str__(self) -> str:
        return f"{self.module}.{self.path}"


def missing(needs: Iterable[Needs], import_module: Callable[[str], object] = importlib.import_module) -> list[str]:
    """What of C{needs} this installation lacks, one line each (empty: all there)."""
    problems = []
    for need in needs:
        try:
            found = import_module(need.module)
            for name in need.path.split("."):
                found = getattr(found, name)
        except (ImportError, AttributeError):
            problems.append(f"{need} is missing")
            continue
        if need.uses:
            code = getattr(found, "__code__", None)
            names = set(code.co_names) if code is not None else set()
            lacking = sorted(set(need.uses) - names)
            if lacking:
                problems.append(f"{need} no longer uses {', '.join(lacking)}")
            elif need.exactly and names != set(need.uses):
                problems.append(f"{need} changed (it now also uses {', '.join(sorted(names - set(need.uses)))})")
    return problems


def forced_stock(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether C{IZREG_STOCK_TWISTED} asks for Twisted's stock code."""
    return environ.get(STOCK_ENV, "") not in ("", "0")


def fast_path(what: str, stock: str, needs: Iterable[Needs], environ: Mapping[str, str] = os.environ,
              import_module: Callable[[str], object] = importlib.import_module,
              cost: str = "slower, same behaviour") -> bool:
    """
    Whether the fast path C{what} may run here; if not, says so in the log, with this Twisted's version,
    what it lacks and what the fallback costs (C{stock} serves instead).
    """
    if forced_stock(environ):
        log.info("{what}: Twisted's stock {stock} ({env} is set)", what=what, stock=stock, env=STOCK_ENV)
        return False
    problems = missing(needs, import_module)
    if problems:
        from twisted import __version__ as version

        log.warn("{what}: Twisted {version} is not what izreg's code for it was written for ({problems});"
                 " using Twisted's stock {stock} instead ({cost})",
                 what=what, version=version, stock=stock, problems="; ".join(problems), cost=cost)
        return False
    return True


#: what L{izreg.http.chunked.ChunkedDecoder} and L{izreg.http.bodies} use of Twisted's decoder
CHUNKED_NEEDS = (
    Needs("twisted.web._abnf", "_hexint"),
    Needs("twisted.web.http", "maxChunkSizeLineLength"),
    Needs("twisted.web.http", "_MalformedChunkedDataError"),
    Needs("twisted.web.http", "_ChunkedTransferDecoder.dataReceived"),
    Needs("twisted.web.http", "_ChunkedTransferDecoder.__init__", ("dataCallback", "finishCallback", "_buffer")),
    Needs("twisted.web.http", "_ChunkedTransferDecoder.state"),
    Needs("twisted.web.http", "_ChunkedTransferDecoder._dataReceived_CHUNK_LENGTH", ("length",)),
    Needs("twisted.web.http", "_ChunkedTransferDecoder._dataReceived_BODY"),
    Needs("twisted.web.http", "_ChunkedTransferDecoder._dataReceived_CRLF"),
    Needs("twisted.web.http", "HTTPChannel._maybeChooseTransferDecoder", ("_ChunkedTransferDecoder", "_transferDecoder")),
)


@functools.cache
def chunked_decoder() -> type | None:
    """L{izreg.http.chunked.ChunkedDecoder}, or C{None}: Twisted's own decoder serves (checked once)."""
    if not fast_path("chunked request bodies", "_ChunkedTransferDecoder", CHUNKED_NEEDS):
        return None
    from izreg.http.chunked import ChunkedDecoder

    return ChunkedDecoder


#: what L{izreg.http.bodies.RegistryRequest._serve} copies of C{twisted.web.server.Request.process}, and uses
PROCESS_NEEDS = (
    Needs("twisted.web.server", "Request.process", (
        "BaseException", "Failure", "_IEncodingResource", "_encoder", "_handleStar", "channel", "datetimeToString",
        "failure", "getEncoder", "getResourceFor", "list", "map", "path", "postpath", "prepath", "processingFailed",
        "providedBy", "render", "resource", "setHeader", "site", "split", "unquote", "version"), exactly=True),
    Needs("twisted.web.server", "version"),
    Needs("twisted.web.server", "unquote"),
    Needs("twisted.web.http", "datetimeToString"),
    Needs("twisted.web.resource", "_IEncodingResource"),
)


@functools.cache
def copied_process() -> bool:
    """Whether L{izreg.http.bodies.RegistryRequest._serve} may stand in for Twisted's C{Request.process} (checked once)."""
    return fast_path("the request's Date header", "Request.process", PROCESS_NEEDS)
