# -*- test-case-name: tests.edge.test_edge_e2e,tests.edge.test_edge_upstream -*-
"""
The edge's HTTP API: the pull side of the distribution API, answered from
the cache or the registry.

- ``/``: a short plain-text page (what this is, how to pull through it: by the
  address it was reached on, L{pull_address}; ``/healthz``).
- ``/v2/``: 200 at once (clients on the gateway need no credentials).
- manifests GET/HEAD: when the registry answers, it decides (a tag is
  resolved there, a cached digest is revalidated with a HEAD, so a 401,
  403 or 404 reaches the client unchanged); the bytes come from the cache
  when it has the digest (a I{hit}, reported to the registry as a pull),
  else from the registry, verified against the digest and kept (a I{miss};
  a HEAD too, so that a tag a client only resolved is there offline).
  When the registry is unreachable: from the cache by digest, or by the
  digest a tag last resolved to, with a C{Warning} header (I{offline});
  else 503 C{UNAVAILABLE} at once.
- blobs GET/HEAD: from the cache when it has them (content addressed: no
  upstream round trip), else streamed from one shared upstream download
  (L{izreg.edge.download}); a C{Range} on an uncached blob is relayed.
- tags list, referrers, catalog: relayed.
- everything else (pushes, uploads, deletes): 405 C{UNSUPPORTED}.

One log line per request: method, path, status, source (hit, miss,
offline, relay, local, refused), bytes.

What HTTP itself asks of a request is the registry's code
(L{EdgeRequest} is a L{izreg.http.bodies.RegistryRequest}): exactly one
``Host`` in HTTP/1.1 (else 400), case-sensitive methods (``get``: 501), an
absolute-form target (``GET http://containers.local:8080/v2/...``) served as
its path, the target's host as ``Host``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from typing import Callable

from klein import Klein
from twisted.internet import threads
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from izreg.core import mediatypes as mt
from izreg.core import routes
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import OutsideNamespaces, parse_reference
from izreg.core.ranges import parse_range
from izreg.edge.download import Download, Reply, broke_off, upstream_failed
from izreg.edge.upstream import TooLarge, Unreachable, collect
from izreg.http.accesslog import CLIENT_GONE, CUT_ATTRIBUTE, CUT_SLOW_READER
from izreg.http.bodies import Dropped, RegistryRequest, RegistrySite
from izreg.http.errors import BASE_BODY, as_registry_error, cut, json_body, render_error, started
from izreg.http.responses import LARGE_BODY, FileBody, held_body

log = Logger()

WARNING = '110 - "served from the edge cache; the registry is unreachable"'
ALL_METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]
MANIFEST_ACCEPT = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_LIST, mt.DOCKER_MANIFEST])
#: the answer to C{GET /} (L{root_page}): nothing of this edge's own but the address it serves on
ROOT_PAGE = """izreg edge: a read-only pull-through cache of an izreg registry.

Pull through it:  docker pull {address}/<account_id>/<app>:<tag>
Registry API:     /v2/
Health:           /healthz
Pushes and deletes go to the registry itself.
"""
#: the names a Host may name the edge by on any address: the one the docs give the gateway (README.rst,
#: "On a gateway": /etc/hosts), and the gateway's own (L{own_names}); C{localhost} only on a loopback address
DOCUMENTED_NAME = "containers.local"
#: request headers passed to the registry
FORWARD = (b"accept", b"range", b"if-none-match")
#: response headers not passed back (hop by hop, or set by our own server)
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
       b"proxy-authenticate", b"proxy-connection", b"date", b"server", b"content-length"}


def _source(request, value: str) -> None:
    request.edge_source = value


class EdgeRequest(RegistryRequest):
    """A request that logs one line when it ends (with the cache outcome the handler noted)."""

    edge_source = "local"

    def process(self):
        self.notifyFinish().addBoth(self._log_line)
        return super().process()

    def _log_line(self, result):
        cut_why = getattr(self, CUT_ATTRIBUTE, None)  # the edge cut it after its head (izreg.http.errors.cut)
        gone = result is not None and cut_why is None
        outcome = "" if result is None else " (client went away)" if gone else f" (cut: {cut_why})"
        metrics = getattr(self.site, "metrics", None)
        if metrics is not None:  # a client gone counts as the server's access log has it: 499
            metrics.observe_request(self.edge_source, CLIENT_GONE if gone else self.code, self.sentLength, cut_why)
        log.info("{method} {path} {code} {source} {size}B{outcome}",
                 method=self.method.decode("ascii", "replace"), path=self.uri.decode("latin-1")[:300],
                 code=self.code, source=self.edge_source, size=self.sentLength, outcome=outcome)


class EdgeSite(RegistrySite):
    requestFactory = EdgeRequest

    def __init__(self, resource, readers=None, metrics=None) -> None:
        # request bodies (pushes) are refused: drop them as they arrive; readers: edge.send_timeout
        super().__init__(resource, lambda request, method, uri, length: Dropped(), readers=readers)
        self.noisy = False
        #: L{izreg.edge.metrics.EdgeMetrics} (each request counted as it ends), or None
        self.metrics = metrics

    def log(self, request) -> None:
        """The one line per request is EdgeRequest's."""


