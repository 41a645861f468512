"""
What the server holds for a TLS client that asks for a blob and then reads
nothing (izreg.service.fasttls, izreg.http.responses.FileSender): the records
sealed for it that the socket did not take, and OpenSSL's send BIO, which
keeps the size of the most it ever held until
L{izreg.service.fasttls.FastTLSTransport.releaseBuffers} replaces it (the
slow-reader watch asks once it sees the client read nothing). The real TLS
listener (L{TLSEndpoint}, device certificate) and the registry's sender, in
process; the sender's pauses are the events the test waits for.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from izreg.http.limits import tcp_under
from izreg.http.responses import MIN_READ, FileSender
from izreg.service.fasttls import BIO_READ_SIZE, FastTLSTransport
from izreg.service.tls import ServerTLS, TLSEndpoint
from izreg.service.tls.admission import HandshakeAdmission
from tests.service.test_tls import Certs

#: the blob: far more than the kernel's socket buffers take (4 MiB at most by default)
SIZE = 24 * 1024 * 1024
#: clients that stop reading
CLIENTS = 6

def _sealed(plaintext: int) -> int:
    """The TLS records of C{plaintext} bytes: at most 256 bytes of header, tag and padding per 16 KiB record."""
    return plaintext + (plaintext // 2**14 + 1) * 256


#: what one stalled connection may hold in the server, sealed and waiting: Twisted's
#: transport pauses its producer once it holds more than its bufferSize (64 KiB); the
#: write that crosses it is MIN_READ when the socket has no room left, and the one
#: before it, sized by the room the socket seemed to have, may be that much more than
#: the socket takes (the kernel's per-segment overhead, which ROOM_SHARE leaves room
#: for). Measured here: 70-94 KiB. With a fixed 512 KiB read per write (before), a
#: connection held up to 576 KiB, 250-330 KiB here.
BOUND = 2**16 + 2 * _sealed(MIN_READ)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


try:
    _mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    _mallinfo2.restype = _Mallinfo2
except (OSError, AttributeError, TypeError):  # not glibc (2.33+)
    _mallinfo2 = None


def _heap_in_use() -> int | None:
    """Bytes the C heap has handed out (glibc's mallinfo2), or None without it."""
    if _mallinfo2 is None:
        return None
    info = _mallinfo2()
    return info.uordblks + info.hblkhd


class Blob(Resource):
    """GET: the blob file, sent by the registry's own FileSender; each sender's pauses are events."""

    isLeaf = True

    def __init__(self, path: str, requests: int) -> None:
        super().__init__()
        self.path = path
        self.senders: list[FileSender] = []
        #: one per request to come: fires at its first pause with the socket full (the transport holds records)
        self.full = [defer.Deferred() for _ in range(requests)]
        #: what the server held for its client at each pause of a sender
        self.held: list[int] = []

    def render_GET(self, request):
        full = self.full[len(self.senders)]
        blob = self

        class Sender(FileSender):
            def pauseProducing(self) -> None:
                super().pauseProducing()
                held = _held(request.transport)
                blob.held.append(held)
                if held and not full.called:
                    full.callback(self)

        request.setHeader(b"content-length", b"%d" % SIZE)
        sender = Sender(request, open(self.path, "rb"), 0, SIZE)
        self.senders.append(sender)
        sender.start()
        return NOT_DONE_YET


def _tls_of(transport) -> FastTLSTransport:
    while not isinstance(transport, FastTLSTransport):
        transport = transport.transport
    return transport


def _held(transport) -> int:
    """What the server holds for the connection, sealed and not yet sent: the TCP transport's buffer and the send BIO."""
    from OpenSSL._util import ffi, lib

    tcp = tcp_under(transport)
    tls = _tls_of(transport)
    return (len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen
            + lib.BIO_get_mem_data(tls._tlsConnection._from_ssl, ffi.NULL))


@pytest.fixture
def blob_server(tmp_path):
    from twisted.internet import reactor

    certs = Certs(tmp_path)
    data = os.urandom(SIZE)
    path = tmp_path / "blob"
    path.write_bytes(data)
    resource = Blob(str(path), CLIENTS)
    site = Site(resource)
    tls = ServerTLS(certs.files())
    admission = HandshakeAdmission(reactor, 8, handshake_timeout=30, wait_timeout=30)
    endpoint = TLSEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), tls, clock=reactor,
                           admission=admission)
    port = pytest_twisted.blockon(endpoint.listen(site))
    yield port.getHost().port, certs, resource, hashlib.sha256(data).hexdigest()
    pytest_twisted.blockon(port.stopListening())


def _stalled_get(port: int, certs: Certs) -> ssl.SSLSocket:
    """(In a thread.) A device's TLS connection that has sent a GET of the blob and reads nothing."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs.ca_path)
    ctx.check_hostname = False
    ctx.load_cert_chain(certs.device_cert, certs.device_key)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.settimeout(60)
    raw.connect(("127.0.0.1", port))
    sock = ctx.wrap_socket(raw)
    sock.sendall(b"GET /blob HTTP/1.1\r\nHost: registry\r\n\r\n")
    return sock


def _read_all(sock: ssl.SSLSocket) -> str:
    """(In a thread.) The rest of the response: the body's SHA-256."""
    with sock:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, _, body = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        digest, got = hashlib.sha256(body), len(body)
        while got < SIZE:
            chunk = sock.recv(1 << 20)
            assert chunk, got
            digest.update(chunk)
            got += len(chunk)
        return digest.hexdigest()


@pytest_twisted.ensureDeferred
async def test_a_stalled_tls_reader_holds_little_and_gives_the_send_bio_back(blob_server):
    port, certs, resource, digest = blob_server
    clients = [await deferToThread(_stalled_get, port, certs) for _ in range(CLIENTS)]
    try:
        await defer.gatherResults(resource.full)
        # every pause so far: the sealed records waiting for each client stay within the bound
        assert resource.held and max(resource.held) <= BOUND, (max(resource.held), BOUND)
        transports = [sender.request.transport for sender in resource.senders]
        assert all(_held(t) <= BOUND for t in transports), [_held(t) for t in transports]

        # what the slow-reader watch calls when a look sees nothing read (tests/http/test_slow_readers.py):
        # each send BIO, grown to a whole TLS write (~64 KiB), is replaced by an empty one
        _heap_in_use()
        in_use = _heap_in_use()
        for sender in resource.senders:
            sender.stalled()
        if in_use is not None:
            freed = in_use - _heap_in_use()
            assert freed >= CLIENTS * BIO_READ_SIZE, (freed, CLIENTS * BIO_READ_SIZE)
        assert not any(_tls_of(t).releaseBuffers() for t in transports)  # nothing more to give back

        # and the connections carry on: every client gets the whole blob, intact
        got = await defer.gatherResults([deferToThread(_read_all, sock) for sock in clients])
        assert got == [digest] * CLIENTS
    finally:
        for sock in clients:
            sock.close()
