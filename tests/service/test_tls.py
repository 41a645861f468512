"""
The TLS listener over loopback, driven by real clients (curl, openssl s_client, skopeo).

A tiny twisted.web resource stands in for the registry: it reports what
L{izreg.http.peercert.peer_certificate} and L{DeviceVerifier} make of each request.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import struct
import time

import pytest
import pytest_twisted
from cryptography import x509
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import capturedLogs
from twisted.web.resource import Resource
from twisted.web.server import Site

from izreg.auth.devices import DeviceRejected, DeviceVerifier
from izreg.auth.devicestore import SERIAL, DeviceStore
from izreg.devcerts import (
    Issued,
    cert_pem,
    key_pem,
    make_ca,
    make_device_cert,
    make_server_cert,
    write_dev_certs,
    write_file,
)
from izreg.service.tls import (
    CRLFile,
    ServerTLS,
    TLSConfigError,
    TLSEndpoint,
    TLSFiles,
    load_material,
)
from izreg.http.peercert import peer_certificate
from izreg.service.tls.admission import HandshakeAdmission
from izreg.service.tlsthreads import HandshakeThreads
from izreg.storage.lmdbenv import open_env

ACCOUNT = "0123456789abcdef0123456789abcdef"
CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")
SKOPEO = shutil.which("skopeo")


def write_pair(directory, name: str, issued: Issued, cert_ext: str = "crt") -> tuple[str, str]:
    cert_path = os.path.join(directory, f"{name}.{cert_ext}")
    key_path = os.path.join(directory, f"{name}.key")
    write_file(cert_path, cert_pem(issued.cert))
    write_file(key_path, key_pem(issued.key), 0o600)
    return cert_path, key_path


class Certs:
    """A device CA, a server certificate and assorted client certificates, on disk."""

    def __init__(self, directory) -> None:
        now = time.time()
        self.dir = str(directory)
        self.ca = make_ca(now, common_name="izreg test device CA")
        self.ca_path, _ = write_pair(self.dir, "ca", self.ca)
        self.server_cert, self.server_key = write_pair(self.dir, "server", make_server_cert(self.ca, now))
        self.device = make_device_cert(self.ca, ACCOUNT, "gw-17", now)
        self.device_cert, self.device_key = write_pair(self.dir, "device", self.device)
        stranger_ca = make_ca(now, common_name="someone else's CA")
        self.stranger_cert, self.stranger_key = write_pair(
            self.dir, "stranger", make_device_cert(stranger_ca, ACCOUNT, "gw-17", now))
        self.expired_cert, self.expired_key = write_pair(
            self.dir, "expired", make_device_cert(self.ca, ACCOUNT, "gw-old", now - 10 * 86400, days=1))
        self.nameless_cert, self.nameless_key = write_pair(
            self.dir, "nameless", make_device_cert(self.ca, "not-an-account", "gw-x", now))

    def files(self) -> TLSFiles:
        return TLSFiles(self.server_cert, self.server_key, (self.ca_path,))


class Whoami(Resource):
    """GET anything: JSON with what the TLS layer and the device verifier saw."""

    isLeaf = True

    def __init__(self, verifier: DeviceVerifier) -> None:
        super().__init__()
        self.verifier = verifier
        self.seen: list[dict] = []

    def render_GET(self, request):
        cert = peer_certificate(request.transport)
        answer: dict = {"path": request.path.decode(), "secure": request.isSecure(), "cert": None}
        if cert is not None:
            answer["cert"] = cert.subject.rfc4514_string()
            try:
                identity = self.verifier.verify(cert, time.time())
                answer["device"] = [identity.account, identity.device_id]
            except DeviceRejected as e:
                request.setResponseCode(401)
                answer["rejected"] = e.reason
        self.seen.append(answer)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode()


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path)


@pytest.fixture
def store(tmp_path):
    env = open_env(str(tmp_path / "data"), 1 << 30)
    yield DeviceStore(env)
    env.close()


@pytest.fixture(params=["inline", "threads"])
def server(request, certs, store):
    """
    Listen on 127.0.0.1:<random>; yield (port number, ServerTLS, Whoami).
    Each test runs twice: handshake steps on the reactor, and on handshake threads.
    """
    from twisted.internet import reactor

    tls = ServerTLS(certs.files())
    verifier = DeviceVerifier(cas=tls.device_cas, revoked=store.revocations_for)
    whoami = Whoami(verifier)
    threads = HandshakeThreads(reactor, 2) if request.param == "threads" else None
    if threads is not None:
        threads.startService()
    # behind the handshake admission the server uses (izreg.service.tls.admission): two at a time
    admission = HandshakeAdmission(reactor, 2, handshake_timeout=30, wait_timeout=30)
    endpoint = TLSEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), tls, clock=reactor, threads=threads,
                           admission=admission)
    port = pytest_twisted.blockon(endpoint.listen(Site(whoami)))
    yield port.getHost().port, tls, whoami
    assert admission.timed_out == 0
    pytest_twisted.blockon(port.stopListening())
    if threads is not None:
        threads.stopService()


async def run(*argv: str, env: dict | None = None) -> tuple[int, str, str]:
    out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env=env or dict(os.environ), stdinBytes=b"")
    return code, out.decode(errors="replace"), err.decode(errors="replace")


async def curl(port: int, certs: Certs, cert: str | None = None, key: str | None = None, path: str = "/v2/"):
    argv = [CURL, "-sS", "--max-time", "20", "--cacert", certs.ca_path]
    if cert:
        argv += ["--cert", cert, "--key", key]
    code, out, err = await run(*argv, "-w", "\n%{http_code}", f"https://127.0.0.1:{port}{path}")
    if code != 0:
        return code, None, err
    body, status = out.rsplit("\n", 1)
    return int(status), json.loads(body), err


needs_tools = pytest.mark.skipif(not (CURL and OPENSSL), reason="curl and openssl are needed")


@needs_tools
@pytest_twisted.ensureDeferred
async def test_valid_device_certificate_is_seen(server, certs):
    port, _, whoami = server
    status, body, _ = await curl(port, certs, certs.device_cert, certs.device_key)
    assert status == 200
    assert body["secure"] is True
    assert body["cert"] == f"CN=gw-17,OU={ACCOUNT}"
    assert body["device"] == [ACCOUNT, "gw-17"]


@needs_tools
@pytest_twisted.ensureDeferred
async def test_no_certificate_handshake_succeeds(server, certs):
    port, _, whoami = server
    status, body, _ = await curl(port, certs)
    assert status == 200
    assert body["cert"] is None


@needs_tools
@pytest_twisted.ensureDeferred
async def test_unknown_ca_is_refused_with_a_logged_reason(server, certs):
    port, tls, whoami = server
    with capturedLogs() as events:
        code, body, err = await curl(port, certs, certs.stranger_cert, certs.stranger_key)
    assert code != 0 and body is None
    assert "unknown ca" in err
    assert whoami.seen == []  # no request got through
    reasons = [e.get("reason") for e in events if "subject" in e and e.get("reason")]
    assert any("not issued by a configured device CA" in r for r in reasons), events
    assert tls.refusals.total == 1  # the listener's own count (and windows): no other test's refusals in it


@needs_tools
@pytest_twisted.ensureDeferred
async def test_expired_certificate_is_refused(server, certs):
    port, _, whoami = server
    with capturedLogs() as events:
        code, body, err = await curl(port, certs, certs.expired_cert, certs.expired_key)
    assert code != 0 and body is None
    assert "certificate expired" in err
    assert whoami.seen == []
    assert any(e.get("reason") == "the certificate has expired" for e in events)


@needs_tools
@pytest_twisted.ensureDeferred
async def test_bad_subject_and_revocation_are_401_per_request(server, certs, store):
    port, _, whoami = server
    status, body, _ = await curl(port, certs, certs.nameless_cert, certs.nameless_key)
    assert (status, body["rejected"]) == (401, "bad-account")

    status, body, _ = await curl(port, certs, certs.device_cert, certs.device_key)
    assert status == 200
    store.revoke(SERIAL, format(certs.device.cert.serial_number, "X"), time.time(), "lost")
    status, body, _ = await curl(port, certs, certs.device_cert, certs.device_key)
    assert (status, body["rejected"]) == (401, "revoked-serial")


@needs_tools
@pytest_twisted.ensureDeferred
async def test_tls_1_1_is_refused(server, certs):
    port, _, _ = server
    # SECLEVEL=0 lets this client offer TLS 1.1 at all; the refusal must come from the server.
    code, out, err = await run(OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1",
                               "-cipher", "DEFAULT@SECLEVEL=0")
    assert code != 0
    assert "alert protocol version" in err or "unsupported protocol" in err, err
    code, out, err = await run(OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2")
    assert code == 0 and "Protocol  : TLSv1.2" in out, err


@needs_tools
@pytest_twisted.ensureDeferred
async def test_suites_in_the_servers_order_chacha_for_clients_that_prefer_it(server):
    """
    TLS 1.3 and 1.2: AES-128-GCM whatever order a client with AES lists the suites in
    (the server's order), ChaCha20-Poly1305 for a client that lists it first (one without
    AES instructions), AES-256-GCM when a client offers nothing else.
    """
    port, _, _ = server

    async def suite(*flags: str) -> str:
        code, out, err = await run(OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *flags)
        assert code == 0, err
        suites = [line.rsplit(" ", 1)[1] for line in out.splitlines() if ", Cipher is " in line]  # "New, TLSv1.3, Cipher is X"
        assert suites, out
        return suites[0]

    aes_first = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"
    assert await suite("-tls1_3", "-ciphersuites", aes_first) == "TLS_AES_128_GCM_SHA256"
    chacha_first = "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"
    assert await suite("-tls1_3", "-ciphersuites", chacha_first) == "TLS_CHACHA20_POLY1305_SHA256"
    assert await suite("-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384") == "TLS_AES_256_GCM_SHA384"
    assert await suite("-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:"
                       "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256") in (
        "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert await suite("-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-CHACHA20-POLY1305:"
                       "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256") in (
        "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-ECDSA-CHACHA20-POLY1305")


def _abandon_and_garble(port: int) -> bytes:
    """
    (In a thread.) A real ClientHello, then a reset before the server has
    answered (its step may still be on a handshake thread); then a TLS-looking
    record of garbage: what the server sends back before it closes.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(outgoing.read())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x20" + b"\xff" * 32)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