class EdgeAPI:
    app = Klein()

    def __init__(self) -> None:
        self.upstream = self.cache = self.reporter = self.now = None
        self.max_manifest_size = 0
        #: manifests over 64 KiB fetched from the registry and not yet sent (edge.response_memory); None: no bound
        self.responses = None
        self.downloads: dict[str, Download] = {}
        #: bytes received from the registry to keep in the cache, by kind (izreg_edge_fetched_bytes_total)
        self.fetched_bytes = {"manifest": 0, "blob": 0}

    def bind(self, upstream, cache, reporter, now: Callable[[], float], max_manifest_size: int,
             responses=None) -> None:
        """Set once the service opened the cache (after twistd forked)."""
        self.upstream = upstream
        self.cache = cache
        self.reporter = reporter
        self.now = now
        self.max_manifest_size = max_manifest_size
        self.responses = responses

    def resource(self):
        return self.app.resource()

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        if started(request):  # too late for an error answer: it would be read as the rest of the body
            cut(request, failure=failure)
            return None
        error = as_registry_error(failure)
        if error.code is ErrorCode.UNAVAILABLE:
            _source(request, "unavailable")
        return render_error(request, error)

    @app.route("/healthz", methods=["GET", "HEAD"])
    def healthz(self, request):
        """
        200 while the edge serves, whatever the registry does: offline it serves from the cache (what it is
        for), and neither a restart (liveness) nor taking it out of service (readiness) brings the registry
        back. C{status} says how the registry's last answer went (to a pull, pin, report or, on an idle edge,
        L{izreg.edge.upstream.Upstream.check}): "ok", "upstream_unreachable" (the last request did not reach
        it), "upstream_refused" (it answers 401 to this gateway); the two fields of those names say why in a
        sentence, or are null.
        """
        upstream = self.upstream
        status = ("upstream_unreachable" if upstream.unreachable is not None
                  else "upstream_refused" if upstream.refused is not None else "ok")
        body = json_body({"status": status, "upstream": upstream.url, "cached_bytes": self.cache.total,
                          "limit": self.cache.limit, "downloads": len(self.downloads),
                          "pending_reports": self.reporter.pending,
                          "upstream_unreachable": upstream.unreachable,
                          "upstream_refused": upstream.refused})
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(body))  # else Twisted sends it chunked (a HEAD: no length)
        return body

    @app.route("/", methods=["GET", "HEAD"])
    def root(self, request):
        """
        What this is, for whoever opens it in a browser: how to pull through it (L{pull_address}: the address
        it was reached on), where its health is.
        """
        page = ROOT_PAGE.format(address=pull_address(request)).encode()
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Length", b"%d" % len(page))  # else Twisted sends it chunked
        return page

    @app.route("/v2/", methods=["GET", "HEAD"], strict_slashes=False)
    def base(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(BASE_BODY))  # else Twisted sends it chunked
        return BASE_BODY

    @app.route("/v2/<path:rest>", methods=ALL_METHODS)
    async def dispatch(self, request, rest):
        method = request.method.decode("ascii", "replace")
        if method not in ("GET", "HEAD"):
            _source(request, "refused")
            raise RegistryError(
                ErrorCode.UNSUPPORTED, {"method": method},
                f"izreg edge is a read-only pull-through cache: push to and delete on the registry"
                f" directly ({self.upstream.url})", headers={"Allow": "GET, HEAD"})
        if rest == "_catalog":
            return await self.relay(request)
        try:
            route = routes.match(rest)
        except OutsideNamespaces:  # containers.local:8080/app:v1: the registry tells the gateway's account (403)
            return await self.relay(request)
        if route.endpoint == routes.MANIFEST:
            return await self.manifest(request, route)
        if route.endpoint == routes.BLOB:
            return await self.blob(request, route)
        if route.endpoint in (routes.TAGS, routes.REFERRERS):
            return await self.relay(request)
        raise RegistryError(ErrorCode.METHOD_UNKNOWN, {"method": method}, headers={"Allow": "POST"})

    # -- helpers ---------------------------------------------------------------------------

    def _forward_headers(self, request, accept: str | None = None) -> dict[str, list[str]]:
        headers = {}
        for name in FORWARD:
            values = request.requestHeaders.getRawHeaders(name)
            if values:
                headers[name.decode()] = [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]
        if accept and "accept" not in headers:
            headers["accept"] = [accept]
        return headers

    async def relay(self, request, path: str | None = None, method: str | None = None):
        """Pass the request to the registry and its answer back, streamed ("relay")."""
        _source(request, "relay")
        try:
            response = await self.upstream.request(method or request.method.decode(), path or request.uri.decode("latin-1"),
                                                   self._forward_headers(request))
        except Unreachable as e:
            raise _unavailable(request.uri.decode("latin-1"), e) from None
        return RelayBody(response)

    def _unreachable_offline(self, request) -> None:
        _source(request, "offline")
        request.setHeader(b"Warning", WARNING.encode())

    # -- manifests ---------------------------------------------------------------------------

    async def manifest(self, request, route):
        repo = route.repository.name
        reference = parse_reference(route.argument)
        is_digest = isinstance(reference, Digest)
        path = f"/v2/{repo}/manifests/{route.argument}"
        headers = self._forward_headers(request, MANIFEST_ACCEPT)
        head = request.method == b"HEAD"
        try:
            answer = await self.upstream.request("HEAD", path, headers)
            await collect(answer, 0)
        except Unreachable as e:
            digest = str(reference) if is_digest else self.cache.tag(repo, reference)
            if digest is not None and self.cache.entry(digest) is not None:
                self._unreachable_offline(request)
                emit = log.warn if self.upstream.first_offline("cache") else log.debug  # the access log has each one
                emit("registry unreachable ({reason}): serving {ref} from the cache", reason=e.reason,
                         ref=f"{repo}@{digest}" if is_digest else f"{repo}:{reference} ({digest})")
                return await self._from_cache(request, repo, digest)
            raise _unavailable(f"{repo}:{route.argument}" if not is_digest else f"{repo}@{route.argument}", e) from None
        if answer.code != 200:
            # the registry's own answer, with its body (a HEAD has none, so ask again with the client's method)
            return await self.relay(request, path)
        digest_text = answer.headers.getRawHeaders(b"docker-content-digest", [None])[0]
        digest = str(reference) if is_digest else _digest_or_none(digest_text)
        if not is_digest and digest is not None:
            self.cache.set_tag(repo, reference, digest, _content_type(answer), self.now())
        if digest is not None and self.cache.entry(digest) is not None:
            _source(request, "hit")
            return await self._from_cache(request, repo, digest)
        # a miss, HEAD too: a client that already holds the manifest (containerd, dockerd) resolves
        # the tag with a HEAD and never GETs it, so fetch and keep it now, or it would be missing offline
        _source(request, "miss")
        fetched = await self.fetch_manifest(repo, digest or str(reference), None if digest else reference)
        if fetched is None:
            return await self.relay(request, path)
        data, media_type, digest = fetched
        # held until sent (edge.response_memory: a 503 before any header, the manifest is cached by then),
        # sent as a blob is over 64 KiB: a client that reads nothing is closed after edge.send_timeout
        body = held_body(request, data, self.responses)
        _set_manifest_headers(request, media_type, digest, len(data))
        return b"" if head else body

    async def fetch_manifest(self, repo: str, reference: str, tag: str | None = None):
        """
        GET a manifest from the registry, verify it against its digest and keep it:
        C{(data, media type, digest)}, or C{None} if the registry answered something
        other than 200. Raises L{Unreachable} and C{RegistryError(BAD_GATEWAY)}.
        """
        response = await self.upstream.request("GET", f"/v2/{repo}/manifests/{reference}",
                                               {"Accept": [MANIFEST_ACCEPT]})
        if response.code != 200:
            await collect(response, 1 << 20)
            return None
        try:
            data = await collect(response, self.max_manifest_size)
            self.fetched_bytes["manifest"] += len(data)
        except TooLarge:
            raise RegistryError(ErrorCode.BAD_GATEWAY, {"limit": self.max_manifest_size},
                                "the registry's manifest is larger than the edge accepts") from None
        if tag is None:
            expected = Digest.parse(reference)
        else:
            announced = _digest_or_none(response.headers.getRawHeaders(b"docker-content-digest", [None])[0])
            expected = Digest.parse(announced) if announced else Digest.of(data)
        actual = Digest.of(data, expected.algorithm)
        if actual != expected:
            log.error("refused manifest {repo}@{expected} from the registry: its bytes have digest {actual}",
                      repo=repo, expected=str(expected), actual=str(actual))
            raise RegistryError(ErrorCode.BAD_GATEWAY, {"expected": str(expected), "actual": str(actual)},
                                "the registry sent a manifest that does not match its digest; nothing was cached")
        media_type = _content_type(response)
        digest = str(expected)
        await threads.deferToThread(self._keep, data, digest, media_type)
        if tag is not None:
            self.cache.set_tag(repo, tag, digest, media_type, self.now())
        return data, media_type, digest

    def _keep(self, data: bytes, digest: str, media_type: str) -> None:
        import os

        temp = self.cache.temp_path()
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.cache.commit(temp, digest, len(data), media_type, self.now())

    async def _from_cache(self, request, repo: str, digest: str):
        opened = self.cache.open(digest)
        if opened is None:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, {"digest": digest})
        entry, f = opened
        if request.method == b"GET" and entry.size > LARGE_BODY:
            # sent from its file as a cached blob is: nothing held in memory, watched by edge.send_timeout
            body, size = FileBody(f, 0, entry.size, what="a manifest"), entry.size
        else:
            with f:
                body = f.read(self.max_manifest_size + 1)
            size = len(body)
        try:
            self.cache.touch(digest, self.now())
        except BaseException:
            f.close()
            raise
        _set_manifest_headers(request, entry.type, digest, size)
        if request.method == b"GET":
            self.reporter.record(repo, digest, self.now())
            return body
        return b""

    # -- blobs ------------------------------------------------------------------------------

    async def blob(self, request, route):
        repo = route.repository.name
        digest = str(Digest.parse(route.argument))
        if not self.upstream.denied:
            served = self._blob_from_cache(request, digest)
            if served is not None:
                _source(request, "hit")
                return served
        has_range = request.getHeader(b"range") is not None
        if request.method == b"HEAD" or has_range or self.upstream.denied:
            try:
                response = await self.upstream.request(request.method.decode(), f"/v2/{repo}/blobs/{digest}",
                                                       self._forward_headers(request))
            except Unreachable as e:
                return self._blob_offline(request, digest, e)
            _source(request, "relay")
            return RelayBody(response)
        download = self.downloads.get(digest)
        if download is None:
            download = self.start_download(repo, digest)
        try:
            await download.headers()
        except Unreachable as e:
            return self._blob_offline(request, digest, e)
        if download.reply is not None:
            _source(request, "relay")
            return ReplyBody(download.reply)
        if download.state not in ("streaming", "verified"):
            raise RegistryError(ErrorCode.BAD_GATEWAY, {"digest": digest, "reason": download.error},
                                "the registry's blob failed its checks; nothing was cached")
        _source(request, "miss")
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Docker-Content-Digest", digest.encode())
        request.setHeader(b"ETag", f'"{digest}"'.encode())
        if download.size is not None:
            request.setHeader(b"Content-Length", str(download.size).encode())
        return FollowBody(download)

    def start_download(self, repo: str, digest: str) -> Download:
        download = Download(self.cache, self.upstream, repo, digest, self.now, self._download_finished)
        self.downloads[digest] = download
        from twisted.internet import defer

        defer.ensureDeferred(download.run()).addErrback(lambda f: log.failure("download failed", f))
        return download

    def _download_finished(self, download: Download) -> None:
        if self.downloads.get(download.digest) is download:
            del self.downloads[download.digest]
        self.fetched_bytes["blob"] += download.written

    def _blob_offline(self, request, digest: str, e: Unreachable):
        served = self._blob_from_cache(request, digest)
        if served is None:
            raise _unavailable(digest, e)
        self._unreachable_offline(request)
        return served

    def _blob_from_cache(self, request, digest: str):
        opened = self.cache.open(digest)
        if opened is None:
            return None
        entry, f = opened
        try:
            wanted = parse_range(_header(request, b"range"), entry.size)
        except RegistryError:
            f.close()
            raise
        self.cache.touch(digest, self.now())
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Docker-Content-Digest", digest.encode())
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"ETag", f'"{digest}"'.encode())
        start, length = 0, entry.size
        if wanted is not None:
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", wanted.content_range().encode())
            start, length = wanted.start, wanted.length
        request.setHeader(b"Content-Length", str(length).encode())
        if request.method == b"HEAD":
            f.close()
            return b""
        return FileBody(f, start, length)


