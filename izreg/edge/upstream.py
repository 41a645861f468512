# -*- test-case-name: tests.edge.test_edge_e2e -*-
"""
The edge's client of the registry: treq over mutual TLS.

The registry's certificate and host name are verified (Twisted's
C{optionsForClientTLS}, which uses service-identity; never
C{verify=False}) against C{--upstream-ca} or the platform's trust store,
and the gateway's device certificate is presented as the client
certificate. TLS 1.2 at least.

Any failure before the response headers arrive (connection refused, a TLS
failure, a connect timeout, no answer within the response timeout) is
L{Unreachable}: the edge then answers from its cache. Every HTTP answer,
401 and 403 included, is a response: the edge passes it on. An
L{Unreachable} says why in one sentence (L{izreg.edge.unreachable}); the
raw error is logged, once per outage. A 401 is the registry refusing the
gateway itself (its device certificate revoked, its account deleted):
L{Upstream.refused} says so in a sentence until the registry next answers
2xx; the registry's own answer is logged, once. Both follow each request's
outcome; L{Upstream.check} (a timer) asks the registry when nothing else did.

Which certificates a TLS failure is explained with: those presented on the
connection that failed. Each TLS connection is noted by its TLS protocol
(L{_Watched}); when an upstream connection is lost with a TLS error, its
HTTP protocol (L{izreg.edge.pool}) keeps the peer chain by that error
(L{MutualTLSPolicy.lost}), for L{MutualTLSPolicy.presented} to find.
"""

from __future__ import annotations

import datetime
import weakref

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, protocol, ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from treq.client import HTTPClient
from zope.interface import implementer

from izreg.edge.pool import install
from izreg.edge.unreachable import Setting, explain, refused
from izreg.service.tls import check_client_certificate, check_trust_anchors, load_certificates, load_key_pair

log = Logger()


class Unreachable(Exception):
    """The registry could not be reached; C{reason} says why (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TooLarge(Exception):
    pass


#: the most bytes of a 401 the edge reads (the registry's are a few hundred)
ERROR_BODY_LIMIT = 64 * 1024


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


@implementer(IPolicyForHTTPS)
class MutualTLSPolicy:
    """Client TLS for every upstream connection: verified server, our device certificate."""

    def __init__(self, device_cert: str, device_key: str, upstream_ca: str | None) -> None:
        self.device_cert, self.upstream_ca = device_cert, upstream_ca
        #: the TLS connection of each upstream connection, by its TLS protocol (the HTTP protocol's transport)
        self._connections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        #: what the registry presented on a connection a TLS error ended, by that error (L{presented}): also
        #: after a failed verification, it names what failed
        self._failed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # cryptography objects, as pyOpenSSL wants them (its X509 and PKey are deprecated there)
        chain, key = load_key_pair(device_cert, device_key, "device")
        check_client_certificate(chain[0], device_cert, "device")
        self.client = {"privateKey": key, "certificate": chain[0], "extraCertChain": list(chain[1:])}
        if upstream_ca:
            cas = load_certificates(upstream_ca, "upstream CA")
            check_trust_anchors(cas, upstream_ca, "upstream CA")
            self.trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(_pem(c)) for c in cas])
        else:
            self.trust = ssl.platformTrust()

    def validity_problem(self, now: datetime.datetime) -> str | None:
        """
        Why the registry will refuse the device certificate at C{now} (expired, not yet valid), or C{None}.
        Told at start, not refused there: an edge whose certificate lapsed still serves its cache, and a
        gateway's clock may be wrong at boot.
        """
        cert = self.client["certificate"]
        if now > cert.not_valid_after_utc:
            return (f"the device certificate {self.device_cert} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}"
                    " UTC: the registry refuses this gateway (its cache still serves) until it has a new one")
        if now < cert.not_valid_before_utc:
            return (f"the device certificate {self.device_cert} is valid only from"
                    f" {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: is this gateway's clock right?")
        return None

    def creatorForNetloc(self, hostname: bytes, port: int):
        return _Watched(ssl.optionsForClientTLS(
            hostname.decode("ascii"), trustRoot=self.trust,
            extraCertificateOptions={**self.client, "raiseMinimumTo": ssl.TLSVersion.TLSv1_2}), self)

    def lost(self, transport, reason: Failure) -> None:
        """An upstream connection ended (L{izreg.edge.pool}): after a TLS error, keep what was presented on it."""
        connection = self._connections.pop(transport, None)
        if connection is not None and reason.check(SSL.Error, VerificationError):
            self._failed[reason.value] = connection.get_peer_cert_chain() or []

    def presented(self, cause: BaseException) -> list:
        """
        The certificates the registry presented on the connection that C{cause} (a TLS error) ended, leaf
        first; none if unknown (the handshake failed before the registry sent them, or another error).
        """
        return [cert.to_cryptography() for cert in self._failed.get(cause, ())]


@implementer(IOpenSSLClientConnectionCreator)
class _Watched:
    """Twisted's client TLS options (verification included, unchanged), noting each connection on the policy."""

    def __init__(self, creator, policy: MutualTLSPolicy) -> None:
        self.creator, self.policy = creator, policy

    def clientConnectionForTLS(self, tlsProtocol):
        connection = self.creator.clientConnectionForTLS(tlsProtocol)
        self.policy._connections[tlsProtocol] = connection
        return connection


