# -*- test-case-name: tests.auth.test_authenticator -*-
"""
Reading an ``Authorization`` header: its scheme and credential, Basic
``KEY:<access key>``, a raw access key, the anonymous ``Basic Og==``; no
store is read here (L{izreg.auth.authenticator} does that). A malformed
value raises L{_Failed} with a reason that is safe to log and to send.
"""

from __future__ import annotations

import base64
import binascii

from izreg.auth import keys

#: the only username accepted with Basic auth; the password is the access key
USERNAME = "KEY"

__all__ = ["USERNAME", "_Failed", "_anonymous", "_basic_key", "_parse_key", "_sent_bearer", "_split"]


class _Failed(Exception):
    """Internal: authentication failed; C{reason} is safe to log and to send."""

    def __init__(self, reason: str, key_id: str | None = None, known: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id
        #: the failure is against an existing key (its own brake), not a made-up one
        self.known = known


def _parse_key(text: str) -> keys.AccessKey:
    try:
        return keys.parse(text)
    except keys.InvalidKey as e:
        raise _Failed(str(e)) from None


def _split(authorization: bytes | str) -> tuple[str, str]:
    """(lowercased scheme, credential) of an ``Authorization`` value."""
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if not credential:
        raise _Failed("malformed Authorization header")
    return scheme.lower(), credential


def _sent_bearer(authorization: bytes | str | None) -> bool:
    text = authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization or ""
    return text.strip().partition(" ")[0].lower() == "bearer"


def _anonymous(authorization: bytes | str) -> bool:
    """``Basic`` with an empty username and password: a client with no credentials."""
    text = authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization
    scheme, _, credential = text.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        return base64.b64decode(credential.strip().encode("latin-1"), validate=True) == b":"
    except (binascii.Error, ValueError):
        return False


def _basic_key(credential: str) -> str:
    """The access key in Basic credentials; the username must be C{KEY}."""
    try:
        decoded = base64.b64decode(credential.encode("latin-1"), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise _Failed("malformed Basic credentials") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise _Failed("malformed Basic credentials")
    if username != USERNAME:
        raise _Failed(f"the username must be {USERNAME} and the password an access key"
                      f" (docker login <registry host> -u {USERNAME})")
    return password
