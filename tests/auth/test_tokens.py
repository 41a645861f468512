# -*- test-case-name: tests.auth.test_tokens -*-
from __future__ import annotations

import pytest

from izreg.auth import policy, tokens

A = "a" * 32
CLAIMS = tokens.TokenClaims(
    key_id="0123456789abcdef",
    account=A,
    read_only=False,
    scopes=(policy.parse_scope(f"repository:{A}/app:pull,push"),),
    issued_at=1000.0,
    expires=4600.0,
)


def test_round_trip():
    signer = tokens.Signer(b"s" * 32)
    token = signer.sign(CLAIMS)
    assert tokens.looks_like_token(token)
    assert signer.verify(token, now=1000.0) == CLAIMS
    assert signer.verify(token, now=4599.0) == CLAIMS


def test_expired():
    signer = tokens.Signer(b"s" * 32)
    with pytest.raises(tokens.InvalidToken, match="expired"):
        signer.verify(signer.sign(CLAIMS), now=4600.0)


def test_other_secret_fails():
    token = tokens.Signer(b"s" * 32).sign(CLAIMS)
    with pytest.raises(tokens.InvalidToken, match="signature"):
        tokens.Signer(b"t" * 32).verify(token, now=1000.0)


def tamper(token: str) -> list[str]:
    body, mac = token[len(tokens.PREFIX):].split(".")
    forged = tokens._b64(b'{"a":"' + b"b" * 32 + b'","e":9999,"i":0,"k":"0123456789abcdef","r":false,"s":[]}')
    return [
        tokens.PREFIX + forged + "." + mac,
        tokens.PREFIX + body[:-1] + ("A" if body[-1] != "A" else "B") + "." + mac,
        tokens.PREFIX + body + "." + mac[:-2],
        tokens.PREFIX + body + "." + mac + "!",
        tokens.PREFIX + body + "." + mac + "é",
        tokens.PREFIX + body + "." + mac + ".x",
        tokens.PREFIX + body,
        body + "." + mac,
        "",
    ]


def test_tampered_tokens_fail():
    signer = tokens.Signer(b"s" * 32)
    cases = tamper(signer.sign(CLAIMS))
    for bad in cases:
        with pytest.raises(tokens.InvalidToken):
            signer.verify(bad, now=1000.0)


def test_signed_garbage_payload_is_malformed():
    signer = tokens.Signer(b"s" * 32)
    body = tokens._b64(b'{"k": 1}')
    token = f"{tokens.PREFIX}{body}.{tokens._b64(signer._mac(body))}"
    with pytest.raises(tokens.InvalidToken, match="malformed"):
        signer.verify(token, now=0)


def test_repr_hides_secret():
    assert "sss" not in repr(tokens.Signer(b"s" * 32))