@needs_tools
@pytest_twisted.ensureDeferred
async def test_abandoned_and_garbage_handshakes_leave_the_listener_serving(server, certs):
    port, _, whoami = server
    with capturedLogs() as events:
        answer = await deferToThread(_abandon_and_garble, port)
    assert answer[:1] == b"\x15"  # a TLS alert, then the server closed
    assert [e for e in events if e.get("log_failure") is not None] == []  # nothing unhandled
    status, body, _ = await curl(port, certs, certs.device_cert, certs.device_key)
    assert status == 200 and body["device"] == [ACCOUNT, "gw-17"]
    assert [seen["path"] for seen in whoami.seen] == ["/v2/"]


async def plain_http_to(port: int) -> tuple[int, str, dict]:
    """curl http:// (plain) to a TLS port: (status, headers, JSON body)."""
    code, out, err = await run(CURL, "-sS", "--max-time", "20", "-D", "-", f"http://127.0.0.1:{port}/v2/")
    assert code == 0, err  # not "Empty reply from server" (52)
    head, body = out.split("\r\n\r\n", 1)
    return int(head.split()[1]), head.lower(), json.loads(body)


def _plain_http_raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):  # the server closes after its answer
            answer += chunk
    return answer


async def check_plain_http_is_told_to_use_https(port: int, certs: Certs) -> None:
    status, head, body = await plain_http_to(port)
    assert status == 400
    assert "content-type: application/json" in head and "connection: close" in head
    assert body == {"errors": [{"code": "UNSUPPORTED", "message": "this port speaks TLS: use https://",
                                "detail": None}]}
    # the request line's first bytes alone, a few at a time: the answer comes from the method already
    answer = await deferToThread(_plain_http_raw, port, b"HEA")
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n"), answer
    status, body, _ = await curl(port, certs, certs.device_cert, certs.device_key)  # TLS still works
    assert status == 200 and body["device"] == [ACCOUNT, "gw-17"]


