# -*- test-case-name: tests.auth.test_policy -*-
"""
Who may do what (pure).

A L{Principal} is the authenticated caller. Every repository belongs to the
account whose id is the first 32 hex characters of its name, and a principal
may only touch its own account's repositories. A read-only principal may
only pull. A token principal may, in addition, only do what its token's
scopes grant (Docker token-auth scopes: ``repository:<name>:pull,push``).

The HTTP layer calls L{authorize} once per repository a request touches
(twice for a cross-repository mount: C{PUSH} on the target, C{PULL} on the
``from`` repository) and L{authorize_catalog} for ``/v2/_catalog``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Iterable, Literal

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository


class Action(enum.Enum):
    """What a request does to a repository, named as in Docker token scopes."""

    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"


#: canonical order of actions in a scope string
ACTION_ORDER = (Action.PULL, Action.PUSH, Action.DELETE)
ALL_ACTIONS = frozenset(ACTION_ORDER)
READ_ONLY_ACTIONS = frozenset({Action.PULL})

#: the scope of ``/v2/_catalog`` (Docker token auth)
CATALOG_SCOPE = "registry:catalog:*"

PrincipalKind = Literal["key", "device", "token"]


@dataclass(frozen=True)
class Scope:
    """A token-auth resource scope: C{repository:<name>:<actions>} or C{registry:catalog:*}."""

    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{format_actions(self.actions)}"


@dataclass(frozen=True)
class Principal:
    """
    An authenticated caller. Holds no secret.

    @ivar kind: C{"key"} (an access key, Basic or Bearer), C{"token"} (a
        token from the token endpoint) or C{"device"} (a client certificate).
    @ivar account: the 32-hex account id it acts for.
    @ivar key_id: the access key (for C{"key"} and C{"token"}).
    @ivar read_only: pull only.
    @ivar device_id: the device (for C{"device"}).
    @ivar scopes: for tokens, the granted scopes; C{None} for the other kinds
        (limited only by account and C{read_only}).
    """

    kind: PrincipalKind
    account: str
    key_id: str | None = None
    read_only: bool = False
    device_id: str | None = None
    scopes: tuple[Scope, ...] | None = None

    def may(self, action: Action) -> bool:
        """Whether the key itself (ignoring token scopes) allows C{action} in its own account."""
        return action is Action.PULL or not self.read_only


def allowed_actions(principal_account: str, read_only: bool, repository: Repository) -> frozenset[Action]:
    """What a key of C{principal_account} may do on C{repository}."""
    if repository.account != principal_account:
        return frozenset()
    return READ_ONLY_ACTIONS if read_only else ALL_ACTIONS


def authorize(principal: Principal, repository: Repository, action: Action) -> None:
    """
    Allow C{principal} to do C{action} on C{repository}, or raise.

    @raise RegistryError: C{DENIED} (403) if the repository is in another
        account (the message says the caller's own account id) or the
        principal is read-only and C{action} is not C{PULL};
        C{UNAUTHORIZED} (401) with C{detail["scope"]} if the principal is a
        token whose scopes do not cover the action although its key would: the
        client should fetch a token for that scope (the authenticator adds the
        challenge header).
    """
    if repository.account != principal.account:
        own = principal.account
        # clients print the message only (docker: "denied: ..."): a mistyped account id is seen at
        # once. The same sentence for every name asked, so it cannot tell whether one exists.
        raise RegistryError(
            ErrorCode.DENIED,
            {"name": repository.name, "action": action.value, "account": own},
            f"access to a repository of another account is denied; your account id is {own}",
        )
    if not principal.may(action):
        raise RegistryError(
            ErrorCode.DENIED,
            {"name": repository.name, "action": action.value},
            # what to use instead: docker prints the message only
            "devices may only pull: push and delete with an access key (docker login <registry host> -u KEY)"
            if principal.kind == "device" else
            "this access key is read-only: push and delete with a read-write key (izreg key create without --read-only)",
        )
    if principal.scopes is not None and not token_grants(principal.scopes, repository.name, action):
        raise RegistryError(
            ErrorCode.UNAUTHORIZED,
            {"scope": repository_scope(repository.name, [action])},
            "the token does not grant this action; request a token with this scope",
        )


def authorize_catalog(principal: Principal) -> str:
    """
    The account whose repositories C{principal} may list in ``/v2/_catalog``.

    @raise RegistryError: C{UNAUTHORIZED} with C{detail["scope"]} for a token
        without the C{registry:catalog:*} scope.
    """
    if principal.scopes is not None and not any(str(s) == CATALOG_SCOPE for s in principal.scopes):
        raise RegistryError(ErrorCode.UNAUTHORIZED, {"scope": CATALOG_SCOPE}, "the token does not grant the catalog")
    return principal.account


def token_grants(scopes: Iterable[Scope], repository_name: str, action: Action) -> bool:
    return any(
        s.type == "repository" and s.name == repository_name and action.value in s.actions for s in scopes
    )


# Scope strings ---------------------------------------------------------------

_SCOPE_RE = re.compile(r"^(?P<type>[a-z0-9]+)(?:\([a-z0-9]+\))?:(?P<name>[^\s]+):(?P<actions>[a-z*]+(?:,[a-z*]+)*)\Z")


def format_actions(actions: Iterable[str] | Iterable[Action]) -> str:
    """Actions joined by commas, pull/push/delete first in that order."""
    values = {a.value if isinstance(a, Action) else a for a in actions}
    known = [a.value for a in ACTION_ORDER if a.value in values]
    return ",".join(known + sorted(values - set(known)))


def repository_scope(name: str, actions: Iterable[Action]) -> str:
    """C{repository:<name>:<actions>}."""
    return f"repository:{name}:{format_actions(actions)}"


def parse_scope(text: str) -> Scope | None:
    """
    Parse one scope (C{type:name:actions}); C{None} if malformed.

    A resource class (C{repository(plugin):...}) is accepted and dropped.
    Malformed scopes are ignored rather than refused, as distribution does:
    a token request gets the intersection of what it asks and what it may.
    """
    match = _SCOPE_RE.fullmatch(text)
    if match is None:
        return None
    actions = frozenset(a for a in match["actions"].split(",") if a)
    return Scope(match["type"], match["name"], actions)


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Every scope in C{values}; each value may hold several, space separated (OAuth2)."""
    found = []
    for value in values:
        for text in value.split():
            scope = parse_scope(text)
            if scope is not None:
                found.append(scope)
    return found


def grant(requested: Iterable[Scope], account: str, read_only: bool) -> tuple[Scope, ...]:
    """
    The scopes a key of C{account} gets for C{requested}: each repository
    asked for that the key may touch, with everything the key may do there
    (pull, push, delete; pull only for a read-only key). Repositories of
    other accounts are dropped; never an error (Docker token spec).

    The grant is per repository, not per action: clients such as oras-py
    cache the first token (often asked for ``pull`` by a HEAD) and do not ask
    again on a 401, so a pull-only token would break their push. A wider
    token gives nothing the key itself does not already allow.
    """
    granted: dict[tuple[str, str], set[str]] = {}
    for scope in requested:
        if scope.type == "registry" and scope.name == "catalog" and "*" in scope.actions:
            granted.setdefault(("registry", "catalog"), set()).add("*")
            continue
        if scope.type != "repository":
            continue
        try:
            repository = Repository.parse(scope.name)
        except RegistryError:
            continue
        actions = {a.value for a in allowed_actions(account, read_only, repository)}
        if actions and scope.actions:
            granted.setdefault(("repository", scope.name), set()).update(actions)
    return tuple(Scope(t, n, frozenset(a)) for (t, n), a in sorted(granted.items()))
