"""
Handshake steps on threads (L{izreg.service.tlsthreads}), driven in memory: a
pyOpenSSL client, the server's L{ThreadedTLSTransport} over a
L{StringTransport}, and a L{Gate} that holds each step until the test lets it
run on a real thread (so what happens meanwhile can be chosen). The same TLS
tests over real sockets run both inline and on threads (tests/service/test_tls.py).
"""

from __future__ import annotations

import threading

import pytest
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from izreg.http.peercert import peer_certificate
from izreg.service.tls import ServerTLS
from izreg.service.tlsthreads import HandshakeThreads, ThreadedTLSFactory, ThreadedTLSTransport
from tests.service.test_tls import Certs


class Untouchable:
    """In place of a connection's SSL object while its step waits: any use by the reactor fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the SSL object was used ({name}) while a handshake step ran")


class Gate:
    """
    Stands in for L{HandshakeThreads}: keeps each step until L{release} runs it
    on a thread of its own; meanwhile the connection's SSL object is out of
    the reactor's reach (L{Untouchable}).
    """

    usable = True

    def __init__(self) -> None:
        self.pending: list = []
        self.server = None

    def submit(self, step, done) -> None:
        self.pending.append((step, done))
        self.hidden = self.server._tlsConnection
        self.server._tlsConnection = Untouchable()

    def release(self) -> None:
        step, done = self.pending.pop(0)
        self.server._tlsConnection = self.hidden
        box: list = []
        worker = threading.Thread(target=lambda: box.append(step()))
        worker.start()
        worker.join()
        done(True, box[0])


class App(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.handshakes = 0

    def handshakeCompleted(self) -> None:  # IHandshakeListener (declared below)
        self.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.transport.write(b"echo:" + data)

    def connectionLost(self, reason) -> None:
        self.lost.append(reason)


from zope.interface import classImplements  # noqa: E402
from twisted.internet.interfaces import IHandshakeListener  # noqa: E402

classImplements(App, IHandshakeListener)


class Pair:
    """One connection: a client, the server's TLS protocol, their app."""

    def __init__(self, certs: Certs, threads, cert: str | None = None, key: str | None = None) -> None:
        self.tls = ServerTLS(certs.files())
        self.app = App()
        self.completed = 0

        def counted():
            self.completed += 1

        self.tls.on_handshake = counted
        self.clock = Clock()
        self.factory = ThreadedTLSFactory(self.tls, False, Factory.forProtocol(lambda: self.app), clock=self.clock,
                                          threads=threads)
        self.server = self.factory.buildProtocol(None)
        if isinstance(threads, Gate):
            threads.server = self.server
        assert isinstance(self.server, ThreadedTLSTransport)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE)
        if cert:
            ctx.use_certificate(_load_cert(cert))
            ctx.use_privatekey_file(key)
        self.client = SSL.Connection(ctx, None)
        self.client.set_connect_state()

    def client_step(self) -> bytes:
        """The client reads what the server sent and answers: the bytes it sends."""
        if self.transport.value():
            self.client.bio_write(self.transport.value())
            self.transport.clear()
        try:
            self.client.do_handshake()
        except SSL.WantReadError:
            pass
        return _drain(self.client)

    def to_server(self, data: bytes) -> None:
        self.server.dataReceived(data)


def _drain(connection) -> bytes:
    out = b""
    while True:
        try:
            out += connection.bio_read(65536)
        except SSL.WantReadError:
            return out


def _load_cert(path: str):
    from cryptography import x509

    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path)


def handshake_and_request(pair: Pair, gate: Gate | None) -> None:
    pair.to_server(pair.client_step())  # ClientHello
    if gate is not None:
        assert pair.transport.producerState == "paused" and len(gate.pending) == 1
        gate.release()
        assert pair.transport.producerState == "producing"
    last = pair.client_step()  # the client's certificate, its signature and Finished
    pair.client.send(b"GET / HTTP/1.1\r\n\r\n")
    pair.to_server(last + _drain(pair.client))
    if gate is not None:
        assert pair.app.received == []  # nothing decrypted while the step waits
        gate.release()
    assert pair.app.received == [b"GET / HTTP/1.1\r\n\r\n"]
    assert (pair.app.handshakes, pair.completed) == (1, 1)
    pair.clock.advance(0)  # the app's write, aggregated, goes out
    pair.client.bio_write(pair.transport.value())
    pair.transport.clear()
    answer = b""
    while True:
        try:
            answer += pair.client.recv(65536)
        except SSL.WantReadError:
            break
    assert answer == b"echo:GET / HTTP/1.1\r\n\r\n"