@needs_tools
@pytest_twisted.ensureDeferred
async def test_plain_http_to_the_tls_port_is_told_to_use_https(server, certs):
    await check_plain_http_is_told_to_use_https(server[0], certs)


@needs_tools
@pytest_twisted.ensureDeferred
async def test_plain_http_is_told_to_use_https_also_with_no_handshake_cap(certs, store):
    from twisted.internet import reactor

    admission = HandshakeAdmission(reactor, 0, handshake_timeout=30, wait_timeout=30)
    tls = ServerTLS(certs.files())
    whoami = Whoami(DeviceVerifier(cas=tls.device_cas, revoked=store.revocations_for))
    endpoint = TLSEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), tls, clock=reactor,
                           admission=admission)
    port = await endpoint.listen(Site(whoami))
    try:
        await check_plain_http_is_told_to_use_https(port.getHost().port, certs)
        assert admission.in_progress == 0 and admission.timed_out == 0
    finally:
        await port.stopListening()


@needs_tools
@pytest_twisted.ensureDeferred
async def test_device_ca_is_advertised(server, certs):
    port, _, _ = server
    for version in ("-tls1_2", "-tls1_3"):
        code, out, err = await run(OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", version)
        assert code == 0, err
        section = out.split("Acceptable client certificate CA names", 1)[1].split("\n---", 1)[0]
        assert "CN = izreg test device CA" in section, out


@needs_tools
@pytest_twisted.ensureDeferred
async def test_reload_picks_up_a_new_server_certificate(server, certs):
    port, tls, _ = server

    async def server_subject() -> str:
        code, out, err = await run(OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}")
        assert code == 0, err
        return [line for line in out.splitlines() if line.startswith("subject=")][0]

    assert "CN = localhost" in await server_subject()
    write_pair(certs.dir, "server", make_server_cert(certs.ca, time.time(), names=("renewed.local", "127.0.0.1")))
    assert "CN = localhost" in await server_subject()  # files are read at start and on reload only
    tls.reload()
    assert "CN = renewed.local" in await server_subject()

    # a broken file on reload keeps the old context working
    with open(certs.server_key, "w") as f:
        f.write("garbage")
    with pytest.raises(TLSConfigError):
        tls.reload()
    assert "CN = renewed.local" in await server_subject()


def test_load_material_errors(certs, tmp_path):
    with pytest.raises(TLSConfigError, match="cannot read the server key"):
        load_material(TLSFiles(certs.server_cert, str(tmp_path / "missing.key")))
    with pytest.raises(TLSConfigError, match="does not match"):
        load_material(TLSFiles(certs.server_cert, certs.device_key))
    with pytest.raises(TLSConfigError, match="not a CA certificate"):
        load_material(TLSFiles(certs.server_cert, certs.server_key, (certs.device_cert,)))
    # a device's certificate and key for the server's (dev-certs' client.cert beside server/server.crt): every
    # client would fail its handshake ("unsupported certificate purpose"); start-up says so instead
    with pytest.raises(TLSConfigError) as swapped:
        load_material(TLSFiles(certs.device_cert, certs.device_key))
    assert str(swapped.value) == (
        f"the server certificate {certs.device_cert} ({certs.device.cert.subject.rfc4514_string()}) is not a server"
        " certificate (extended key usage: clientAuth; TLS servers need serverAuth): give the registry's own"
        " certificate (server/server.crt of izreg dev-certs), not a device's")
    material = load_material(certs.files())
    assert [c.subject for c in material.device_cas] == [certs.ca.cert.subject]
    # a CA:TRUE certificate with no extended key usage (openssl req -x509's) is a server certificate still
    ca_cert, ca_key = write_pair(certs.dir, "self-signed", certs.ca)
    assert load_material(TLSFiles(ca_cert, ca_key)).server_chain[0].subject == certs.ca.cert.subject


def test_crl_file_reloads_on_change(certs, tmp_path):
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    def crl_pem(issuer: Issued, serials) -> bytes:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.cert.subject)
                   .last_update(now).next_update(now + datetime.timedelta(days=1)))
        for s in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now).build())
        return builder.sign(issuer.key, hashes.SHA256()).public_bytes(Encoding.PEM)

    path = str(tmp_path / "devices.crl")
    stats = []

    def counting_stat(p):
        stats.append(p)
        return os.stat(p)

    crl_file = CRLFile(path, cas=lambda: [certs.ca.cert], stat=counting_stat)
    assert crl_file.refresh() == ()  # missing file: no CRLs (logged)
    write_file(path, crl_pem(certs.ca, [1]))
    assert crl_file.current() == ()  # no I/O per request: the timer's refresh reads it
    [first] = crl_file.refresh()
    assert crl_file.refresh() == (first,)  # unchanged: not re-parsed
    assert crl_file.current()[0] is first
    write_file(path, crl_pem(certs.ca, [1, certs.device.cert.serial_number]) + crl_pem(certs.ca, [7]))
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse filesystems
    crls = crl_file.refresh()
    assert len(crls) == 2
    verifier = DeviceVerifier(cas=lambda: [certs.ca.cert], crls=crl_file.current)
    with pytest.raises(DeviceRejected) as e:
        verifier.verify(certs.device.cert, time.time())
    assert e.value.reason == "revoked-crl"
    # a CRL signed by someone else is ignored and the previous ones stay
    write_file(path, crl_pem(make_ca(time.time()), [5]))
    os.utime(path, ns=(2, 2))
    assert crl_file.refresh() == crls
    assert crl_file.reload() == crls
    assert len(stats) == 6  # one stat per refresh(), none per current()