class Upstream:
    """
    Requests to the registry. C{refused} says (a sentence) that the registry
    refused the gateway itself (401), until it next answers a request with
    2xx; meanwhile (L{denied}) the cache is not used to get around the
    refusal.
    """

    def __init__(self, reactor, url: str, policy: MutualTLSPolicy, connect_timeout: float,
                 response_timeout: float) -> None:
        self.reactor = reactor
        self.url = url.rstrip("/")
        # any IPolicyForHTTPS will do (tests give Twisted's own); a MutualTLSPolicy also says what the TLS
        # failures were about (L{izreg.edge.unreachable})
        self.presented = getattr(policy, "presented", lambda cause: [])
        self.setting = Setting(self.url, getattr(policy, "upstream_ca", None), getattr(policy, "device_cert", "?"),
                               connect_timeout)
        self.response_timeout = response_timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 8
        # each connection tells the policy how it ended (Twisted internals, checked: izreg.edge.pool)
        install(self.pool, getattr(policy, "lost", lambda transport, reason: None))
        agent = Agent(reactor, contextFactory=policy, connectTimeout=connect_timeout, pool=self.pool)
        self.http = HTTPClient(agent)
        #: why the registry refuses the gateway (the last 401, until a 2xx; C{None}: it does not)
        self.refused: str | None = None
        #: why the last request failed to reach the registry (C{None}: it answered)
        self.unreachable: str | None = None
        #: what was logged at its own level once during this outage (L{first_offline})
        self._told: set[str] = set()
        #: requests that did not reach the registry, since the start (izreg_edge_upstream_failures_total)
        self.failures = 0
        #: requests awaiting the registry's answer, and how many had theirs (or failed): for L{check}
        self._waiting = self._answered = 0
        #: C{_answered} when L{check} last ran
        self._checked = 0

    async def request(self, method: str, path: str, headers: dict[str, list[str]] | None = None,
                      data: bytes | None = None):
        """An unbuffered response (read its body with L{collect} or C{deliverBody}); raise L{Unreachable}."""
        self._waiting += 1
        sent = self.http.request(method, self.url + path, headers=Headers(headers or {}), data=data,
                                 unbuffered=True, allow_redirects=False, timeout=self.response_timeout)
        cancelled = []

        def cancel(_) -> None:
            cancelled.append(True)
            sent.cancel()

        asked: defer.Deferred = defer.Deferred(cancel)
        sent.chainDeferred(asked)
        try:
            response = await asked
        except defer.CancelledError:
            raise
        except Exception as e:
            if cancelled:
                # the caller gave up (its client went away): treq ends such a request with another error
                # (ResponseNeverReceived of a CancelledError, a DNSLookupError...), which is no outage
                raise defer.CancelledError() from None
            now = datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc)
            reason = explain(e, self.setting, self.presented, now)
            self.failures += 1
            self._unreachable(reason, _describe(e))
            raise Unreachable(reason) from None
        finally:
            self._waiting -= 1
            self._answered += 1
        if self.unreachable is not None:
            log.info("the registry {url} answers again", url=self.url)
            self.unreachable = None
            self._told.clear()
        if response.code == 401:
            return await self._refused(response)
        if 200 <= response.code < 300 and self.refused is not None:
            log.info("the registry {url} accepts this gateway again", url=self.url)
            self.refused = None
        return response

    async def check(self) -> None:
        """
        Ask the registry C{GET /v2/} (with the gateway's certificate, as every request), so that what
        C{unreachable} and C{refused} say (/healthz) follows the registry also when nothing else asks it:
        no pulls, pins or pull reports. Run by a timer (C{upstream_check_interval}); it asks only when no
        other request was answered or failed since its last run and none awaits its answer (that one's
        outcome will tell), so a busy edge sends nothing more.
        """
        if self._waiting or self._answered != self._checked:
            self._checked = self._answered
            return
        try:
            response = await self.request("GET", "/v2/")
            await collect(response, ERROR_BODY_LIMIT)
        except (Unreachable, TooLarge):
            pass  # request() noted it (and logged a new outage once)
        finally:
            self._checked = self._answered

    @property
    def denied(self) -> bool:
        return self.refused is not None

    async def _refused(self, response):
        """
        A 401: the registry refuses the gateway's device certificate. Its body (a few hundred bytes) is read
        for the sentence and the log line (once per change), then given to the caller as it came.
        """
        try:
            body = await collect(response, ERROR_BODY_LIMIT)
        except (TooLarge, Unreachable):
            body = b""
        reason = refused(body, self.setting)
        if not body:  # a HEAD's: the sentence without the registry's words, if none is known (logged with a GET's)
            self.refused = self.refused or reason
        elif reason != self.refused:
            self.refused = reason
            log.warn("the registry {url} refuses this gateway: {reason} ({raw})", url=self.url, reason=reason,
                     raw=repr(body[:300])[2:-1])
        return _Read(response, body)

    def _unreachable(self, reason: str, raw: str) -> None:
        """One log line when the registry stops answering, or fails otherwise (not one per request)."""
        if reason == self.unreachable:
            return
        self.unreachable = reason
        log.warn("the registry {url} is unreachable: {reason} ({raw})", url=self.url, reason=reason, raw=raw)

    def first_offline(self, what: str) -> bool:
        """
        Whether C{what} (a kind of log line: "reports", "cache", ...) is the
        first of its kind since the registry stopped answering: log it at its
        level then, at debug after (the outage itself is the two lines above,
        not one per timer tick or request).
        """
        if what in self._told:
            return False
        self._told.add(what)
        return True

    def close(self):
        return self.pool.closeCachedConnections()


def _describe(e: Exception) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(_describe(r.value) for r in reasons)
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


@implementer(IProtocol)
class _Collector(protocol.Protocol):
    def __init__(self, limit: int, done: defer.Deferred) -> None:
        self.limit, self.done, self.parts, self.size = limit, done, [], 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(TooLarge(f"more than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(Unreachable(f"the registry's answer broke off: {_describe(reason.value)}"))


class _Read:
    """A response whose body was read already, delivered again to its one reader (whole, then done)."""

    def __init__(self, response, body: bytes) -> None:
        self.version, self.code, self.phrase = response.version, response.code, response.phrase
        self.headers, self.request = response.headers.copy(), response.request
        self.headers.setRawHeaders(b"content-length", [str(len(body)).encode()])  # what was read (at most the limit)
        self.length, self.body = len(body), body

    def deliverBody(self, protocol) -> None:
        protocol.makeConnection(_Done())
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class _Done:
    """The transport of a L{_Read} body: nothing left to produce."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def collect(response, limit: int) -> defer.Deferred:
    """The whole body of C{response}, at most C{limit} bytes (else L{TooLarge})."""
    done: defer.Deferred = defer.Deferred()
    response.deliverBody(_Collector(limit, done))
    return done
