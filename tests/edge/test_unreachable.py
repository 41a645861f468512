"""
The sentence an uncached pull's 503 and /healthz give when the registry
cannot be reached (izreg.edge.unreachable), from the errors Twisted's Agent
raises and the certificates the registry presented. tests/edge/test_edge_e2e.py
sees them from a real edge before a real registry.
"""

from __future__ import annotations

import datetime
import time

import pytest
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet import error
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

from izreg import devcerts
from izreg.edge import unreachable
from izreg.edge.unreachable import Setting

pytestmark = pytest.mark.fast

SETTING = Setting("https://registry.example:5443", "/etc/izreg-edge/ca.crt", "/etc/izreg-edge/client.cert", 3)
NOW = time.time()
UTC_NOW = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
VERIFY_FAILED = SSL.Error([("SSL routines", "", "certificate verify failed")])


def explain(failure: Exception, setting: Setting, presented, now: datetime.datetime) -> str:
    """The sentence, with C{presented} the certificates of the connection every cause ended."""
    return unreachable.explain(failure, setting, lambda cause: presented, now)


def never(*errors: Exception) -> ResponseNeverReceived:
    """What the Agent raises when the TLS handshake (or the connection) fails before an answer."""
    failures = []
    for e in errors:
        try:
            raise e
        except Exception:
            failures.append(Failure())
    return ResponseNeverReceived(failures)


def chain(start: float, days: float = 30, ca_days: float = 150, names=devcerts.SERVER_NAMES):
    ca = devcerts.make_ca(start, days=ca_days)
    return [devcerts.make_server_cert(ca, start, names, days).cert, ca.cert]


def test_a_certificate_of_another_ca_names_the_upstream_ca_file():
    assert explain(never(VERIFY_FAILED), SETTING, chain(NOW), UTC_NOW) == (
        "the registry's certificate is not signed by the CA in --upstream-ca (/etc/izreg-edge/ca.crt)")
    system = Setting(SETTING.url, None, SETTING.device_cert, 3)
    assert explain(never(VERIFY_FAILED), system, chain(NOW), UTC_NOW) == (
        "the registry's certificate is not signed by a CA this system trusts"
        " (give the registry's CA with --upstream-ca)")
    # what the registry presented is unknown (the handshake of another connection): the CA still
    assert "not signed by the CA in --upstream-ca" in explain(never(VERIFY_FAILED), SETTING, [], UTC_NOW)


def test_an_expired_certificate_says_when():
    presented = chain(NOW - 40 * 86400)  # 30 days from 40 days ago
    expired = presented[0].not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    assert explain(never(VERIFY_FAILED), SETTING, presented, UTC_NOW) == (
        f"the registry's certificate expired on {expired}")
    old_ca = chain(NOW - 200 * 86400, days=300, ca_days=150)  # the leaf is valid, its CA is not
    assert explain(never(VERIFY_FAILED), SETTING, old_ca, UTC_NOW).startswith(
        "the CA certificate 'izreg development CA' of its chain expired on ")


def test_a_certificate_from_the_future_asks_about_the_clock():
    presented = chain(NOW + 5 * 86400)
    sentence = explain(never(VERIFY_FAILED), SETTING, presented, UTC_NOW)
    assert sentence.startswith("the registry's certificate is valid only from ")
    assert sentence.endswith("(is this gateway's clock right?)")


def test_a_certificate_for_another_host_names_what_it_is_for():
    mismatch = VerificationError([DNSMismatch(mismatched_id=DNS_ID("registry.example"))])
    assert explain(never(mismatch), SETTING, chain(NOW, names=("other.example", "10.0.0.7")), UTC_NOW) == (
        "the registry's certificate is not for the host of --upstream (https://registry.example:5443);"
        " it names other.example, 10.0.0.7")


@pytest.mark.parametrize("alert", ["tlsv1 alert unknown ca", "sslv3 alert bad certificate",
                                   "tlsv13 alert certificate required", "sslv3 alert certificate revoked"])
def test_the_registry_refusing_the_device_certificate(alert):
    refused = SSL.Error([("SSL routines", "", alert)])
    assert explain(never(refused), SETTING, [], UTC_NOW) == (
        "the registry refused this gateway's device certificate (--device-cert /etc/izreg-edge/client.cert):"
        f" TLS {alert.split(' ', 1)[1]}")


