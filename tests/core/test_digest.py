"""Digest parsing and hashing (izreg.core.digest)."""

from __future__ import annotations

import hashlib

import pytest

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError

SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512_EMPTY = hashlib.sha512(b"").hexdigest()
H64 = "0123456789abcdef" * 4
H128 = H64 * 2


@pytest.mark.parametrize(
    "text, algorithm, hexpart",
    [
        (f"sha256:{SHA256_EMPTY}", "sha256", SHA256_EMPTY),
        (f"sha256:{H64}", "sha256", H64),
        (f"sha512:{SHA512_EMPTY}", "sha512", SHA512_EMPTY),
        (f"sha512:{H128}", "sha512", H128),
    ],
)
def test_parse_valid(text, algorithm, hexpart):
    digest = Digest.parse(text)
    assert (digest.algorithm, digest.hex) == (algorithm, hexpart)
    assert str(digest) == text


@pytest.mark.parametrize(
    "text",
    [
        f"sha256:{H64.upper()}",  # uppercase hex
        f"sha256:{H64[:-1]}A",  # one uppercase hex digit
        f"SHA256:{H64}",  # uppercase algorithm
        f"sha256:{H64[:-1]}",  # 63 hex
        f"sha256:{H64}0",  # 65 hex
        f"sha256:{H128}",  # sha512 length under sha256
        f"sha512:{H64}",  # sha256 length under sha512
        f"sha512:{H128}0",  # 129 hex
        f"sha256:{H64[:-1]}g",  # not hex
        f"sha256:{H64}\n",  # trailing newline
        f"sha256:{H64}\r\n",
        f" sha256:{H64}",  # leading space
        f"sha256:{H64} ",
        f"sha256: {H64}",
        f"sha256::{H64}",
        f"sha256:{H64[:32]}:{H64[32:]}",
        f":{H64}",
        "sha256:",
        H64,  # no algorithm
        "",
        "sha256",
    ],
)
def test_parse_invalid(text):
    with pytest.raises(RegistryError) as info:
        Digest.parse(text)
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert info.value.code.status == 400


@pytest.mark.parametrize(
    "text",
    [
        f"md5:{hashlib.md5(b'').hexdigest()}",
        f"sha384:{hashlib.sha384(b'').hexdigest()}",
        f"sha256+b64u:{H64}",  # grammar-valid, not a registered algorithm
        f"sha1:{hashlib.sha1(b'').hexdigest()}",
        f"blake3:{H64}",
    ],
)
def test_parse_unsupported_algorithm(text):
    with pytest.raises(RegistryError) as info:
        Digest.parse(text)
    assert info.value.code is ErrorCode.DIGEST_INVALID
    assert info.value.detail == {"digest": text, "supported": ["sha256", "sha512"]}


@pytest.mark.parametrize("value", [None, 123, b"sha256:" + SHA256_EMPTY.encode(), ["sha256"]])
def test_parse_non_string(value):
    with pytest.raises(RegistryError) as info:
        Digest.parse(value)
    assert info.value.code is ErrorCode.DIGEST_INVALID


def test_parse_invalid_detail_is_truncated():
    with pytest.raises(RegistryError) as info:
        Digest.parse("x" * 1000)
    assert info.value.detail == {"digest": "x" * 200}


@pytest.mark.parametrize(
    "data, algorithm",
    [(b"", "sha256"), (b"hello", "sha256"), (b"\x00" * 1000, "sha256"), (b"", "sha512"), (b"hello", "sha512")],
)
def test_of_and_matches(data, algorithm):
    digest = Digest.of(data, algorithm)
    assert digest == Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
    assert Digest.parse(str(digest)) == digest
    hasher = digest.hasher()
    assert hasher.name == algorithm
    hasher.update(data)
    assert digest.matches(hasher)
    other = digest.hasher()
    other.update(data + b"!")
    assert not digest.matches(other)


def test_of_defaults_to_sha256():
    assert Digest.of(b"") == Digest("sha256", SHA256_EMPTY)


def test_matches_checks_the_algorithm():
    # same hex under another algorithm name is not a match
    digest = Digest("sha512", hashlib.sha256(b"x").hexdigest())
    hasher = hashlib.sha256(b"x")
    assert not digest.matches(hasher)


def test_hasher_is_fresh_each_time():
    digest = Digest.of(b"")
    first = digest.hasher()
    first.update(b"data")
    assert digest.matches(digest.hasher())


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"sha256:{H64}", True),
        ("a:b", True),
        ("latest", False),
        ("v1.0", False),
        ("", False),
    ],
)
def test_is_digest(text, expected):
    assert Digest.is_digest(text) is expected


@pytest.mark.parametrize(
    "digest, expected",
    [
        (Digest("sha256", H64), f"sha256-{H64}"),
        (Digest("sha512", H128), f"sha512-{H64}"),  # hex truncated to 64
        (Digest("a" * 40, "ab"), f"{'a' * 32}-ab"),  # algorithm truncated to 32
    ],
)
def test_tag_schema(digest, expected):
    assert digest.tag_schema() == expected


def test_value_semantics():
    a = Digest.parse(f"sha256:{H64}")
    b = Digest("sha256", H64)
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert sorted([Digest("sha512", H128), Digest("sha256", H64)])[0].algorithm == "sha256"
    with pytest.raises(AttributeError):
        a.hex = "0"
