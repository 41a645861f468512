# -*- test-case-name: tests.auth.test_policy -*-
from __future__ import annotations

import pytest

from izreg.auth import policy
from izreg.auth.policy import Action, Principal, Scope
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository

A = "a" * 32
B = "b" * 32
REPO = Repository.parse(f"{A}/app")
OTHER = Repository.parse(f"{B}/app")

KEY = Principal("key", A, "0" * 16)
READ_ONLY = Principal("key", A, "0" * 16, read_only=True)
DEVICE = Principal("device", A, device_id="dev1", read_only=True)
TOKEN_PULL = Principal("token", A, "0" * 16, scopes=(Scope("repository", REPO.name, frozenset({"pull"})),))
TOKEN_NONE = Principal("token", A, "0" * 16, scopes=())


@pytest.mark.parametrize(
    "principal, repository, action, expected",
    [
        (KEY, REPO, Action.PULL, None),
        (KEY, REPO, Action.PUSH, None),
        (KEY, REPO, Action.DELETE, None),
        (KEY, OTHER, Action.PULL, ErrorCode.DENIED),
        (READ_ONLY, REPO, Action.PULL, None),
        (READ_ONLY, REPO, Action.PUSH, ErrorCode.DENIED),
        (READ_ONLY, REPO, Action.DELETE, ErrorCode.DENIED),
        (READ_ONLY, OTHER, Action.PULL, ErrorCode.DENIED),
        (DEVICE, REPO, Action.PULL, None),
        (DEVICE, REPO, Action.PUSH, ErrorCode.DENIED),
        (TOKEN_PULL, REPO, Action.PULL, None),
        (TOKEN_PULL, REPO, Action.PUSH, ErrorCode.UNAUTHORIZED),
        (TOKEN_PULL, Repository.parse(f"{A}/other"), Action.PULL, ErrorCode.UNAUTHORIZED),
        (TOKEN_PULL, OTHER, Action.PULL, ErrorCode.DENIED),
        (TOKEN_NONE, REPO, Action.PULL, ErrorCode.UNAUTHORIZED),
    ],
)
def test_authorize(principal, repository, action, expected):
    if expected is None:
        policy.authorize(principal, repository, action)
        return
    with pytest.raises(RegistryError) as e:
        policy.authorize(principal, repository, action)
    assert e.value.code is expected
    if expected is ErrorCode.UNAUTHORIZED:
        assert e.value.detail["scope"] == f"repository:{repository.name}:{action.value}"


@pytest.mark.parametrize(
    "principal, message",
    [
        (DEVICE, "devices may only pull: push and delete with an access key (docker login <registry host> -u KEY)"),
        (READ_ONLY, "this access key is read-only: push and delete with a read-write key "
                    "(izreg key create without --read-only)"),
    ],
)
@pytest.mark.parametrize("action", [Action.PUSH, Action.DELETE])
def test_a_pull_only_caller_refused_a_write_is_told_what_may_write(principal, message, action):
    with pytest.raises(RegistryError) as e:
        policy.authorize(principal, REPO, action)
    assert (e.value.code, e.value.message) == (ErrorCode.DENIED, message)


@pytest.mark.parametrize("principal", [KEY, READ_ONLY, DEVICE, TOKEN_PULL])
def test_another_accounts_repository_is_denied_with_the_callers_account(principal):
    # docker prints only the message: a mistyped account id must be seen in it
    with pytest.raises(RegistryError) as e:
        policy.authorize(principal, Repository.parse(f"{B}/team/app"), Action.PULL)
    assert e.value.code is ErrorCode.DENIED
    assert e.value.message == f"access to a repository of another account is denied; your account id is {A}"
    assert e.value.detail == {"name": f"{B}/team/app", "action": "pull", "account": A}


def test_authorize_catalog():
    assert policy.authorize_catalog(KEY) == A
    assert policy.authorize_catalog(Principal("token", A, "0" * 16, scopes=(policy.parse_scope("registry:catalog:*"),))) == A
    with pytest.raises(RegistryError) as e:
        policy.authorize_catalog(TOKEN_PULL)
    assert e.value.code is ErrorCode.UNAUTHORIZED


@pytest.mark.parametrize(
    "text, expected",
    [
        ("repository:foo/bar:pull", Scope("repository", "foo/bar", frozenset({"pull"}))),
        ("repository:foo/bar:pull,push", Scope("repository", "foo/bar", frozenset({"pull", "push"}))),
        ("repository(plugin):foo:pull", Scope("repository", "foo", frozenset({"pull"}))),
        ("repository:host:5000/foo:push", Scope("repository", "host:5000/foo", frozenset({"push"}))),
        ("registry:catalog:*", Scope("registry", "catalog", frozenset({"*"}))),
        ("repository:foo", None),
        ("repository:foo:", None),
        ("repository::pull", None),
        ("repository:foo:pull\n", None),
        ("", None),
    ],
)
def test_parse_scope(text, expected):
    assert policy.parse_scope(text) == expected


def test_scope_strings():
    assert policy.repository_scope("x/y", [Action.DELETE, Action.PULL, Action.PUSH]) == "repository:x/y:pull,push,delete"
    assert str(policy.parse_scope("repository:x:push,pull")) == "repository:x:pull,push"
    assert policy.parse_scopes(["repository:a:pull repository:b:push", "bad", "registry:catalog:*"]) == [
        Scope("repository", "a", frozenset({"pull"})),
        Scope("repository", "b", frozenset({"push"})),
        Scope("registry", "catalog", frozenset({"*"})),
    ]


@pytest.mark.parametrize(
    "requested, read_only, expected",
    [
        ([f"repository:{A}/app:pull,push"], False, [f"repository:{A}/app:pull,push,delete"]),
        ([f"repository:{A}/app:pull"], False, [f"repository:{A}/app:pull,push,delete"]),
        ([f"repository:{A}/app:pull,push,delete"], True, [f"repository:{A}/app:pull"]),
        ([f"repository:{A}/app:*"], False, [f"repository:{A}/app:pull,push,delete"]),
        ([f"repository:{A}/app:push"], True, [f"repository:{A}/app:pull"]),
        ([f"repository:{B}/app:pull"], False, []),
        ([f"repository:{A}/App:pull"], False, []),  # invalid name: nothing, no error
        ([f"repository:{A}/app:pull", f"repository:{A}/app:push"], False, [f"repository:{A}/app:pull,push,delete"]),
        ([f"repository:{A}/app:pull,frobnicate"], False, [f"repository:{A}/app:pull,push,delete"]),
        (["registry:catalog:*"], True, ["registry:catalog:*"]),
        (["registry:other:*"], False, []),
        ([], False, []),
    ],
)
def test_grant_is_per_repository(requested, read_only, expected):
    granted = policy.grant(policy.parse_scopes(requested), A, read_only)
    assert sorted(str(s) for s in granted) == sorted(expected)
