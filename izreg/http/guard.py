# -*- test-case-name: tests.http.test_auth_matrix -*-
"""
Who is calling, and may they do this: the one check every route makes.

Credentials, in order:

1. an ``Authorization`` header (an access key as Basic ``KEY:<key>`` or
   Bearer, or a token from the token endpoint), checked by the
   L{Authenticator};
2. else, on the TLS listener, a device's client certificate, checked by the
   L{DeviceVerifier}: a device may only pull from its own account;
3. else 401 with a challenge.

The outcome of authentication is kept on the request, so the early check
made when an upload body starts (L{izreg.http.bodies}) and the handler's
check count one failure, not two, against the client's failure budget.

Stores are read through C{run_read} (L{izreg.auth.runners}): inline on
LMDB, where every method here answers at once as before; on a shared
database (PostgreSQL) on a thread pool, and then L{AccessGuard.principal},
L{AccessGuard.check} and L{AccessGuard.authorize} return a Deferred (one
authentication per request: a second caller waits for the first). The key
record and a device's revocations are read on every request, so a
revocation made on one node is refused by every node at the next request.
"""

from __future__ import annotations

import re
from typing import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from izreg.auth import policy
from izreg.auth.authenticator import Authenticator
from izreg.auth.devices import DeviceRejected, DeviceVerifier
from izreg.http.refusals import RefusalLog
from izreg.auth.policy import Action, Principal
from izreg.auth.runners import inline, then
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository
from izreg.http.clientaddr import client_address, forwarded_scheme
from izreg.http.routing import Access
from izreg.http.peercert import peer_certificate

_CACHE = "_izreg_principal"


def _client_address(request) -> str:
    return client_address(request)


_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?", re.ASCII)


def token_realm(request) -> str:
    """
    The token endpoint's absolute URL, on the host and scheme the client used
    (behind a trusted proxy that ends TLS, the scheme its C{X-Forwarded-Proto}
    names). A ``Host`` that is not a plain host[:port] is not echoed into the
    challenge; the listening address stands in for it.
    """
    host = (request.getHeader(b"host") or b"").decode("latin-1")
    if not _HOST.fullmatch(host):
        local = request.getHost()
        host = f"{getattr(local, 'host', 'localhost')}:{getattr(local, 'port', '')}".rstrip(":")
    scheme = "https" if request.isSecure() else forwarded_scheme(request) or "http"
    return f"{scheme}://{host}/v2/token"