@functools.cache
def own_names() -> frozenset[str]:
    """The gateway's names a Host may name the edge by on any of its addresses: the documented one, its host name."""
    names = {DOCUMENTED_NAME}
    host = socket.gethostname().lower().rstrip(".")
    if host and re.fullmatch(r"[a-z0-9.-]+", host):
        names.add(host)
        if "." not in host:
            names.add(host + ".local")  # its mDNS name
    return frozenset(names)


def pull_address(request) -> str:
    """
    The C{host:port} to pull through this edge by, as C{GET /} says it: the request's C{Host} when it names this
    edge (one of L{own_names}, C{localhost} on a loopback address, or the address the request came to; and the
    port it came to: a Host is client input, nothing else of it is repeated), else the address and port the
    request came to (a listener on 0.0.0.0 or :: says the address the client reached).
    """
    local = request.getHost()
    if not isinstance(local, (IPv4Address, IPv6Address)):
        return "<this edge's address>"  # a UNIX socket: no address docker could pull by
    try:
        ip = ipaddress.ip_address(local.host.partition("%")[0])
    except ValueError:
        return "<this edge's address>"
    if ip.version == 6 and ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack listener
        ip = ip.ipv4_mapped
    named = _own_host(request.getHeader(b"host"), ip, local.port)
    if named is not None:
        return f"{named}:{local.port}"
    return f"[{ip}]:{local.port}" if ip.version == 6 else f"{ip}:{local.port}"