@needs_tools
@pytest_twisted.ensureDeferred
async def test_dev_certs_cert_dir_works_with_curl_and_skopeo(tmp_path, store):
    from twisted.internet import reactor

    paths = write_dev_certs(str(tmp_path / "certs"), time.time(), ACCOUNT, "edge-1")
    tls = ServerTLS(TLSFiles(paths.server_cert, paths.server_key, (paths.ca_cert,)))
    whoami = Whoami(DeviceVerifier(cas=tls.device_cas, revoked=store.revocations_for))
    port = await TLSEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), tls).listen(Site(whoami))
    try:
        n = port.getHost().port
        code, out, err = await run(CURL, "-sS", "--cacert", paths.ca_cert, "--cert", paths.client_cert,
                                   "--key", paths.client_key, f"https://localhost:{n}/v2/")
        assert code == 0, err
        assert json.loads(out)["device"] == [ACCOUNT, "edge-1"]
        # a second device from the same CA (izreg dev-certs OTHER --ca DIR): the running server takes it
        other = write_dev_certs(str(tmp_path / "edge-2"), time.time(), ACCOUNT, "edge-2", ca_dir=paths.directory)
        code, out, err = await run(CURL, "-sS", "--cacert", other.ca_cert, "--cert", other.client_cert,
                                   "--key", other.client_key, f"https://localhost:{n}/v2/")
        assert code == 0, err
        assert json.loads(out)["device"] == [ACCOUNT, "edge-2"]
        if SKOPEO:
            # skopeo reads the same directory as --cert-dir; the fake registry answers 200 to
            # everything, so the command may fail later, but its first request carried the device cert
            skopeo = await run(SKOPEO, "inspect", "--raw", "--retry-times", "0", "--cert-dir", paths.directory,
                      f"docker://127.0.0.1:{n}/{ACCOUNT}/app:v1",
                      env={**os.environ, "HOME": str(tmp_path)})
            skopeo_seen = [s for s in whoami.seen[2:] if s["path"].startswith("/v2/")]
            assert skopeo_seen, (whoami.seen, skopeo)
            assert all(s.get("device") == [ACCOUNT, "edge-1"] for s in skopeo_seen), skopeo_seen
    finally:
        await port.stopListening()


