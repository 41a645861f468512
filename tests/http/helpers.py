"""
Helpers for the API tests: digests, pushing blobs and manifests, building
manifests, a body of unknown length (chunked transfer-encoding) and a raw
HTTP client for requests treq will not send.
"""

from __future__ import annotations

import hashlib
import json

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.http.conftest import ACCOUNT, OTHER_ACCOUNT, header

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"

EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
API_VERSION = "registry/2.0"

__all__ = ["ACCOUNT", "OTHER_ACCOUNT", "header"]


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def repo(path: str = "app", account: str = ACCOUNT) -> str:
    return f"{account}/{path}"


def descriptor(media_type: str, data: bytes, algorithm: str = "sha256", **extra) -> dict:
    return {"mediaType": media_type, "digest": digest_of(data, algorithm), "size": len(data), **extra}


def dumps(value) -> bytes:
    return json.dumps(value, indent=1).encode()


def image_manifest(
    config: bytes = b'{"architecture":"amd64","os":"linux"}',
    layers: tuple[bytes, ...] = (b"layer-one",),
    media_type: str | None = OCI_MANIFEST,
    config_type: str | None = None,
    layer_type: str | None = None,
    **fields,
) -> bytes:
    docker = media_type == DOCKER_MANIFEST
    config_type = config_type or (DOCKER_CONFIG if docker else OCI_CONFIG)
    layer_type = layer_type or (DOCKER_LAYER if docker else OCI_LAYER)
    document = {"schemaVersion": 2}
    if media_type is not None:
        document["mediaType"] = media_type
    document["config"] = descriptor(config_type, config)
    document["layers"] = [descriptor(layer_type, layer) for layer in layers]
    document.update(fields)
    return dumps(document)


def index_manifest(children: list[tuple[bytes, str, dict | None]], media_type: str | None = OCI_INDEX, **fields) -> bytes:
    """An index over (manifest bytes, manifest media type, platform) triples."""
    document = {"schemaVersion": 2}
    if media_type is not None:
        document["mediaType"] = media_type
    entries = []
    for data, kind, platform in children:
        entry = descriptor(kind, data)
        if platform is not None:
            entry["platform"] = platform
        entries.append(entry)
    document["manifests"] = entries
    document.update(fields)
    return dumps(document)


async def push_blob(server, name: str, data: bytes, algorithm: str = "sha256") -> str:
    """Monolithic POST ?digest=; return the digest."""
    digest = digest_of(data, algorithm)
    response, _ = await server.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", body=data)
    assert response.code == 201, response.code
    return digest


async def put_manifest(server, name: str, reference: str, data: bytes, content_type: str | None = OCI_MANIFEST):
    headers = {"Content-Type": content_type} if content_type else {}
    return await server.request("PUT", f"/v2/{name}/manifests/{reference}", body=data, headers=headers)


async def push_image(
    server,
    name: str,
    reference: str = "latest",
    config: bytes = b'{"architecture":"amd64","os":"linux"}',
    layers: tuple[bytes, ...] = (b"layer-one",),
    media_type: str | None = OCI_MANIFEST,
    content_type: str | None = None,
    **fields,
) -> tuple[str, bytes]:
    """Push config, layers and an image manifest; return (manifest digest, manifest bytes)."""
    for blob in (config, *layers):
        await push_blob(server, name, blob)
    data = image_manifest(config, layers, media_type, **fields)
    response, _ = await put_manifest(server, name, reference, data, content_type or media_type or OCI_MANIFEST)
    assert response.code == 201, response.code
    return digest_of(data), data


async def start_upload(server, name: str) -> str:
    """POST a new upload session; return its Location."""
    response, _ = await server.request("POST", f"/v2/{name}/blobs/uploads/")
    assert response.code == 202, response.code
    return header(response, "Location")


def with_query(location: str, query: str) -> str:
    return location + ("&" if "?" in location else "?") + query


@implementer(IBodyProducer)
class StreamBody:
    """A request body of unknown length: treq sends it with chunked transfer-encoding."""

    length = UNKNOWN_LENGTH

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def startProducing(self, consumer):
        for chunk in self.chunks:
            consumer.write(chunk)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@implementer(IBodyProducer)
class HeldBody:
    """
    A body of unknown length (chunked) that sends C{first} at once and then
    waits: L{finish} sends C{rest} and ends it; never calling it leaves the
    request hanging, as a client that went away mid-body.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.finished = defer.Deferred()

    def startProducing(self, consumer):
        self.consumer = consumer
        consumer.write(self.first)
        return self.finished

    def finish(self, rest: bytes = b"") -> None:
        if rest:
            self.consumer.write(rest)
        self.finished.callback(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


async def raw_http(server, request: bytes) -> bytes:
    """
    Send raw bytes; return the server's answer, once it is complete (by its
    Content-Length) or the server closed: not waiting for the close the
    server makes after a refused request's linger (L{izreg.http.bodies.LINGER}).
    """
    port = int(server.url.rsplit(":", 1)[1])
    proto = FirstAnswer(request, head=request.startswith(b"HEAD "))
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    return await proto.done


class FirstAnswer(protocol.Protocol):
    """
    Sends C{request}; C{done} fires with the first complete answer (by its
    Content-Length; headers only for a HEAD), C{closed} when the server closes.
    With C{hang_up}, the client closes as soon as it has the answer.
    """

    def __init__(self, request: bytes, head: bool = False, hang_up: bool = True) -> None:
        self.request, self.head, self.hang_up = request, head, hang_up
        self.received = b""
        self.done = defer.Deferred()
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += data
        head, sep, body = self.received.partition(b"\r\n\r\n")
        if sep and not self.done.called:
            length = 0 if self.head else int(parse_raw(head + sep)[1].get("content-length", "0"))
            if len(body) >= length:
                self.done.callback(self.received)
                if self.hang_up:
                    self.transport.abortConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.received)
        self.closed.callback(self.received)


async def raw_answer(server, request: bytes, head: bool = False) -> bytes:
    """Send raw bytes; return the first complete answer (by its Content-Length), without waiting for a close."""
    port = int(server.url.rsplit(":", 1)[1])
    proto = FirstAnswer(request, head)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    return await proto.done


def parse_raw(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, lowercase headers, body) of a raw HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def raw_get(path: bytes, method: bytes = b"GET", extra: bytes = b"") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" + extra + b"\r\n"


def content_length(response) -> str | None:
    """The Content-Length the server sent (Agent moves it out of the headers except on HEAD)."""
    value = header(response, "Content-Length")
    if value is not None:
        return value
    return None if response.length == UNKNOWN_LENGTH else str(response.length)
