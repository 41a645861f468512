# -*- test-case-name: tests.auth.test_tokens -*-
"""
Bearer tokens from the token endpoint: self-contained, HMAC-SHA256 signed (pure).

A token is ``izt_<payload>.<signature>``, both unpadded urlsafe base64;
the payload is compact JSON::

    {"k": key id, "a": account, "r": read-only, "s": [granted scopes], "i": issued at, "e": expires}

It is verified without storage, by the signature and the expiry. The
authenticator still reads the key record named by ``k`` on every use, so
revoking the key ends its tokens at once. The signing secret lives in the
data directory (L{izreg.auth.tokenkey}, mode 0600), so tokens survive a
restart; ``izreg token rotate-key`` replaces it and every older token fails
(clients fetch a new one on the 401 challenge).

Clients treat tokens as opaque; this is not a JWT and need not be one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field

from izreg.auth.policy import Scope, parse_scope

PREFIX = "izt_"
_CONTEXT = b"izreg token v1\x00"


class InvalidToken(ValueError):
    """Bad signature, malformed or expired. The message never contains the token."""


@dataclass(frozen=True)
class TokenClaims:
    key_id: str
    account: str
    read_only: bool
    scopes: tuple[Scope, ...]
    issued_at: float
    expires: float


@dataclass(frozen=True)
class Signer:
    """Signs and verifies tokens with one secret. Its repr hides the secret."""

    secret: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "Signer(secret=<hidden>)"

    def sign(self, claims: TokenClaims) -> str:
        payload = {
            "k": claims.key_id,
            "a": claims.account,
            "r": claims.read_only,
            "s": [str(s) for s in claims.scopes],
            "i": int(claims.issued_at),
            "e": int(claims.expires),
        }
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{PREFIX}{body}.{_b64(self._mac(body))}"

    def verify(self, token: str, now: float) -> TokenClaims:
        """
        The claims of a valid, unexpired token.

        @raise InvalidToken: otherwise.
        """
        if not token.startswith(PREFIX) or token.count(".") != 1:
            raise InvalidToken("malformed token")
        body, _, mac = token[len(PREFIX):].partition(".")
        try:
            given = _unb64(mac)
        except (binascii.Error, ValueError):
            raise InvalidToken("malformed token") from None
        if not hmac.compare_digest(given, self._mac(body)):
            raise InvalidToken("bad token signature")
        try:
            payload = json.loads(_unb64(body))
            scopes = tuple(s for s in (parse_scope(t) for t in payload["s"]) if s is not None)
            claims = TokenClaims(
                key_id=str(payload["k"]),
                account=str(payload["a"]),
                read_only=bool(payload["r"]),
                scopes=scopes,
                issued_at=float(payload["i"]),
                expires=float(payload["e"]),
            )
        except (ValueError, KeyError, TypeError, RecursionError):
            raise InvalidToken("malformed token") from None
        if now >= claims.expires:
            raise InvalidToken("token expired")
        return claims

    def _mac(self, body: str) -> bytes:
        return hmac.new(self.secret, _CONTEXT + body.encode("utf-8"), hashlib.sha256).digest()


class Signers:
    """
    The signer of the current signing secret, shared by the token endpoint
    (L{izreg.auth.tokenservice}) and the token check (L{izreg.auth.authenticator}):
    one L{Signer} kept while the secret is unchanged, a new one once it is
    rotated; without a secret, one random secret for this process only.
    """

    def __init__(self) -> None:
        self._signer: Signer | None = None

    def __repr__(self) -> str:
        return "Signers(<hidden>)"

    def get(self, secret: bytes | None) -> Signer:
        """The signer of C{secret} (as read for this request), or of this process's own."""
        if secret is not None:
            if self._signer is None or self._signer.secret != secret:  # rotated: a new signer
                self._signer = Signer(secret)
        elif self._signer is None:
            self._signer = Signer(secrets.token_bytes(32))
        return self._signer


def looks_like_token(text: str) -> bool:
    return text.startswith(PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict: a character outside the urlsafe alphabet is an error, not skipped."""
    data = (text + "=" * (-len(text) % 4)).encode("ascii")  # non-ascii: UnicodeEncodeError, a ValueError
    return base64.b64decode(data, altchars=b"-_", validate=True)


def claimed_key_id(token: str) -> str | None:
    """
    The key id a token I{claims}, before its signature is checked (so the
    key record and the signing secret are read together, in one hop off the
    reactor); C{None} if it names none. Trust nothing else of it unverified.
    """
    try:
        body = token[len(PREFIX):].partition(".")[0]
        key_id = json.loads(_unb64(body)).get("k")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested too deeply for json
        return None
    return key_id if isinstance(key_id, str) else None