def _own_host(header, ip, port: int) -> str | None:
    """The host of C{header} (C{host[:port]}, checked by L{izreg.http.bodies}) if it names this edge at C{ip}:C{port}."""
    if not isinstance(header, bytes):
        return None
    try:
        text = header.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    found = re.fullmatch(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::([0-9]{0,5}))?", text)
    if found is None or int(found.group(2) or 80) != port:
        return None
    name = found.group(1)
    try:
        named_ip = ipaddress.ip_address(name.strip("[]") if name.startswith("[") else name)
    except ValueError:
        named_ip = None
    if named_ip is not None:
        if named_ip != ip:
            return None
        return f"[{ip}]" if ip.version == 6 else str(ip)
    name = name.rstrip(".")
    if name in own_names() or name == "localhost" and ip.is_loopback:
        return name
    return None


def _header(request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _digest_or_none(text) -> str | None:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    try:
        return str(Digest.parse(text)) if text else None
    except RegistryError:
        return None


def _content_type(response) -> str:
    value = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return mt.base_type(value)


def _set_manifest_headers(request, media_type: str, digest: str, size: int) -> None:
    request.setHeader(b"Content-Type", media_type.encode())
    request.setHeader(b"Docker-Content-Digest", digest.encode())
    request.setHeader(b"ETag", f'"{digest}"'.encode())
    request.setHeader(b"Content-Length", str(size).encode())


def _unavailable(what: str, e: Unreachable) -> RegistryError:
    """The 503 of an uncached pull while the registry is unreachable (the request's source: "unavailable")."""
    return RegistryError(
        ErrorCode.UNAVAILABLE, {"reference": what[:300], "reason": e.reason[:300]},
        "the registry is unreachable and the edge cache does not have this content",
        headers={"Retry-After": "10"})


def _copy_headers(request, headers) -> None:
    for name, values in headers.getAllRawHeaders():
        if name.lower() in HOP:
            continue
        if name.lower() == b"content-encoding" and not any(v.strip() for v in values):
            continue  # Twisted's ContentDecoderAgent (treq's) adds an empty one to an answer that had none
        request.responseHeaders.setRawHeaders(name, values)


class ReplyBody(Resource):
    """An upstream error answer, already read, passed on unchanged."""

    isLeaf = True

    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self.reply = reply

    def render(self, request):
        request.setResponseCode(self.reply.code)
        _copy_headers(request, self.reply.headers)
        request.setHeader(b"Content-Length", str(len(self.reply.body)).encode())
        return b"" if request.method == b"HEAD" else self.reply.body


class FollowBody(Resource):
    isLeaf = True

    def __init__(self, download: Download) -> None:
        super().__init__()
        self.download = download

    def render(self, request):
        if self.download.state not in ("streaming", "verified"):
            raise RegistryError(ErrorCode.BAD_GATEWAY, {"reason": self.download.error})
        self.download.follow(request).start()
        return NOT_DONE_YET


class RelayBody(Resource):
    """An upstream response streamed to the client as it arrives, with back-pressure."""

    isLeaf = True

    def __init__(self, response) -> None:
        super().__init__()
        self.response = response

    def render(self, request):
        response = self.response
        request.setResponseCode(response.code)
        _copy_headers(request, response.headers)
        # a HEAD's Content-Length is left in the headers by Twisted's client; a GET's is taken out into length
        length = response.headers.getRawHeaders(b"content-length")
        if length:
            request.setHeader(b"Content-Length", length[0])
        elif response.length is not UNKNOWN_LENGTH and request.method != b"HEAD":
            request.setHeader(b"Content-Length", b"%d" % response.length)
        if request.method == b"HEAD":
            return b""
        _Relay(request).attach(response)
        return NOT_DONE_YET


@implementer(IPushProducer)
class _Relay(Protocol):
    """
    The registry's answer passed on as it arrives, the upstream paused while the client's buffer is full; a
    client that reads nothing for edge.send_timeout is cut (the site's L{izreg.http.limits.SlowReaders}).
    """

    what = "a relayed answer"  # (the slow-reader watch's warning line)

    def __init__(self, request) -> None:
        self.request = request
        self.handed = 0  # bytes given to the client's transport, which the slow-reader watch follows
        self.readers = getattr(getattr(request, "site", None), "readers", None)

    def attach(self, response) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addErrback(lambda _: self._gone())
        if self.readers is not None:
            self.readers.started(self, self.request.transport)
        response.deliverBody(self)

    def dataReceived(self, data: bytes) -> None:
        if self.request is not None:
            self.handed += len(data)
            self.request.write(data)

    def connectionLost(self, reason) -> None:
        request, self.request = self.request, None
        if request is None:
            return
        if self.readers is not None:
            self.readers.done(self)
        request.unregisterProducer()
        if reason.check(ResponseDone):
            request.finish()
        else:  # the registry's answer broke off: a 502 if nothing was sent yet, else the connection cut
            why = f"after {self.handed} bytes: {broke_off(reason)}"
            log.warn("the registry's answer to {method} {path} broke off {why}",
                     method=request.method.decode("ascii", "replace"), path=request.uri.decode("latin-1")[:300], why=why)
            upstream_failed(request, f"the registry's answer broke off {why}")

    def too_slow(self) -> None:
        """Called by the slow-reader watch: the client read nothing for edge.send_timeout."""
        request = self.request
        self._gone()
        if request is not None:
            cut(request, CUT_SLOW_READER)

    def _gone(self) -> None:
        if self.request is not None:
            self.request = None
            if self.readers is not None:
                self.readers.done(self)
            if self.transport is not None:
                self.transport.stopProducing()

    def pauseProducing(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._gone()