def test_handshake_steps_run_on_the_threads(certs):
    gate = Gate()
    pair = Pair(certs, gate, certs.device_cert, certs.device_key)
    handshake_and_request(pair, gate)
    # the verified client certificate was read on the thread, for the HTTP layer (izreg.http.peercert)
    assert pair.server.peerCertificate.subject.rfc4514_string().startswith("CN=gw-17,")
    assert peer_certificate(pair.server) is pair.server.peerCertificate
    assert gate.pending == []


@pytest.mark.parametrize("threads", ["none", "stopped", "zero"])
def test_without_running_threads_steps_run_inline(certs, threads):
    from twisted.internet import reactor

    pool = {"none": None, "stopped": HandshakeThreads(reactor, 2), "zero": HandshakeThreads(reactor, 0)}[threads]
    pair = Pair(certs, pool, certs.device_cert, certs.device_key)
    handshake_and_request(pair, None)
    assert pair.transport.producerState == "producing"
    assert pair.server.peerCertificate is None  # inline: the first request reads it
    assert peer_certificate(pair.server).subject.rfc4514_string().startswith("CN=gw-17,")


def test_writes_during_a_step_wait_for_the_handshake(certs):
    gate = Gate()
    pair = Pair(certs, gate, certs.device_cert, certs.device_key)
    pair.to_server(pair.client_step())
    pair.server.write(b"early")
    pair.clock.advance(0)  # the aggregated write reaches the TLS layer while the step runs
    assert pair.server._appSendBuffer == [b"early"]
    gate.release()
    pair.to_server(pair.client_step())
    gate.release()
    pair.client.bio_write(pair.transport.value())
    assert pair.client.recv(100) == b"early"


@pytest.mark.parametrize("how", ["lost", "abort", "lose"])
def test_connection_ended_while_a_step_runs(certs, how):
    gate = Gate()
    pair = Pair(certs, gate, certs.device_cert, certs.device_key)
    pair.to_server(pair.client_step())
    if how == "lost":  # the TCP connection went away (e.g. the reactor shutting down)
        pair.server.connectionLost(Failure(ConnectionDone()))
    elif how == "abort":  # the application aborts (e.g. a timeout)
        pair.server.abortConnection()
    else:
        pair.server.loseConnection()
    assert pair.app.lost == [] and not pair.transport.disconnecting  # held until the step is back
    gate.release()
    if how == "lost":
        assert len(pair.app.lost) == 1
        assert pair.server._tlsConnection is None
    else:
        assert pair.transport.disconnecting or pair.transport.disconnected
        pair.server.connectionLost(Failure(ConnectionDone()))  # what the TCP transport then does
        assert len(pair.app.lost) == 1
    assert pair.app.received == [] and pair.completed == 0
    assert pair.server not in pair.factory.protocols


@pytest.mark.parametrize("threads", ["inline", "gate"])
def test_garbage_instead_of_a_client_hello(certs, threads):
    gate = Gate() if threads == "gate" else None
    pair = Pair(certs, gate)
    pair.to_server(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    if gate is not None:
        gate.release()
    assert pair.transport.disconnecting
    pair.server.connectionLost(Failure(ConnectionDone()))
    [reason] = pair.app.lost
    assert reason.check(SSL.Error), reason
    assert pair.app.received == []


@pytest.mark.parametrize("threads", ["inline", "gate"])
def test_refused_certificate_is_logged_and_alerted_the_same_way(certs, threads):
    gate = Gate() if threads == "gate" else None
    pair = Pair(certs, gate, certs.stranger_cert, certs.stranger_key)
    with capturedLogs() as events:
        pair.to_server(pair.client_step())
        if gate is not None:
            gate.release()
        pair.to_server(pair.client_step())
        if gate is not None:
            gate.release()
    reasons = [e.get("reason") for e in events if "subject" in e]
    assert any("not issued by a configured device CA" in r for r in reasons), events
    assert pair.transport.disconnecting
    pair.client.bio_write(pair.transport.value())
    with pytest.raises(SSL.Error, match="unknown ca"):
        pair.client.recv(100)
    pair.server.connectionLost(Failure(ConnectionDone()))
    [reason] = pair.app.lost
    assert reason.check(SSL.Error)
    assert pair.completed == 0


def test_handshake_threads_service_starts_and_stops_its_pool():
    from twisted.internet import reactor

    threads = HandshakeThreads(reactor, 2)
    assert not threads.usable
    threads.startService()
    try:
        assert threads.usable and threads.pool.max == 2
    finally:
        threads.stopService()
    assert not threads.usable
    assert HandshakeThreads(reactor).size >= 1
    assert not HandshakeThreads(reactor, 0).usable
