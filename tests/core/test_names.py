"""Repository names, tags, references and account ids (izreg.core.names)."""

from __future__ import annotations

import pytest

from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import (MAX_NAME_LENGTH, OutsideNamespaces, Repository, name_problem, parse_account,
                              parse_reference, parse_tag)

ACCT = "0123456789abcdef0123456789abcdef"
H64 = "0123456789abcdef" * 4


def long_name(length: int) -> str:
    """A valid-looking name of exactly C{length} characters (components of 'a')."""
    path_len = length - len(ACCT) - 1
    return f"{ACCT}/{'a' * path_len}"


def long_nested_name(length: int) -> str:
    """A name of exactly C{length} characters with many short components."""
    path = ("ab/" * length)[: length - len(ACCT) - 1]
    if path.endswith("/"):
        path = path[:-1] + "c"
    return f"{ACCT}/{path}"


@pytest.mark.parametrize(
    "text, path",
    [
        (f"{ACCT}/a", "a"),
        (f"{ACCT}/0", "0"),
        (f"{ACCT}/app", "app"),
        (f"{ACCT}/a/b/c", "a/b/c"),
        (f"{ACCT}/a.b", "a.b"),
        (f"{ACCT}/a_b", "a_b"),
        (f"{ACCT}/a-b", "a-b"),
        (f"{ACCT}/a-b.c_d/e0", "a-b.c_d/e0"),
        (f"{ACCT}/manifests", "manifests"),
        (f"{ACCT}/blobs/uploads", "blobs/uploads"),
        (f"{'f' * 32}/x", "x"),
        (long_name(255), "a" * (255 - 33)),
    ],
)
def test_repository_valid(text, path):
    repo = Repository.parse(text)
    assert repo.name == text
    assert str(repo) == text
    assert repo.account == text[:32]
    assert repo.path == path


@pytest.mark.parametrize(
    "text",
    [
        f"{ACCT}/a__b",  # spec allows __, izreg does not
        f"{ACCT}/a--b",  # spec allows -+, izreg does not
        f"{ACCT}/a---b",
        f"{ACCT}/a._b",
        f"{ACCT}/a-_b",
        f"{ACCT}/a..b",
        f"{ACCT}/A",
        f"{ACCT}/app/Sub",
        f"{ACCT}/.a",
        f"{ACCT}/a.",
        f"{ACCT}/_a",
        f"{ACCT}/a-",
        f"{ACCT}/a//b",
        f"{ACCT}/a/",
        f"{ACCT}//a",
        f"{ACCT}/",
        ACCT,
        f"{ACCT}/a b",
        f"{ACCT}/a:b",
        f"{ACCT}/a\n",  # trailing newline
        f"{ACCT}/a\r\n",
        f"\n{ACCT}/a",
        f" {ACCT}/a",
        f"{ACCT}/é",
        f"{ACCT[:-1]}/a",  # 31-char account
        f"{ACCT}0/a",  # 33-char account
        f"{ACCT.upper()}/a",  # uppercase account
        f"{'g' * 32}/a",  # not hex
        "library/ubuntu",  # no account
        "a",
        "",
        "/",
        long_name(256),
        long_nested_name(256),
        long_name(1000),
    ],
)
def test_repository_invalid(text):
    with pytest.raises(RegistryError) as info:
        Repository.parse(text)
    assert info.value.code is ErrorCode.NAME_INVALID
    assert info.value.code.status == 400
    assert info.value.detail["name"] == text[:300]
    # clients show the message alone: it names the expected form, or that names are lowercase
    if text.lower() == text:
        assert "<account id: 32 lowercase hex>/<name>" in info.value.message
    else:
        assert info.value.message.startswith("invalid repository name: repository names are lowercase")


@pytest.mark.parametrize(
    "text, end",
    [
        (f"{ACCT}/MyApp", f": use {ACCT}/myapp"),
        (f"{ACCT}/app/Sub", f": use {ACCT}/app/sub"),
        (f"{ACCT.upper()}/a", f": use {ACCT}/a"),
        (f"{ACCT}/My-App.v2_X", f": use {ACCT}/my-app.v2_x"),
        # not a valid name once lowercase either: the form, no suggestion
        ("MyApp", "; expected <account id: 32 lowercase hex>/<name>"),
        (f"{ACCT}/My__App", "; expected <account id: 32 lowercase hex>/<name>"),
        (f"{ACCT}/A/", "; expected <account id: 32 lowercase hex>/<name>"),
        (f"{ACCT}/" + "A" * 250, "; expected <account id: 32 lowercase hex>/<name>"),
    ],
)
def test_a_name_with_capitals_is_told_names_are_lowercase(text, end):
    """The OCI grammar has no capitals: the message says so, and the lowercase name when it is a valid one."""
    with pytest.raises(RegistryError) as info:
        Repository.parse(text)
    assert info.value.code is ErrorCode.NAME_INVALID and not isinstance(info.value, OutsideNamespaces)
    assert info.value.message == ('invalid repository name: repository names are lowercase'
                                  ' (a-z, 0-9 and the separators ".", "_", "-")' + end)
    assert info.value.message.endswith(end)
    assert info.value.detail.get("lowercase") == (end[len(": use "):] if end.startswith(": use") else None)
    assert name_problem(text) == info.value.message.removeprefix("invalid repository name: ")


def test_only_ascii_capitals_are_lowered():
    """The Kelvin sign lowers to "k": not a capital of the grammar, no suggestion that names another repository."""
    assert name_problem(f"{ACCT}/a\u212a") == ("expected <account id: 32 lowercase hex>/<name>,"
                                               " as in 0123456789abcdef0123456789abcdef/app")


OTHER = "fedcba9876543210fedcba9876543210"