@needs_tools
@pytest_twisted.ensureDeferred
async def test_every_completed_handshake_is_counted_also_after_a_reload(certs, store):
    """C{on_handshake} is given at construction (the metrics' counter in the server) and survives a reload."""
    from twisted.internet import reactor

    handshakes = []
    tls = ServerTLS(certs.files(), on_handshake=lambda: handshakes.append(1))
    endpoint = TLSEndpoint(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), tls, clock=reactor)
    port = await endpoint.listen(Site(Whoami(DeviceVerifier(cas=tls.device_cas, revoked=store.revocations_for))))
    try:
        assert (await curl(port.getHost().port, certs))[0] == 200
        assert len(handshakes) == 1
        tls.reload()
        assert (await curl(port.getHost().port, certs))[0] == 200
        assert len(handshakes) == 2
    finally:
        await port.stopListening()


def _intermediate_ca(root: Issued, now: float) -> Issued:
    """An intermediate CA issued by C{root}."""
    import datetime

    from cryptography.hazmat.primitives import hashes

    key = make_ca(now, common_name="intermediate CA").key
    return Issued(key, x509.CertificateBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "intermediate CA")])).issuer_name(root.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1))
        .not_valid_after(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root.key, hashes.SHA256()))


def _served_chain(context) -> list[str]:
    """The subjects of the certificates a server with C{context} sends (one handshake over memory BIOs)."""
    from OpenSSL import SSL

    server = SSL.Connection(context, None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(8):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
    return [cert.to_cryptography().subject.rfc4514_string() for cert in client.get_peer_cert_chain()]


def test_the_server_sends_the_chain_openssl_would_build_per_handshake(monkeypatch):
    """
    A server certificate without its chain: the chain OpenSSL built from the
    device CAs on every handshake is built once at load, and the same
    certificates are sent (the issuing device CA; an intermediate device CA;
    nothing when no device CA issued it; the file's own chain when it has one).
    """
    from izreg.service.tls import context as tls_context
    from izreg.service.tls import build_context
    from izreg.service.tls.pem import TLSMaterial

    now = time.time()
    root, other = make_ca(now, common_name="root CA"), make_ca(now, common_name="other CA")
    inter = _intermediate_ca(root, now)
    by_root, by_other, by_inter = (make_server_cert(ca, now) for ca in (root, other, inter))
    cases = [
        ((by_root.cert,), by_root.key, (root.cert,), 2),
        ((by_other.cert,), by_other.key, (root.cert,), 1),
        ((by_root.cert,), by_root.key, (), 1),
        ((by_inter.cert,), by_inter.key, (inter.cert,), 2),
        ((by_inter.cert,), by_inter.key, (root.cert,), 1),
        ((by_inter.cert, inter.cert), by_inter.key, (root.cert,), 2),
        ((by_inter.cert, inter.cert), by_inter.key, (other.cert,), 2),
    ]
    for chain, key, cas, length in cases:
        material = TLSMaterial(chain, key, cas)
        built = _served_chain(build_context(material))
        with monkeypatch.context() as m:
            m.setattr(tls_context, "_auto_chain", lambda material: None)  # OpenSSL's own, per handshake
            assert built == _served_chain(build_context(material)), (chain, cas)
        assert len(built) == length, built


def test_the_listener_leaves_out_a_self_signed_root(tmp_path):
    """
    What the listener (L{ServerTLS}) sends: OpenSSL's per-handshake chain
    without a self-signed root at its end (a client trusts only an anchor it
    holds); an intermediate device CA is still sent, a file's own chain as it is.
    """
    from izreg.service.tls import build_context
    from izreg.service.tls.context import without_anchor
    from izreg.service.tls.pem import TLSMaterial

    now = time.time()
    root = make_ca(now, common_name="root CA")
    inter = _intermediate_ca(root, now)
    by_root, by_inter = make_server_cert(root, now), make_server_cert(inter, now)
    cases = [
        ((by_root.cert,), by_root.key, (root.cert,), ["CN=localhost"]),
        ((by_inter.cert,), by_inter.key, (inter.cert,), ["CN=localhost", "CN=intermediate CA"]),
        ((by_inter.cert,), by_inter.key, (root.cert,), ["CN=localhost"]),
        ((by_inter.cert,), by_inter.key, (inter.cert, root.cert), ["CN=localhost", "CN=intermediate CA"]),
        ((by_root.cert, root.cert), by_root.key, (root.cert,), ["CN=localhost", root.cert.subject.rfc4514_string()]),
    ]
    for chain, key, cas, sent in cases:
        material = TLSMaterial(chain, key, cas)
        assert _served_chain(build_context(material, send_anchor=False)) == sent, (chain, cas)
    assert without_anchor((inter.cert,)) == (inter.cert,)
    assert without_anchor((inter.cert, root.cert)) == (inter.cert,)
    assert without_anchor(()) == ()
    # the listener's own context: its server certificate alone, issued by the (root) device CA
    certs = Certs(tmp_path)
    with open(certs.server_cert, "rb") as f:
        server = x509.load_pem_x509_certificate(f.read())
    assert server.issuer == certs.ca.cert.subject  # issued by the device CA, which is self-signed
    assert _served_chain(ServerTLS(certs.files())._context) == [server.subject.rfc4514_string()]


def _server_answer_to(groups: bytes, certs: Certs) -> str:
    """One ClientHello offering only the key-exchange C{groups} (OpenSSL names): what the server's context makes of it."""
    from OpenSSL import SSL
    from OpenSSL._util import lib

    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.set_verify(SSL.VERIFY_NONE)
    if lib.SSL_CTX_set1_curves_list(client_ctx._context, groups) != 1:
        return "unknown here"
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    server = SSL.Connection(ServerTLS(certs.files())._context, None)
    server.set_accept_state()
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    server.bio_write(client.bio_read(65536))
    try:
        server.do_handshake()
    except SSL.WantReadError:
        return "accepted"
    except SSL.Error as e:
        return str(e)
    return "accepted"


@pytest.mark.parametrize("groups", [b"ffdhe2048", b"ffdhe3072", b"ffdhe4096", b"ffdhe8192"])
def test_finite_field_key_exchange_is_refused(certs, groups):
    # A finite-field group costs the server 3-10 times an X25519 handshake (ffdhe3072: ~7 ms of a
    # handshake thread, against ~0.8 ms for P-256; ffdhe8192, which OpenSSL 3.0 offers by default,
    # far more), for one replayed ClientHello that costs its sender nothing: the TLS 1.2 suites are
    # ECDHE only already, so TLS 1.3 takes elliptic groups only too.
    answer = _server_answer_to(groups, certs)
    assert answer != "accepted"
    assert answer == "unknown here" or "no suitable key share" in answer or "no shared group" in answer, answer


@pytest.mark.parametrize("groups", [b"X25519", b"P-256", b"P-384"])
def test_elliptic_key_exchange_is_accepted(certs, groups):
    assert _server_answer_to(groups, certs) == "accepted"


def test_groups_unknown_to_this_openssl_fall_back_to_the_next_list(certs, monkeypatch):
    from izreg.service.tls import context

    monkeypatch.setattr(context, "GROUPS", (b"NoSuchGroup:X25519", b"P-256"))
    assert _server_answer_to(b"P-256", certs) == "accepted"
    assert _server_answer_to(b"X25519", certs) != "accepted"
    monkeypatch.setattr(context, "GROUPS", (b"NoSuchGroup",))
    with pytest.raises(Exception, match="knows none of the key-exchange groups NoSuchGroup"):
        ServerTLS(certs.files())


def _get_with_connection_close(port: int, certs: Certs) -> tuple[bytes, bool]:
    """(In a thread.) One GET with C{Connection: close} and the device certificate: what came, and whether TLS closed cleanly."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs.ca_path)
    ctx.check_hostname = False
    ctx.load_cert_chain(certs.device_cert, certs.device_key)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, suppress_ragged_eofs=False) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n")
            answer = b""
            try:
                while chunk := sock.recv(65536):  # b"" only after the server's close_notify
                    answer += chunk
            except ssl.SSLEOFError:
                return answer, False
    return answer, True


def _fin_mid_handshake(port: int) -> bytes:
    """(In a thread.) The start of a ClientHello, then a FIN: what the server sends before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00")  # a handshake record's header and the first bytes
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(100)


@pytest_twisted.ensureDeferred
async def test_a_fin_in_the_middle_of_a_handshake_closes_the_connection(server):
    port, _, _ = server
    assert await deferToThread(_fin_mid_handshake, port) == b""


@pytest_twisted.ensureDeferred
async def test_a_response_then_connection_close_ends_with_the_tls_close_alert(server, certs):
    # the last writes and the close alert leave together (FastTLSTransport.loseConnection): both arrive, in order
    port, _, _ = server
    for _ in range(3):
        answer, clean = await deferToThread(_get_with_connection_close, port, certs)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["device"] == [ACCOUNT, "gw-17"]
        assert clean  # the close_notify came after the whole response, not a bare TCP close


@needs_tools
@pytest_twisted.ensureDeferred
async def test_a_crl_revokes_a_certificate_already_seen_from_the_next_request(server, certs):
    import datetime

    from cryptography.hazmat.primitives import hashes

    port, tls, whoami = server
    crls: list = []
    whoami.verifier = DeviceVerifier(cas=tls.device_cas, crls=lambda: crls)
    status, body, _ = await curl(port, certs, certs.device_cert, certs.device_key)
    assert (status, body["device"]) == (200, [ACCOUNT, "gw-17"])  # parsed and checked: remembered now
    now = datetime.datetime.now(datetime.timezone.utc)
    crls.append(x509.CertificateRevocationListBuilder().issuer_name(certs.ca.cert.subject).last_update(now)
                .next_update(now + datetime.timedelta(days=1))
                .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                         .serial_number(certs.device.cert.serial_number).revocation_date(now).build())
                .sign(certs.ca.key, hashes.SHA256()))
    status, body, _ = await curl(port, certs, certs.device_cert, certs.device_key)
    assert (status, body["rejected"]) == (401, "revoked-crl")


