# -*- test-case-name: tests.auth.test_keys -*-
from __future__ import annotations

import re

import pytest

from izreg.auth import keys


def counting_random(n: int) -> bytes:
    return bytes(range(n))


def test_generate_format():
    key = keys.generate()
    text = key.reveal()
    assert re.fullmatch(r"izr_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", text)
    assert keys.parse(text) == key


def test_generate_uses_injected_random():
    key = keys.generate(counting_random)
    assert key.key_id == "0001020304050607"
    assert keys.generate(counting_random) == key
    assert keys.generate() != keys.generate()


def test_account_id():
    assert keys.generate_account_id(counting_random) == "000102030405060708090a0b0c0d0e0f"
    assert re.fullmatch(r"[0-9a-f]{32}", keys.generate_account_id())


def test_repr_and_str_hide_the_secret():
    key = keys.generate()
    for shown in (repr(key), str(key), f"{key}", repr([key])):
        assert key.secret not in shown
        assert key.key_id in shown


@pytest.mark.parametrize(
    "text",
    [
        "",
        "izr_",
        "izr_0123456789abcdef",
        "izr_0123456789ABCDEF_" + "a" * 43,  # upper-case key id
        "izr_0123456789abcde_" + "a" * 43,  # short key id
        "izr_0123456789abcdef_" + "a" * 42,  # short secret
        "izr_0123456789abcdef_" + "a" * 44,  # long secret
        "izr_0123456789abcdef_" + "a" * 42 + "=",  # padding
        "izx_0123456789abcdef_" + "a" * 43,  # prefix
        " izr_0123456789abcdef_" + "a" * 43,
        "izr_0123456789abcdef_" + "a" * 43 + "\n",
        b"izr_0123456789abcdef_" + b"\xff" * 43,
    ],
)
def test_parse_rejects(text):
    with pytest.raises(keys.InvalidKey) as e:
        keys.parse(text)
    secretish = text.decode("latin-1") if isinstance(text, bytes) else text
    if len(secretish) > 20:
        assert secretish not in str(e.value)


def test_parse_bytes_and_underscores_in_secret():
    text = "izr_0123456789abcdef_" + "_-" * 21 + "a"
    assert keys.parse(text.encode()).secret == "_-" * 21 + "a"


def test_hash_and_verify():
    key = keys.generate()
    stored = keys.hash_secret(key)
    assert re.fullmatch(r"[0-9a-f]{64}", stored)
    assert key.secret not in stored
    assert keys.verify(key, stored)
    other = keys.generate()
    assert not keys.verify(other, stored)
    # the same secret under another key id does not verify: the id is hashed too
    moved = keys.AccessKey(other.key_id, key.secret)
    assert not keys.verify(moved, stored)
    assert not keys.verify(key, "")


def test_is_key_id():
    assert keys.is_key_id("0123456789abcdef")
    assert not keys.is_key_id("0123456789abcdeF")
    assert not keys.is_key_id("")
    assert keys.looks_like_key("izr_x") and not keys.looks_like_key("izt_x")