@pytest.mark.parametrize(
    "text, fix",
    [
        # of the spec's grammar, in no account: DENIED (once the caller is known) says what to use
        ("app", f"; your account id is {OTHER}: use {OTHER}/app"),
        ("library/ubuntu", f"; your account id is {OTHER}: use {OTHER}/library/ubuntu"),
        (ACCT, f"; your account id is {OTHER}: use {OTHER}/{ACCT}"),  # an account id alone
        (f"{ACCT[:31]}/a", f"; your account id is {OTHER}: use {OTHER}/{ACCT[:31]}/a"),
        ("x-y.z_w/v", f"; your account id is {OTHER}: use {OTHER}/x-y.z_w/v"),
        # an account's form, with separators the spec allows and izreg does not
        (f"{ACCT}/a__b", '; a part of a name is lowercase letters and digits, separated by one ".", "_" or "-"'
                         ' (never "__" or "--")'),
        (f"{ACCT}/a---b", '; a part of a name is lowercase letters and digits, separated by one ".", "_" or "-"'
                          ' (never "__" or "--")'),
        # too long once the account is put in front: the form and the account id, no suggestion
        ("a" * 230, f"; your account id is {OTHER}"),
    ],
)
def test_a_name_of_the_spec_outside_every_account(text, fix):
    with pytest.raises(OutsideNamespaces) as info:
        Repository.parse(text)
    assert info.value.code is ErrorCode.NAME_INVALID  # to whoever does not ask: as any bad name
    denied = info.value.denied(OTHER)
    assert denied.code is ErrorCode.DENIED and denied.code.status == 403
    assert denied.message == "repository names are <account id>/<name>" + fix
    assert denied.detail == {"name": text, "expected": "<account_id: 32 hex>/<name>[/<name>...]", "account": OTHER}


@pytest.mark.parametrize("text", ["App", "a___b", "-a", "a-", "a//b", "a/", "é", "a b", "a" * 256, long_name(256),
                                  f"{ACCT}/a\n"])
def test_a_name_not_of_the_spec_is_not_outside_but_invalid(text):
    with pytest.raises(RegistryError) as info:
        Repository.parse(text)
    assert not isinstance(info.value, OutsideNamespaces)
    assert info.value.code is ErrorCode.NAME_INVALID


def test_repository_length_boundary():
    assert len(long_name(MAX_NAME_LENGTH)) == len(long_nested_name(255)) == 255
    assert len(long_name(256)) == len(long_nested_name(256)) == 256
    Repository.parse(long_name(255))
    Repository.parse(long_nested_name(255))
    with pytest.raises(RegistryError):
        Repository.parse(long_name(256))


def test_repository_is_a_value():
    assert Repository.parse(f"{ACCT}/a") == Repository(f"{ACCT}/a")
    assert sorted([Repository(f"{ACCT}/b"), Repository(f"{ACCT}/a")])[0].path == "a"


TAG_127 = "t" * 127
TAG_128 = "t" * 128
TAG_129 = "t" * 129


@pytest.mark.parametrize(
    "text",
    ["a", "A", "0", "_", "_a", "latest", "v1.2.3", "1.0_build-5", "A.b-C_d", "a.", "a-", "a..b", "sha256-" + H64, TAG_127, TAG_128, "_" + "." * 127],
    ids=lambda t: t if len(t) < 20 else f"len{len(t)}",
)
def test_tag_valid(text):
    assert parse_tag(text) == text


@pytest.mark.parametrize(
    "text",
    ["", ".a", "-a", ".", "-", TAG_129, "_" + "." * 128, "a\n", "\na", "a b", " a", "a:b", "a/b", "a+b", "é", "a@b", "tag\x00"],
    ids=lambda t: repr(t) if len(t) < 20 else f"len{len(t)}",
)
def test_tag_invalid(text):
    with pytest.raises(RegistryError) as info:
        parse_tag(text)
    assert info.value.code is ErrorCode.TAG_INVALID
    assert info.value.detail == {"tag": text[:200]}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("latest", "latest"),
        (TAG_128, TAG_128),
        (f"sha256:{H64}", Digest("sha256", H64)),
        (f"sha512:{H64 * 2}", Digest("sha512", H64 * 2)),
    ],
)
def test_reference_valid(text, expected):
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text, code",
    [
        ("", ErrorCode.TAG_INVALID),
        (".hidden", ErrorCode.TAG_INVALID),
        (TAG_129, ErrorCode.TAG_INVALID),
        ("latest\n", ErrorCode.TAG_INVALID),
        ("a:b", ErrorCode.DIGEST_INVALID),  # a colon makes it a digest
        (f"sha256:{H64.upper()}", ErrorCode.DIGEST_INVALID),
        (f"sha256:{H64}\n", ErrorCode.DIGEST_INVALID),
        (f"md5:{H64[:32]}", ErrorCode.DIGEST_INVALID),
    ],
)
def test_reference_invalid(text, code):
    with pytest.raises(RegistryError) as info:
        parse_reference(text)
    assert info.value.code is code


@pytest.mark.parametrize("text", [ACCT, "f" * 32, "0" * 32])
def test_account_valid(text):
    assert parse_account(text) == text


@pytest.mark.parametrize("text", ["", None, ACCT.upper(), ACCT[:-1], ACCT + "0", ACCT + "\n", "g" * 32, f"{ACCT}/a"])
def test_account_invalid(text):
    with pytest.raises(RegistryError) as info:
        parse_account(text)
    assert info.value.code is ErrorCode.NAME_INVALID


@pytest.mark.parametrize("text", ["0123456789abcdef0123456789abcdef/app\n", "0123456789abcdef0123456789abcdef\n/app"])
def test_a_final_newline_is_not_part_of_a_name(text):
    with pytest.raises(RegistryError):
        Repository.parse(text)
