# -*- test-case-name: tests.auth.test_authenticator -*-
"""
The Docker token endpoint (``[auth] token_service = true``): an access key
in, a signed bearer token (L{izreg.auth.tokens}) out.

- GET: credentials in ``Authorization: Basic`` (username C{KEY});
  query ``service``, ``scope`` (repeatable), ``account``, ... .
- POST (OAuth2 password grant, as oras/helm send): form
  ``grant_type=password&username=KEY&password=<key>&scope=...``.
  ``grant_type=refresh_token`` is refused: izreg issues no refresh tokens
  (Docker would then drop the password for one).

The key is checked by the L{Authenticator} (the same read, brake, secret
and revocation check as on every ``/v2`` route); a failure counts against
the same brake (L{izreg.auth.failures}) and is answered ``Basic``. The
token is signed with the secret read together with the key record, through
the authenticator's C{run_read}: inline on LMDB, off the reactor on
PostgreSQL (then L{TokenService.issue_token} returns a Deferred).
"""

from __future__ import annotations

import base64
import datetime
from typing import Mapping, Sequence

from twisted.logger import Logger

from izreg.auth import keys, policy, tokens
from izreg.auth.authenticator import Authenticator, checking
from izreg.auth.credentials import _basic_key, _Failed, _parse_key, _split
from izreg.auth.runners import then
from izreg.core.errors import ErrorCode, RegistryError

Params = Mapping[bytes, Sequence[bytes]] | Mapping[str, Sequence[str]]


class TokenService:
    """
    @param authenticator: checks the key, reads the signing secret, holds the signer.
    @param token_ttl: seconds a token lives (C{auth.token_ttl}).
    """

    log = Logger()

    def __init__(self, authenticator: Authenticator, token_ttl: int) -> None:
        self.authenticator = authenticator
        self.token_ttl = token_ttl

    def __repr__(self) -> str:
        return f"TokenService(token_ttl={self.token_ttl!r})"

    def issue_token(
        self,
        method: str | bytes,
        authorization: bytes | str | None,
        params: Params,
        client_address: str,
    ) -> dict[str, object]:
        """
        Answer a token request (GET or POST on the token endpoint).

        @param params: the query and form parameters (Twisted's
            C{request.args}: bytes keys, lists of bytes).
        @return: the JSON body: C{token} and C{access_token} (equal),
            C{expires_in}, C{issued_at}; never a C{refresh_token}. With a
            threaded C{run_read}, a Deferred of it.
        @raise RegistryError: C{UNAUTHORIZED} with a C{Basic} challenge,
            C{TOOMANYREQUESTS}, or C{NOT_FOUND} when the service is off.
        """
        auth = self.authenticator
        if not auth.token_service:
            raise RegistryError(ErrorCode.NOT_FOUND, None, "the token service is not enabled")
        method = method.decode("ascii") if isinstance(method, bytes) else method
        args = _text_params(params)
        basic = f'Basic realm="{auth.basic_realm}"'
        grant_type = _first(args, "grant_type")
        if method.upper() == "POST" and grant_type is not None:
            if grant_type != "password":
                raise RegistryError(
                    ErrorCode.UNAUTHORIZED,
                    {"grant_type": grant_type[:50]},
                    "unsupported grant_type: izreg issues no refresh tokens; use grant_type=password",
                    headers={"WWW-Authenticate": basic},
                )
            username, password = _first(args, "username"), _first(args, "password")
            if password is not None:
                authorization = "basic " + base64.b64encode(f"{username or ''}:{password}".encode()).decode("ascii")
        if not authorization:
            raise RegistryError(ErrorCode.UNAUTHORIZED, None, "credentials required", headers={"WWW-Authenticate": basic})
        now = auth.now()

        def refused(failed: _Failed) -> RegistryError:
            auth.failures.failed(failed, client_address, now)
            return RegistryError(ErrorCode.UNAUTHORIZED, None, failed.reason, headers={"WWW-Authenticate": basic})

        try:
            scheme, credential = _split(authorization)
            if scheme != "basic":
                raise _Failed("the token endpoint takes Basic credentials: username KEY, password an access key")
            key = _parse_key(_basic_key(credential))
        except _Failed as failed:
            raise refused(failed) from None
        facts = auth.run_read(auth.facts, key.key_id, True)
        return then(facts, checking(refused, lambda found: self._issue(key, found, now, client_address, args)))

    def _issue(self, key: keys.AccessKey, facts: tuple, now: float, client_address: str,
               args: Mapping[str, Sequence[str]]) -> dict[str, object]:
        record = self.authenticator.live_record(key.key_id, facts[0], now, check=key, address=client_address)
        granted = policy.grant(policy.parse_scopes(args.get("scope", [])), record.account, record.read_only)
        claims = tokens.TokenClaims(record.key_id, record.account, record.read_only, granted, now, now + self.token_ttl)
        token = self.authenticator.signer(facts[1]).sign(claims)
        self.log.info(
            "issued a token for key {key_id} ({scopes}) to {address}",
            key_id=record.key_id,
            scopes=" ".join(str(s) for s in granted) or "no scope",
            address=client_address,
        )
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.token_ttl,
            "issued_at": _rfc3339(now),
        }


def _text_params(params: Params) -> dict[str, list[str]]:
    def text(v: bytes | str) -> str:
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else v

    return {text(k): [text(v) for v in vs] for k, vs in params.items()}


def _first(args: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = args.get(name)
    return values[0] if values else None


def _rfc3339(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
