# -*- test-case-name: tests.auth.test_authenticator -*-
"""
From an ``Authorization`` header to a L{Principal}: the key and token
checks and the 401 challenge.

Accepted credentials, on every ``/v2`` route:

- ``Basic base64("KEY:<access key>")`` (``docker login -u KEY -p <key>``);
  any other username is refused with a message saying it must be ``KEY``;
- ``Bearer <access key>`` (raw keys stay valid as bearers, so a long push
  never fails on a token's expiry);
- ``Bearer <token>`` from the token endpoint (L{izreg.auth.tokenservice}),
  when it is enabled.

The header is read by L{izreg.auth.credentials}; a failure counts against
the failed-authentication brake (L{izreg.auth.failures}), which may answer
429 C{TOOMANYREQUESTS} with ``Retry-After`` instead.

A failure is a 401 C{UNAUTHORIZED} carrying a ``WWW-Authenticate``
challenge: ``Basic realm="izreg"``, or with the token service
``Bearer realm="<token url>",service="izreg",scope="repository:<name>:<actions>"``.
A request that sent ``Bearer`` (and the browse API, C{bearer=True}) is
never answered ``Basic``: it gets ``Bearer realm="izreg"``, with
``error="invalid_token"`` when its credential failed (RFC 6750). A
browser's ``fetch()`` answered ``Basic`` would wait for a login prompt.

Every check reads the key record, so a revoked key, and every token made
from it, fails on the next request, on every node. The read goes through
C{run_read} (L{izreg.auth.runners}): inline on LMDB (one read,
microseconds: L{Authenticator.authenticate} returns the principal), on a
thread pool on PostgreSQL (it returns a Deferred); the key record and the
token signing secret are read together, in one call. Nothing about a key's
validity is cached between requests.
C{last_used} is stamped at most once per C{last_used_interval} per key, in
memory (L{Authenticator.last_used}); the service writes the stamps in one
transaction on the writer thread every few seconds, never on the reactor.
Nothing here logs or reprs a secret: log lines name the key id at most.
"""

from __future__ import annotations

from typing import Callable, Sequence

from izreg.auth import keys, policy, tokens
from izreg.auth.credentials import _anonymous, _basic_key, _Failed, _parse_key, _sent_bearer, _split
from izreg.auth.failures import FailedAuthentications
from izreg.auth.interfaces import IAuthStore
from izreg.auth.policy import Action, Principal
from izreg.auth.runners import inline, then
from izreg.auth.store import KeyRecord
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository
from izreg.storage.batch import LatestBatch

DEFAULT_SERVICE = "izreg"