@pytest.mark.parametrize("failure, sentence", [
    (error.ConnectionRefusedError("111: Connection refused."),
     "the registry refused the connection: nothing listens at https://registry.example:5443"),
    (error.TimeoutError(), "the registry did not accept a connection within 3 s (https://registry.example:5443)"),
    (error.DNSLookupError("registry.example"),
     "the host name of --upstream (https://registry.example:5443) does not resolve"),
    (never(error.ConnectionLost()), "the registry could not be reached (the edge's log says why)"),
    (never(SSL.Error([("SSL routines", "", "packet length too long")])),
     "the registry could not be reached (the edge's log says why)"),
    # --upstream https://HOST:5000, the registry's plain port (a newcomer's slip): its answer is no TLS
    (never(SSL.Error([("SSL routines", "", "wrong version number")])),
     "the registry does not speak TLS at https://registry.example:5443 (its plain-HTTP port?): --upstream names"
     " its TLS listener (--tls-listen, [tls] listen)"),
])
def test_the_other_failures(failure, sentence):
    assert explain(failure, SETTING, [], UTC_NOW) == sentence


def test_no_raw_openssl_text_reaches_the_sentence():
    for failure in (never(VERIFY_FAILED), never(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]))):
        assert "SSL routines" not in explain(failure, SETTING, chain(NOW), UTC_NOW)


def test_the_names_of_a_certificate_are_shown_printable_and_short():
    """
    The names come from a certificate not checked yet (an IA5String may hold a newline or a terminal's
    escape): the sentence goes into the log and the 503, so they are escaped, each cut at NAME_LIMIT.
    """
    from izreg.edge.unreachable import NAME_LIMIT

    names = ["registry.example\n2026-12-02 [izreg.access#info] forged\x1b[2J", "x" * 3000, "127.0.0.1"]
    sentence = explain(never(VerificationError(errors=[])), SETTING, chain(NOW, names=names), UTC_NOW)
    assert sentence.isprintable() and "\x1b" not in sentence and len(sentence) < 400
    assert sentence.endswith(
        "; it names registry.example\\n2026-12-02 [izreg.access#info] forged\\x1b[2J, "
        + "x" * NAME_LIMIT + "..., 127.0.0.1")


def test_each_tls_failure_is_explained_with_the_certificates_of_its_own_connection():
    """
    Two connections failed (one certificate expired, one for another host): each cause gets the chain of
    the connection it ended (tests/edge/test_presented.py has it from real connections).
    """
    expired_error, misnamed_error = SSL.Error([("SSL routines", "", "certificate verify failed")]), VerificationError(errors=[])
    chains = {id(expired_error): chain(NOW - 40 * 86400), id(misnamed_error): chain(NOW, names=("other.example",))}
    sentence = unreachable.explain(never(misnamed_error, expired_error), SETTING, lambda cause: chains[id(cause)], UTC_NOW)
    assert sentence == f"the registry's certificate is not for the host of --upstream ({SETTING.url}); it names other.example"
    sentence = unreachable.explain(never(expired_error), SETTING, lambda cause: chains[id(cause)], UTC_NOW)
    assert sentence.startswith("the registry's certificate expired on "), sentence


@pytest.mark.parametrize("body, said", [
    (b'{"errors": [{"code": "UNAUTHORIZED", "message": "device certificate rejected: the certificate has been revoked",'
     b' "detail": {"reason": "revoked-serial"}}]}',
     ' "device certificate rejected: the certificate has been revoked"'),
    (b"", ""),  # a HEAD's 401
    (b"<html>401</html>", ""),
    (b'{"errors": []}', ""),
    (b'{"errors": [{"message": 7}]}', ""),
    # the registry's words are not trusted: escaped and cut like a certificate's name
    (('{"errors": [{"message": "no\\n[izreg#info] forged \\u001b[2J' + "x" * 300 + '"}]}').encode(),
     ' "no\\n[izreg#info] forged \\x1b[2J' + "x" * (unreachable.NAME_LIMIT - 31) + '..."'),
])
def test_a_401_says_the_registry_refused_the_gateway(body, said):
    assert unreachable.refused(body, SETTING) == (
        "the registry refused this gateway's device certificate (--device-cert /etc/izreg-edge/client.cert): HTTP 401"
        + said)