def _handshake_in_memory(server_context, cert_path: str | None, key_path: str | None):
    """A full TLS handshake over memory BIOs; the server's pyOpenSSL connection."""
    from OpenSSL import SSL

    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if cert_path:
        client_context.use_certificate_file(cert_path)
        client_context.use_privatekey_file(key_path)
    server, client = SSL.Connection(server_context, None), SSL.Connection(client_context, None)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(5):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                while True:
                    b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    return server


def test_a_device_certificate_is_parsed_once_per_fingerprint_in_a_bounded_cache(certs, monkeypatch):
    from izreg.http import peercert

    monkeypatch.setattr(peercert, "_certificates", {})
    monkeypatch.setattr(peercert, "CACHED_CERTIFICATES", 2)
    context = ServerTLS(certs.files())._context
    first = peercert.verified_peer_certificate(_handshake_in_memory(context, certs.device_cert, certs.device_key))
    again = peercert.verified_peer_certificate(_handshake_in_memory(context, certs.device_cert, certs.device_key))
    assert first is again and first.subject.rfc4514_string() == f"CN=gw-17,OU={ACCOUNT}"
    other = peercert.verified_peer_certificate(_handshake_in_memory(context, certs.nameless_cert, certs.nameless_key))
    assert other is not first and other.serial_number != first.serial_number
    now = time.time()
    for i in range(3):
        extra = write_pair(certs.dir, f"extra{i}", make_device_cert(certs.ca, ACCOUNT, f"gw-{i}", now))
        assert peercert.verified_peer_certificate(_handshake_in_memory(context, *extra)) is not None
        assert len(peercert._certificates) <= 2
    assert peercert.verified_peer_certificate(_handshake_in_memory(context, None, None)) is None