class Authenticator:
    """
    @param store: the accounts and keys.
    @param now: the clock (C{reactor.seconds} in the server; a fake in tests).
    @param token_service: whether the token endpoint is served; the 401
        challenge then points at it (C{Bearer}) instead of C{Basic}, and
        every call that may challenge takes the token endpoint's absolute
        URL for this request as C{realm}
        (C{"https://registry.example:5000/v2/token"}).
    @param failures: the failed-authentication brake (L{izreg.auth.failures}).
    @param signing_key: reads the token signing secret
        (L{izreg.auth.tokenkey.TokenKey.secret}: kept in the data dir);
        without one, a random secret for this process only.
    @param run_read: how the store and the signing key are read from the
        reactor (L{izreg.auth.runners}): inline by default (LMDB), a
        thread pool on PostgreSQL; then L{authenticate} (and the token
        endpoint's C{issue_token}) return Deferreds.
    """

    def __init__(
        self,
        store: IAuthStore,
        now: Callable[[], float],
        *,
        token_service: bool,  # Config.token_service: no default of its own
        service: str = DEFAULT_SERVICE,
        basic_realm: str = "izreg",
        failures: FailedAuthentications,
        last_used_interval: float = 60.0,
        signing_key: Callable[[], bytes] | None = None,
        run_read: Callable[..., object] = inline,
    ) -> None:
        self.store = store
        self.now = now
        self.token_service = token_service
        self.service = service
        self.basic_realm = basic_realm
        self.failures = failures
        self.last_used_interval = last_used_interval
        #: keys' last-used stamps, written by the service's timer on the writer thread
        self.last_used: LatestBatch[str] = LatestBatch(store.touch_keys)
        self.signers = tokens.Signers()
        self.signing_key = signing_key
        self.run_read = run_read

    def __repr__(self) -> str:
        return f"Authenticator(token_service={self.token_service!r})"

    # Challenges -----------------------------------------------------------------

    def challenge(self, *scopes: str, error: str | None = None, realm: str | None = None,
                  bearer: bool = False) -> str:
        """
        The ``WWW-Authenticate`` value for a 401.

        @param scopes: e.g. C{policy.repository_scope(name, [Action.PULL])} or
            C{policy.CATALOG_SCOPE}; used only with the token service.
        @param error: e.g. C{"insufficient_scope"}, C{"invalid_token"}.
        @param realm: the token URL for this request (required with the token service).
        @param bearer: challenge with C{Bearer} even without the token service.
        """
        if not self.token_service:
            if not bearer:
                return f'Basic realm="{self.basic_realm}"'
            return f'Bearer realm="{self.basic_realm}"' + (f',error="{error}"' if error else "")
        if not realm:
            raise ValueError("the token service's challenge needs the token endpoint's absolute URL")
        parts = [f'realm="{realm}"', f'service="{self.service}"']
        if scopes:
            parts.append(f'scope="{" ".join(scopes)}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    # The /v2 routes ------------------------------------------------------------------

    def authenticate(
        self,
        authorization: bytes | str | None,
        client_address: str,
        scopes: Sequence[str] = (),
        realm: str | None = None,
        bearer: bool = False,
        certificates: bool = False,
    ) -> Principal:
        """
        The caller of a request, from its ``Authorization`` header.

        @param scopes: what the request needs (see L{challenge}), to put in
            the challenge if it fails.
        @param bearer: challenge with C{Bearer}, never C{Basic} (the browse
            API); a request that sent C{Bearer} always gets C{Bearer}.
        @param certificates: a device's client certificate would do too (the
            TLS listener, with device CAs): said when nothing was sent.
        @return: the L{Principal}; with a threaded C{run_read}, a Deferred of it.
        @raise RegistryError: C{UNAUTHORIZED} with ``WWW-Authenticate``, or
            C{TOOMANYREQUESTS} with ``Retry-After`` (raised, or the Deferred fails with it).
        """
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")  # once, not in each step below
        sent_bearer = _sent_bearer(authorization)
        bearer = bearer or sent_bearer
        if not authorization or _anonymous(authorization):
            # no credentials (or Basic with an empty user and password, as
            # skopeo sends when it has none) is not a failed login: never counted
            raise self._unauthorized(NO_CREDENTIALS_TLS if certificates else None, scopes, realm, bearer)
        now = self.now()

        def refused(failed: _Failed) -> RegistryError:
            self.failures.failed(failed, client_address, now)
            return self._unauthorized(failed.reason, scopes, realm, bearer, "invalid_token" if sent_bearer else None)

        try:
            scheme, credential = _split(authorization)
            if scheme == "basic" or (scheme == "bearer" and not tokens.looks_like_token(credential)):
                key = _parse_key(_basic_key(credential) if scheme == "basic" else credential)
                facts = self.run_read(self.facts, key.key_id, False)
                return then(facts, checking(refused, lambda found: self._key_principal(key, found, now, client_address)))
            if scheme == "bearer":
                if not self.token_service:
                    raise _Failed("tokens are not accepted: the token service is off")
                facts = self.run_read(self.facts, tokens.claimed_key_id(credential), True)
                return then(facts, checking(refused, lambda found: self._token_principal(credential, found, now)))
            raise _Failed("unsupported authorization scheme; use Basic (username KEY) or Bearer")
        except _Failed as failed:
            raise refused(failed) from None

    def authorize(self, principal: Principal, repository: Repository, action: Action, realm: str | None = None) -> None:
        """
        L{policy.authorize}, with a challenge added when a token lacks a
        scope its key would allow (so the client fetches a wider token).

        Call it for every repository a request touches: for a cross-mount,
        C{PUSH} on the target and C{PULL} on the C{from} repository.
        """
        try:
            policy.authorize(principal, repository, action)
        except RegistryError as e:
            if e.code is ErrorCode.UNAUTHORIZED:
                e.headers["WWW-Authenticate"] = self.challenge(
                    _challenge_scope(repository, action), error="insufficient_scope", realm=realm
                )
            raise

    # The checks (the token endpoint's too) -------------------------------------------

    def facts(self, key_id: str | None, token: bool) -> tuple[KeyRecord | None, bytes | None]:
        """
        What a check reads, in one call (off the reactor on PostgreSQL): the
        key record, and for a token the current signing secret.
        """
        record = self.store.get_key(key_id) if key_id else None
        return record, (self.signing_key() if token and self.signing_key is not None else None)

    def _key_principal(self, key: keys.AccessKey, facts: tuple, now: float, address: str) -> Principal:
        record = self.live_record(key.key_id, facts[0], now, check=key, address=address)
        return Principal("key", record.account, record.key_id, record.read_only)

    def _token_principal(self, text: str, facts: tuple, now: float) -> Principal:
        try:
            claims = self.signer(facts[1]).verify(text, now)
        except tokens.InvalidToken as e:
            raise _Failed(f"invalid token: {e}") from None
        record = facts[0] if facts[0] is not None and facts[0].key_id == claims.key_id else None
        record = self.live_record(claims.key_id, record, now)
        if record.account != claims.account:
            raise _Failed("invalid token", claims.key_id, known=True)
        # read_only is the key's current state: a token cannot outlive a downgrade
        return Principal("token", record.account, record.key_id, record.read_only or claims.read_only, scopes=claims.scopes)

    def live_record(self, key_id: str, record: KeyRecord | None, now: float, check: keys.AccessKey | None = None,
                    address: str | None = None) -> KeyRecord:
        """
        The key record of a live key, checked: C{record} as read for this
        request (L{facts}), or C{None}; with C{address}, the key id's brake
        from there first; with C{check}, the key's secret. Stamps C{last_used}.

        @raise _Failed: the key is unknown, wrong or revoked.
        """
        if record is None:
            raise _Failed("invalid access key", key_id)
        if address is not None:
            # the brake of this key id from this address, before its secret is checked
            self.failures.check(address, key_id, now)
        if check is not None and not keys.verify(check, record.secret_hash):
            raise _Failed("invalid access key", key_id, known=True)
        if not record.active:
            raise _Failed("this access key has been revoked", key_id, known=True)
        last = max(record.last_used or float("-inf"), self.last_used.get(key_id) or float("-inf"))
        if now - last >= self.last_used_interval:
            self.last_used.put(key_id, now)
        return record

    def signer(self, secret: bytes | None = None) -> tokens.Signer:
        """The signer of C{secret} (the signing key as read for this request, L{facts}), or of this process's own."""
        if secret is None and self.signing_key is not None:
            secret = self.signing_key()  # tests only: requests pass the secret read off the reactor
        return self.signers.get(secret)

    def _unauthorized(self, reason: str | None, scopes: Sequence[str], realm: str | None,
                      bearer: bool = False, error: str | None = None) -> RegistryError:
        return RegistryError(
            ErrorCode.UNAUTHORIZED,
            None,
            reason or NO_CREDENTIALS,
            headers={"WWW-Authenticate": self.challenge(*scopes, error=error, realm=realm, bearer=bearer)},
        )


#: the refusal of a request that sent no credentials; on the TLS listener a device's certificate would do too.
#: It names the host: "docker login -u KEY" alone logs in to Docker Hub, and sends it the access key
NO_CREDENTIALS = "authentication required: docker login <registry host> -u KEY -p <access key>"
NO_CREDENTIALS_TLS = NO_CREDENTIALS + ", or a device presents its client certificate"


def checking(refused: Callable[[_Failed], RegistryError], step: Callable[[tuple], object]) -> Callable[[tuple], object]:
    """C{step} as a callback: a L{_Failed} it raises becomes the request's refusal."""
    def checked(facts: tuple) -> object:
        try:
            return step(facts)
        except _Failed as failed:
            raise refused(failed) from None
    return checked


def _challenge_scope(repository: Repository, action: Action) -> str:
    """The scope to ask for: a push also needs pull (as Docker asks ``pull,push``)."""
    actions = [Action.PULL, Action.PUSH] if action is Action.PUSH else [action]
    return policy.repository_scope(repository.name, actions)