class AccessGuard:
    log = Logger()

    def __init__(self, authenticator: Authenticator, devices: DeviceVerifier | None, now: Callable[[], float],
                 run_read: Callable[..., object] = inline,
                 on_device: Callable[[object, str, str], None] | None = None, realm: str | None = None) -> None:
        self.authenticator = authenticator
        #: the token endpoint's URL as configured (C{[auth] token_realm}); None: from the request (L{token_realm})
        self.realm = realm
        self.devices = devices
        self.now = now
        self.run_read = run_read
        #: called with the request's transport, the device's account and its device id when a request
        #: authenticated as a device (its certificate not revoked, its account there): the TLS handshake
        #: admission's known groups (L{izreg.service.tls.admission.HandshakeAdmission.device_request}: one
        #: device counts a few of them), or C{None}
        self.on_device = on_device
        #: refused device certificates: the first few per reason and minute in full, then a count
        #: (the metrics read its total)
        self.refusals = RefusalLog(self.log, "device certificates")

    def _realm(self, request) -> str | None:
        if not self.authenticator.token_service:
            return None
        return self.realm or token_realm(request)

    def principal(self, request, scopes: tuple[str, ...] = ()) -> Principal | Deferred:
        """The request's caller (authenticated once per request); a Deferred of it while the store is read."""
        cached = getattr(request, _CACHE, None)
        if isinstance(cached, RegistryError):
            raise cached
        if isinstance(cached, _Pending):
            return cached.wait()
        if cached is not None:
            return cached
        try:
            principal = self._authenticate(request, scopes)
        except RegistryError as e:
            setattr(request, _CACHE, e)
            raise
        if isinstance(principal, Deferred):
            pending = _Pending(request, principal)
            setattr(request, _CACHE, pending)
            return pending.wait()
        setattr(request, _CACHE, principal)
        return principal

    def _authenticate(self, request, scopes: tuple[str, ...]) -> Principal | Deferred:
        header = request.getHeader(b"authorization")
        if not header and self.devices is not None:
            cert = peer_certificate(getattr(request, "transport", None))
            if cert is not None:
                return self._device(request, cert)
        return self.authenticator.authenticate(header, _client_address(request), scopes, self._realm(request),
                                               bearer=_browse_api(request),
                                               certificates=not header and self.devices is not None and request.isSecure())

    def _device(self, request, cert) -> Principal | Deferred:
        verifier = self.devices

        def refused(e: DeviceRejected) -> None:
            self.refusals.warn("refused device certificate from {address}: {reason}",
                          address=_client_address(request), reason=e.reason)

        def principal(facts) -> Principal:
            revoked, account = facts
            try:
                identity = verifier.unrevoked(found, issuer, revoked)
                if account is None:  # deleted: its devices go with it, as its keys do
                    raise DeviceRejected("unknown-account", "its account does not exist", account=found.account)
            except DeviceRejected as e:
                refused(e)
                raise
            if self.on_device is not None:
                self.on_device(getattr(request, "transport", None), identity.account, identity.device_id)
            return Principal("device", identity.account, read_only=True, device_id=identity.device_id)

        def facts():
            return (verifier.revoked(found.serial_hex, found.fingerprint_sha256),
                    self.authenticator.store.get_account(found.account))

        try:
            found, issuer = verifier.identify(cert, self.now())
        except DeviceRejected as e:
            refused(e)
            raise
        # read on every request (never cached): a revocation, or the account's deletion, on any node holds
        # from the next one
        return then(self.run_read(facts), principal)

    def check(self, request, repository: Repository | None, action: Action) -> Principal | Deferred:
        """Authenticate, then authorize C{action} on C{repository} (C{None}: just authenticate)."""
        scopes = (f"repository:{repository.name}:{_SCOPE_ACTIONS[action]}",) if repository else ()

        def authorized(principal: Principal) -> Principal:
            if repository is not None:
                self.authenticator.authorize(principal, repository, action, self._realm(request))
            return principal

        return then(self.principal(request, scopes), authorized)

    def authorize(self, request, access: Access, repository: Repository | None) -> Principal | Deferred | None:
        """
        The one authorization of a route, from its declared access
        (L{izreg.http.routing}); the principal, or C{None} for a route open to anyone.
        """
        if access in (Access.PUBLIC, Access.TOKEN):
            return None
        if access is Access.CATALOG:
            return then(self.catalog_account(request), lambda account: self.principal(request, (policy.CATALOG_SCOPE,)))
        return self.check(request, repository, Action(access.value))

    def catalog_account(self, request) -> str | Deferred:
        return then(self.principal(request, (policy.CATALOG_SCOPE,)), lambda p: self._catalog_account(request, p))

    def _catalog_account(self, request, principal: Principal) -> str:
        if principal.kind == "device":
            raise RegistryError(ErrorCode.DENIED, None, "devices may not list the catalog")
        try:
            return policy.authorize_catalog(principal)
        except RegistryError as e:
            if e.code is ErrorCode.UNAUTHORIZED:
                e.headers["WWW-Authenticate"] = self.authenticator.challenge(
                    policy.CATALOG_SCOPE, error="insufficient_scope", realm=self._realm(request))
            raise


class _Pending:
    """An authentication in flight: every caller waits for the one read; then the outcome is kept on the request."""

    def __init__(self, request, d: Deferred) -> None:
        self.request = request
        self.waiters: list[Deferred] = []
        d.addBoth(self._known)

    def wait(self) -> Deferred:
        d: Deferred = Deferred()
        self.waiters.append(d)
        return d

    def _known(self, result) -> None:
        failed = isinstance(result, Failure)
        if failed and not result.check(RegistryError):
            setattr(self.request, _CACHE, None)  # the store failed: the next check tries again
        else:
            setattr(self.request, _CACHE, result.value if failed else result)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            (d.errback if failed else d.callback)(result)


def _browse_api(request) -> bool:
    """``/v2/_izreg/...`` and ``/v2/<name>/_izreg/...``: called by the browse page, so never challenged Basic."""
    return b"/_izreg/" in (getattr(request, "path", None) or b"")


def _scope_actions(action: Action) -> list[Action]:
    return [Action.PULL, Action.PUSH] if action is Action.PUSH else [action]


#: the actions part of each action's scope (L{policy.repository_scope}'s), made once, not on every request
_SCOPE_ACTIONS = {action: policy.format_actions(_scope_actions(action)) for action in Action}
