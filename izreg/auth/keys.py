# -*- test-case-name: tests.auth.test_keys -*-
"""
Access keys: format, generation, hashing and constant-time verification (pure).

An access key looks like::

    izr_0123456789abcdef_<43 characters of urlsafe base64>
        \\_____________/ \\___________________________/
         key id (public)   secret (32 random bytes)

The key id is public: it names the key's record (so a check is one LMDB
``get``, not a scan) and appears in ``izreg key list`` and in logs. The
secret is shown once, when the key is created; izreg stores only
L{hash_secret} of it.

Why a fast hash (SHA-256) and not bcrypt/scrypt/argon2
------------------------------------------------------
Slow password hashes exist because human passwords have little entropy: an
attacker who steals the hashes can try the few billion likely passwords, and
a slow hash makes each try expensive. Our secrets are 256 bits from
C{secrets.token_bytes}: there is no likely subset to try, and finding a
preimage of SHA-256 over a uniformly random 256-bit input is a 2**256 search
whatever the cost of one try. Slowing the hash would add nothing against a
stolen database and would cost milliseconds of CPU on *every* registry
request (each blob GET carries the key), which is an easy denial of service.
So: one SHA-256 per request, compared with L{hmac.compare_digest}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable

#: every access key starts with this, so secret scanners (and people) can spot one
PREFIX = "izr_"
KEY_ID_BYTES = 8
SECRET_BYTES = 32
#: urlsafe base64 of 32 bytes, without the "=" padding
SECRET_LENGTH = 43

KEY_RE = re.compile(r"^izr_(?P<key_id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})\Z")
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}\Z")
ACCOUNT_ID_BYTES = 16

#: domain separation: a hash of a key never equals any other hash izreg makes
_HASH_CONTEXT = b"izreg access key v1\x00"

RandomBytes = Callable[[int], bytes]


class InvalidKey(ValueError):
    """The text is not an access key. The message never contains the text."""


@dataclass(frozen=True)
class AccessKey:
    """A parsed access key. Its C{repr} and C{str} never show the secret."""

    key_id: str
    secret: str = field(repr=False)

    def __repr__(self) -> str:
        return f"AccessKey(key_id={self.key_id!r}, secret=<hidden>)"

    __str__ = __repr__

    def reveal(self) -> str:
        """The full key text, to show the user once. Never log this."""
        return f"{PREFIX}{self.key_id}_{self.secret}"


def generate(random: RandomBytes = secrets.token_bytes) -> AccessKey:
    """A new access key from C{random} (C{secrets.token_bytes} unless a test injects one)."""
    key_id = random(KEY_ID_BYTES).hex()
    secret = base64.urlsafe_b64encode(random(SECRET_BYTES)).rstrip(b"=").decode("ascii")
    return AccessKey(key_id, secret)


def generate_account_id(random: RandomBytes = secrets.token_bytes) -> str:
    """A new account id: 32 lowercase hex characters."""
    return random(ACCOUNT_ID_BYTES).hex()


def parse(text: str | bytes) -> AccessKey:
    """
    Parse the text of an access key.

    @raise InvalidKey: if it is not one (the message does not repeat the text).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidKey("not an izreg access key") from None
    match = KEY_RE.fullmatch(text)
    if match is None:
        raise InvalidKey("not an izreg access key (expected izr_<16 hex>_<43 base64url>)")
    return AccessKey(match["key_id"], match["secret"])


def looks_like_key(text: str) -> bool:
    """Whether C{text} has the access-key prefix (to tell keys from tokens)."""
    return text.startswith(PREFIX)


def is_key_id(text: str) -> bool:
    return bool(KEY_ID_RE.fullmatch(text or ""))


def hash_secret(key: AccessKey) -> str:
    """
    The stored form of a key: hex SHA-256 of the key id and the secret.

    The key id is hashed too, so a record's hash cannot be copied to another
    key id to make an old secret valid there.
    """
    material = _HASH_CONTEXT + key.key_id.encode("ascii") + b"\x00" + key.secret.encode("ascii")
    return hashlib.sha256(material).hexdigest()


def verify(key: AccessKey, stored_hash: str) -> bool:
    """Whether C{key} matches C{stored_hash}, compared in constant time."""
    return hmac.compare_digest(hash_secret(key).encode("ascii"), stored_hash.encode("ascii"))
