# -*- test-case-name: tests.edge.test_unreachable -*-
"""
Why the registry could not be reached, in one sentence a person can act on
(the 503 an uncached pull gets, ``/healthz``'s ``upstream_unreachable``).

The raw error (``[('SSL routines', '', 'certificate verify failed')]``) says
what OpenSSL saw, not what to fix; it goes to the edge's log only. The
common failures are named: the registry's certificate not signed by the CA
in ``--upstream-ca``, expired or not yet valid, not for the host of
``--upstream``; the registry refusing the gateway's own certificate; the
connection refused, timed out, or the host name unknown.

OpenSSL only says "certificate verify failed"; which check failed is read
here from the certificates the registry presented on the connection that
failed (L{explain}'s C{presented}, kept by
L{izreg.edge.upstream.MutualTLSPolicy} also after a failed handshake).

L{refused}: the sentence of a registry that answers, but refuses the
gateway (401: its device certificate revoked, its account deleted).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from cryptography import x509
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error

#: TLS alerts by which a registry refuses the gateway's own certificate (OpenSSL's reason texts end so)
_DEVICE_ALERTS = ("alert unknown ca", "alert bad certificate", "alert certificate required",
                  "alert certificate expired", "alert certificate revoked", "alert certificate unknown",
                  "alert access denied", "alert unsupported certificate")


@dataclass(frozen=True)
class Setting:
    """What the edge was told about the registry (its options), for the sentences."""

    url: str  # --upstream
    upstream_ca: str | None  # --upstream-ca (None: the system's trust store)
    device_cert: str  # --device-cert
    connect_timeout: float


def explain(failure: Exception, setting: Setting,
            presented: Callable[[BaseException], Sequence[x509.Certificate]], now: datetime.datetime) -> str:
    """
    One sentence for C{failure} (an Agent's error, possibly wrapping others).

    @param presented: for one cause (a TLS error), the certificates the
        registry presented on the connection it ended (leaf first), or none.
    @param now: timezone-aware UTC.
    """
    for cause in _causes(failure):
        sentence = _sentence(cause, setting, presented(cause), now)
        if sentence is not None:
            return sentence
    return "the registry could not be reached (the edge's log says why)"


def _causes(failure: BaseException) -> Iterator[BaseException]:
    reasons = getattr(failure, "reasons", None)  # ResponseNeverReceived, ResponseFailed: Failures inside
    if reasons:
        for reason in reasons:
            yield from _causes(reason.value)
    else:
        yield failure


def _sentence(cause: BaseException, setting: Setting, chain: Sequence[x509.Certificate],
              now: datetime.datetime) -> str | None:
    if isinstance(cause, VerificationError):
        names = _names(chain[0]) if chain else ""
        return (f"the registry's certificate is not for the host of --upstream ({setting.url})"
                + (f"; it names {names}" if names else ""))
    if isinstance(cause, SSL.Error):
        text = str(cause)
        if "certificate verify failed" in text:
            return _unverified(setting, chain, now)
        if "wrong version number" in text:  # the answer to its ClientHello was no TLS: the plain port, say
            return (f"the registry does not speak TLS at {setting.url} (its plain-HTTP port?): --upstream names"
                    " its TLS listener (--tls-listen, [tls] listen)")
        alert = next((a for a in _DEVICE_ALERTS if a in text), None)
        if alert is not None:
            return (f"the registry refused this gateway's device certificate (--device-cert {setting.device_cert}):"
                    f" TLS {alert}")
        return None
    if isinstance(cause, error.ConnectionRefusedError):
        return f"the registry refused the connection: nothing listens at {setting.url}"
    if isinstance(cause, error.TimeoutError):
        return f"the registry did not accept a connection within {setting.connect_timeout:g} s ({setting.url})"
    if isinstance(cause, error.DNSLookupError):
        return f"the host name of --upstream ({setting.url}) does not resolve"
    return None


def refused(body: bytes, setting: Setting) -> str:
    """
    The sentence of a 401 from the registry (C{body}: its answer, maybe empty): it refuses the gateway's
    device certificate. The registry's message (C{errors[0].message}) is quoted, escaped and cut like a
    certificate's name: it comes from outside and goes into the log and /healthz.
    """
    sentence = f"the registry refused this gateway's device certificate (--device-cert {setting.device_cert}): HTTP 401"
    try:
        message = json.loads(body)["errors"][0]["message"]
    except (ValueError, LookupError, TypeError):
        return sentence
    return sentence + (f' "{_shown(message)}"' if isinstance(message, str) and message else "")


def _unverified(setting: Setting, chain: Sequence[x509.Certificate], now: datetime.datetime) -> str:
    for depth, cert in enumerate(chain):
        whose = "the registry's certificate" if depth == 0 else f"the CA certificate {_cn(cert)!r} of its chain"
        if cert.not_valid_after_utc < now:
            return f"{whose} expired on {_when(cert.not_valid_after_utc)}"
        if cert.not_valid_before_utc > now:
            return (f"{whose} is valid only from {_when(cert.not_valid_before_utc)}"
                    " (is this gateway's clock right?)")
    if setting.upstream_ca:
        return f"the registry's certificate is not signed by the CA in --upstream-ca ({setting.upstream_ca})"
    return ("the registry's certificate is not signed by a CA this system trusts"
            " (give the registry's CA with --upstream-ca)")


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _names(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    return ", ".join(map(_shown, names[:8]))


#: the most characters of one name the sentence shows
NAME_LIMIT = 100


def _shown(name: str) -> str:
    """
    A name of a certificate as the sentence shows it: what a registry presents is not checked yet (an
    IA5String may hold control characters: a newline, a terminal's escape), and it goes into the log and
    the 503; any character not printable is escaped as repr() does, and a long name is cut.
    """
    if not name.isprintable():
        name = repr(name)[1:-1]
    return name if len(name) <= NAME_LIMIT else name[:NAME_LIMIT] + "..."
