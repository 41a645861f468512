# -*- test-case-name: tests.auth.test_authenticator -*-
"""The Authenticator over a real store, with a fake clock."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pytest

from izreg.auth import keys, policy, tokens
from izreg.auth.authenticator import Authenticator
from izreg.auth.failures import FailedAuthentications
from izreg.auth.policy import Action, Principal
from izreg.auth.ratelimit import FailureLimiter
from izreg.auth.tokenservice import TokenService
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository
from izreg.service.config import Config

REALM = "https://registry.example:5000/v2/token"
ADDR = "192.0.2.1"


def basic(username: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


@dataclass
class World:
    store: object
    clock: object
    account: str
    other_account: str
    key: str
    read_only_key: str
    revoked_key: str
    other_key: str

    def repo(self, path="app", account=None):
        return Repository.parse(f"{account or self.account}/{path}")


@pytest.fixture
def world(store, clock):
    account = store.create_account(clock()).account_id
    other = store.create_account(clock()).account_id
    _, key = store.create_key(account, clock())
    _, ro = store.create_key(account, clock(), read_only=True)
    revoked_record, revoked = store.create_key(account, clock())
    store.revoke_key(revoked_record.key_id, clock())
    _, other_key = store.create_key(other, clock())
    return World(store, clock, account, other, key.reveal(), ro.reveal(), revoked.reveal(), other_key.reveal())


def make(world, limiter=None, **kw):
    config = Config()
    limiter = limiter or FailureLimiter(config.auth_failure_limit, config.auth_failure_window)
    kw.setdefault("token_service", False)
    return Authenticator(world.store, world.clock, failures=FailedAuthentications(limiter), **kw)


def token_service(auth):
    """The token endpoint over C{auth} (it keeps no state of its own: the signer is the authenticator's)."""
    return TokenService(auth, Config().token_ttl)


def forged_key(world):
    key = keys.parse(world.key)
    return f"izr_{key.key_id}_" + ("A" if key.secret[0] != "A" else "B") + key.secret[1:]


# Authentication, table-driven ----------------------------------------------------------

CASES = [
    # (name, header builder, expected error or principal kind, message fragment)
    ("no credentials", lambda w: None, ErrorCode.UNAUTHORIZED, "authentication required"),
    ("empty header", lambda w: b"", ErrorCode.UNAUTHORIZED, "authentication required"),
    ("basic KEY", lambda w: basic("KEY", w.key), "key", None),
    ("bearer raw key", lambda w: b"Bearer " + w.key.encode(), "key", None),
    ("lower-case scheme", lambda w: "bearer " + w.key, "key", None),
    ("wrong username", lambda w: basic("alice", w.key), ErrorCode.UNAUTHORIZED, "username must be KEY"),
    ("lower-case username", lambda w: basic("key", w.key), ErrorCode.UNAUTHORIZED, "username must be KEY"),
    ("wrong key", lambda w: basic("KEY", forged_key(w)), ErrorCode.UNAUTHORIZED, "invalid access key"),
    ("unknown key id", lambda w: basic("KEY", "izr_" + "0" * 16 + "_" + "a" * 43), ErrorCode.UNAUTHORIZED, "invalid access key"),
    ("not a key", lambda w: basic("KEY", "hunter2"), ErrorCode.UNAUTHORIZED, "not an izreg access key"),
    ("revoked key", lambda w: basic("KEY", w.revoked_key), ErrorCode.UNAUTHORIZED, "revoked"),
    ("revoked bearer", lambda w: "Bearer " + w.revoked_key, ErrorCode.UNAUTHORIZED, "revoked"),
    ("malformed basic", lambda w: b"Basic !!!", ErrorCode.UNAUTHORIZED, "malformed"),
    ("basic without colon", lambda w: b"Basic " + base64.b64encode(b"KEY"), ErrorCode.UNAUTHORIZED, "malformed"),
    ("scheme only", lambda w: b"Basic", ErrorCode.UNAUTHORIZED, "malformed"),
    ("other scheme", lambda w: "Digest " + w.key, ErrorCode.UNAUTHORIZED, "unsupported"),
    ("token while the service is off", lambda w: b"Bearer izt_abc.def", ErrorCode.UNAUTHORIZED, "token service is off"),
    ("non-utf8 basic", lambda w: b"Basic " + base64.b64encode(b"KEY:\xff\xfe"), ErrorCode.UNAUTHORIZED, "malformed"),
]


def test_no_credentials_on_the_tls_listener_also_name_the_device_certificate(world):
    auth = make(world)
    with pytest.raises(RegistryError) as plain:
        auth.authenticate(None, ADDR, realm=REALM)
    assert plain.value.message == "authentication required: docker login <registry host> -u KEY -p <access key>"
    with pytest.raises(RegistryError) as tls:
        auth.authenticate(None, ADDR, realm=REALM, certificates=True)
    assert tls.value.message == ("authentication required: docker login <registry host> -u KEY -p <access key>,"
                                 " or a device presents its client certificate")
    with pytest.raises(RegistryError) as wrong:  # credentials sent: their own refusal, as before
        auth.authenticate(basic("alice", world.key), ADDR, realm=REALM, certificates=True)
    assert "username must be KEY" in wrong.value.message


@pytest.mark.parametrize("name, header, expected, fragment", CASES, ids=[c[0] for c in CASES])
def test_authenticate(world, name, header, expected, fragment):
    auth = make(world)
    if isinstance(expected, str):
        principal = auth.authenticate(header(world), ADDR, realm=REALM)
        assert principal == Principal(expected, world.account, keys.parse(world.key).key_id, False)
        return
    with pytest.raises(RegistryError) as e:
        auth.authenticate(header(world), ADDR, realm=REALM)
    assert e.value.code is expected
    sent = header(world)
    if sent and (sent.decode() if isinstance(sent, bytes) else sent).lower().startswith("bearer "):
        # never Basic to a Bearer request: a browser's fetch() would wait for a login prompt
        assert e.value.headers["WWW-Authenticate"] == 'Bearer realm="izreg",error="invalid_token"'
    else:
        assert e.value.headers["WWW-Authenticate"] == 'Basic realm="izreg"'
    assert fragment in e.value.message


def test_read_only_key(world):
    auth = make(world)
    principal = auth.authenticate(basic("KEY", world.read_only_key), ADDR, realm=REALM)
    assert principal.read_only and principal.account == world.account
    auth.authorize(principal, world.repo(), Action.PULL)
    for action in (Action.PUSH, Action.DELETE):
        with pytest.raises(RegistryError) as e:
            auth.authorize(principal, world.repo(), action)
        assert e.value.code is ErrorCode.DENIED


def test_other_account_is_denied(world):
    auth = make(world)
    principal = auth.authenticate(basic("KEY", world.other_key), ADDR, realm=REALM)
    with pytest.raises(RegistryError) as e:
        auth.authorize(principal, world.repo(), Action.PULL)
    assert e.value.code is ErrorCode.DENIED
    # the cross-mount check: pull on the from-repository
    with pytest.raises(RegistryError):
        auth.authorize(principal, world.repo("base"), Action.PULL)
    auth.authorize(principal, world.repo("base", account=world.other_account), Action.PUSH)


def test_revocation_takes_effect_on_the_next_request(world):
    auth = make(world)
    assert auth.authenticate(basic("KEY", world.key), ADDR, realm=REALM).kind == "key"
    world.store.revoke_key(keys.parse(world.key).key_id, world.clock())
    with pytest.raises(RegistryError) as e:
        auth.authenticate(basic("KEY", world.key), ADDR, realm=REALM)
    assert e.value.code is ErrorCode.UNAUTHORIZED


def test_last_used_is_written_at_most_once_a_minute(world):
    key_id = keys.parse(world.key).key_id
    writes = []
    touch = world.store.touch_keys
    world.store.touch_keys = lambda stamps: (writes.append(dict(stamps)), touch(stamps))[1]
    auth = make(world)
    start = world.clock()
    for _ in range(5):
        auth.authenticate(basic("KEY", world.key), ADDR, realm=REALM)
        world.clock.advance(10)
    assert writes == []  # no write on the request's thread: the stamp waits for the flush
    assert auth.last_used.flush() == 1
    assert writes == [{key_id: start}]
    assert world.store.get_key(key_id).last_used == start
    world.clock.advance(20)  # 70 s after the first use
    auth.authenticate(basic("KEY", world.key), ADDR, realm=REALM)
    auth.authenticate(basic("KEY", world.key), ADDR, realm=REALM)
    assert auth.last_used.flush() == 1 and auth.last_used.flush() == 0
    assert writes == [{key_id: start}, {key_id: start + 70}]
    assert world.store.get_key(key_id).last_used == start + 70


def test_secrets_never_reach_the_log_or_errors(world):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        auth = make(world)
        forged = forged_key(world)
        for header in (basic("KEY", forged), basic("bob", world.key), "Bearer " + forged):
            with pytest.raises(RegistryError) as e:
                auth.authenticate(header, ADDR, realm=REALM)
            for shown in (str(e.value), repr(e.value), json.dumps(e.value.to_json()), repr(e.value.headers)):
                assert keys.parse(world.key).secret not in shown
                assert keys.parse(forged).secret not in shown
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert "failed authentication" in text
    assert keys.parse(world.key).secret not in text and keys.parse(forged).secret not in text
    assert keys.parse(world.key).secret not in repr(auth)


# Challenges ------------------------------------------------------------------------


def test_challenges(world):
    assert make(world).challenge("repository:x:pull") == 'Basic realm="izreg"'
    auth = make(world, token_service=True)
    assert auth.challenge(realm=REALM) == f'Bearer realm="{REALM}",service="izreg"'
    assert auth.challenge("repository:a/b:pull,push", realm=REALM) == (
        f'Bearer realm="{REALM}",service="izreg",scope="repository:a/b:pull,push"')
    assert auth.challenge("registry:catalog:*", error="insufficient_scope", realm="https://h/t") == (
        'Bearer realm="https://h/t",service="izreg",scope="registry:catalog:*",error="insufficient_scope"'
    )
    with pytest.raises(ValueError):
        make(world, token_service=True).challenge()


def test_bearer_requests_are_challenged_bearer(world):
    """RFC 6750: a failed Bearer credential gets ``Bearer ... error="invalid_token"``, never ``Basic``."""
    auth = make(world)
    for header, expected in [
        ("Bearer " + forged_key(world), 'Bearer realm="izreg",error="invalid_token"'),
        (b"bearer " + world.revoked_key.encode(), 'Bearer realm="izreg",error="invalid_token"'),
        ("Bearer not-a-key", 'Bearer realm="izreg",error="invalid_token"'),
        (basic("KEY", forged_key(world)), 'Basic realm="izreg"'),
    ]:
        with pytest.raises(RegistryError) as e:
            auth.authenticate(header, ADDR, realm=REALM)
        assert e.value.headers["WWW-Authenticate"] == expected, header
    # the browse API asks for Bearer also when no credential was sent (no error: nothing was wrong)
    for header in (None, "Basic Og=="):
        with pytest.raises(RegistryError) as e:
            auth.authenticate(header, ADDR, bearer=True)
        assert e.value.headers["WWW-Authenticate"] == 'Bearer realm="izreg"'
    with pytest.raises(RegistryError) as e:
        auth.authenticate(basic("KEY", forged_key(world)), ADDR, bearer=True)
    assert e.value.headers["WWW-Authenticate"] == 'Bearer realm="izreg"'
    # with the token service, the usual challenge plus the error
    auth = make(world, token_service=True)
    with pytest.raises(RegistryError) as e:
        auth.authenticate("Bearer " + forged_key(world), ADDR, ["repository:a/b:pull"], realm=REALM)
    assert e.value.headers["WWW-Authenticate"] == (
        f'Bearer realm="{REALM}",service="izreg",scope="repository:a/b:pull",error="invalid_token"')


def test_authorize_puts_the_scope_in_the_challenge(world):
    """A token without the scope: challenged for it (a push asks pull,push as Docker does)."""
    auth = make(world, token_service=True)
    repo = world.repo()
    principal = auth.authenticate("Bearer " + get_token(auth, world.key)["token"], ADDR, realm=REALM)
    with pytest.raises(RegistryError) as e:
        auth.authorize(principal, repo, Action.PUSH, realm=REALM)
    assert e.value.headers["WWW-Authenticate"].endswith(f'scope="repository:{repo.name}:pull,push",error="insufficient_scope"')
    with pytest.raises(RegistryError) as e:
        auth.authorize(principal, repo, Action.DELETE, realm=REALM)
    assert e.value.headers["WWW-Authenticate"].endswith(f'scope="repository:{repo.name}:delete",error="insufficient_scope"')


# Tokens ---------------------------------------------------------------------------


def get_token(auth, key, *scopes, method="GET"):
    if method == "GET":
        params = {b"service": [b"izreg"], b"scope": [s.encode() for s in scopes], b"account": [b"KEY"]}
        return token_service(auth).issue_token(b"GET", basic("KEY", key), params, ADDR)
    params = {b"grant_type": [b"password"], b"username": [b"KEY"], b"password": [key.encode()], b"service": [b"izreg"]}
    if scopes:
        params[b"scope"] = [" ".join(scopes).encode()]
    return token_service(auth).issue_token(b"POST", None, params, ADDR)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_token_flow(world, method):
    auth = make(world, token_service=True)
    repo, other = world.repo(), world.repo(account=world.other_account)
    body = get_token(auth, world.key, f"repository:{repo.name}:pull,push", f"repository:{other.name}:pull", method=method)
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 3600
    assert body["issued_at"] == "2023-11-14T22:13:20Z"
    assert "refresh_token" not in body
    assert world.key not in body["token"]
    principal = auth.authenticate("Bearer " + body["token"], ADDR, realm=REALM)
    assert principal.kind == "token" and principal.account == world.account
    # granted per repository: everything the key may do there (oras-py never asks twice)
    assert [str(s) for s in principal.scopes] == [f"repository:{repo.name}:pull,push,delete"]
    auth.authorize(principal, repo, Action.PUSH)
    auth.authorize(principal, repo, Action.DELETE)
    # a repository that was not asked for: 401 asking for a token with it, not 403
    third = world.repo("third")
    with pytest.raises(RegistryError) as e:
        auth.authorize(principal, third, Action.DELETE, realm=REALM)
    assert e.value.code is ErrorCode.UNAUTHORIZED
    assert e.value.headers["WWW-Authenticate"] == (
        f'Bearer realm="{REALM}",service="izreg",scope="repository:{third.name}:delete",error="insufficient_scope"'
    )
    # the other account was asked for and not granted: 403
    with pytest.raises(RegistryError) as e:
        auth.authorize(principal, other, Action.PULL)
    assert e.value.code is ErrorCode.DENIED


def test_token_for_read_only_key_grants_pull_only(world):
    auth = make(world, token_service=True)
    repo = world.repo()
    body = get_token(auth, world.read_only_key, f"repository:{repo.name}:pull,push,delete")
    principal = auth.authenticate("Bearer " + body["token"], ADDR, realm=REALM)
    assert [str(s) for s in principal.scopes] == [f"repository:{repo.name}:pull"]
    with pytest.raises(RegistryError) as e:
        auth.authorize(principal, repo, Action.PUSH)
    assert e.value.code is ErrorCode.DENIED


def test_login_token_without_scope_authenticates(world):
    auth = make(world, token_service=True)
    body = get_token(auth, world.key)
    principal = auth.authenticate(b"Bearer " + body["token"].encode(), ADDR, realm=REALM)
    assert principal.scopes == ()
    with pytest.raises(RegistryError) as e:
        policy.authorize_catalog(principal)
    assert e.value.code is ErrorCode.UNAUTHORIZED  # the guard adds the catalog challenge
    catalog = get_token(auth, world.key, "registry:catalog:*")
    assert policy.authorize_catalog(auth.authenticate("Bearer " + catalog["token"], ADDR, realm=REALM)) == world.account
    assert policy.authorize_catalog(auth.authenticate(basic("KEY", world.key), ADDR, realm=REALM)) == world.account


def test_token_expires_and_raw_key_does_not(world):
    auth = make(world, token_service=True)
    token = get_token(auth, world.key)["token"]
    world.clock.advance(3599)
    auth.authenticate("Bearer " + token, ADDR, realm=REALM)
    world.clock.advance(1)
    with pytest.raises(RegistryError) as e:
        auth.authenticate("Bearer " + token, ADDR, realm=REALM)
    assert "expired" in e.value.message
    assert auth.authenticate("Bearer " + world.key, ADDR, realm=REALM).kind == "key"


def test_token_of_revoked_key_stops_working(world):
    auth = make(world, token_service=True)
    token = get_token(auth, world.key)["token"]
    auth.authenticate("Bearer " + token, ADDR, realm=REALM)
    world.store.revoke_key(keys.parse(world.key).key_id, world.clock())
    with pytest.raises(RegistryError) as e:
        auth.authenticate("Bearer " + token, ADDR, realm=REALM)
    assert "revoked" in e.value.message


def test_tokens_end_with_the_process_and_cannot_be_forged(world):
    """The signing secret lives in memory only: a restarted server refuses old tokens (clients fetch new ones)."""
    first = make(world, token_service=True)
    token = get_token(first, world.key)["token"]
    assert first.authenticate("Bearer " + token, ADDR, realm=REALM).kind == "token"
    restarted = make(world, token_service=True)
    with pytest.raises(RegistryError) as e:
        restarted.authenticate("Bearer " + token, ADDR, realm=REALM)
    assert e.value.code is ErrorCode.UNAUTHORIZED
    forged = tokens.Signer(b"x" * 32).sign(first.signer().verify(token, world.clock()))
    with pytest.raises(RegistryError):
        first.authenticate("Bearer " + forged, ADDR, realm=REALM)


TOKEN_FAILURES = [
    ("no credentials", "GET", None, {}, "credentials required"),
    ("wrong username", "GET", lambda w: basic("bob", w.key), {}, "username must be KEY"),
    ("wrong key", "GET", lambda w: basic("KEY", forged_key(w)), {}, "invalid access key"),
    ("revoked key", "GET", lambda w: basic("KEY", w.revoked_key), {}, "revoked"),
    ("bearer", "GET", lambda w: "Bearer " + w.key, {}, "Basic credentials"),
    ("post wrong password", "POST", None, {"grant_type": ["password"], "username": ["KEY"], "password": ["nope"]}, "not an izreg"),
    ("post wrong username", "POST", None, {"grant_type": ["password"], "username": ["me"], "password": ["x"]}, "username must be KEY"),
    ("post refresh grant", "POST", None, {"grant_type": ["refresh_token"], "refresh_token": ["x"]}, "grant_type"),
    ("post no password", "POST", None, {"grant_type": ["password"], "username": ["KEY"]}, "credentials required"),
]


@pytest.mark.parametrize("name, method, header, params, fragment", TOKEN_FAILURES, ids=[c[0] for c in TOKEN_FAILURES])
def test_token_endpoint_refuses(world, name, method, header, params, fragment):
    auth = make(world, token_service=True)
    with pytest.raises(RegistryError) as e:
        token_service(auth).issue_token(method, header(world) if header else None, params, ADDR)
    assert e.value.code is ErrorCode.UNAUTHORIZED
    assert e.value.headers["WWW-Authenticate"] == 'Basic realm="izreg"'
    assert fragment in e.value.message


def test_token_endpoint_off(world):
    with pytest.raises(RegistryError) as e:
        token_service(make(world)).issue_token("GET", basic("KEY", world.key), {}, ADDR)
    assert e.value.code is ErrorCode.NOT_FOUND


def test_post_with_basic_header_and_no_grant(world):
    auth = make(world, token_service=True)
    body = token_service(auth).issue_token("POST", basic("KEY", world.key), {"service": ["izreg"]}, ADDR)
    assert auth.authenticate("Bearer " + body["access_token"], ADDR, realm=REALM).kind == "token"


# Rate limit -------------------------------------------------------------------------


def test_failures_are_rate_limited_per_address(world):
    auth = make(world, limiter=FailureLimiter(limit=3, window=60.0))
    bad = basic("KEY", forged_key(world))
    for _ in range(3):
        with pytest.raises(RegistryError) as e:
            auth.authenticate(bad, ADDR, realm=REALM)
        assert e.value.code is ErrorCode.UNAUTHORIZED
        world.clock.advance(1)
    # blocked now, even with a good key; the first failure leaves the window at +60
    with pytest.raises(RegistryError) as e:
        auth.authenticate(basic("KEY", world.key), ADDR, realm=REALM)
    assert e.value.code is ErrorCode.TOOMANYREQUESTS
    assert e.value.headers == {"Retry-After": "57"}
    # other addresses are not affected; requests without credentials are not counted
    assert auth.authenticate(basic("KEY", world.key), "198.51.100.7").kind == "key"
    with pytest.raises(RegistryError) as e:
        auth.authenticate(None, ADDR, realm=REALM)
    assert e.value.code is ErrorCode.UNAUTHORIZED
    world.clock.advance(57)
    assert auth.authenticate(basic("KEY", world.key), ADDR, realm=REALM).kind == "key"


def test_token_endpoint_is_rate_limited_too(world):
    auth = make(world, token_service=True, limiter=FailureLimiter(limit=2, window=60.0))
    for _ in range(2):
        with pytest.raises(RegistryError):
            token_service(auth).issue_token("GET", basic("KEY", forged_key(world)), {}, ADDR)
    with pytest.raises(RegistryError) as e:
        token_service(auth).issue_token("GET", basic("KEY", world.key), {}, ADDR)
    assert e.value.code is ErrorCode.TOOMANYREQUESTS


@pytest.mark.parametrize(
    "failures, now, expected",
    [
        ([], 0.0, None),
        ([0.0] * 9, 1.0, None),
        ([0.0] * 10, 1.0, 59),
        ([0.0] * 10, 59.5, 1),
        ([0.0] * 10, 60.0, None),
        ([0.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0], 61.0, 29),
    ],
)
def test_limiter_table(failures, now, expected):
    limiter = FailureLimiter(limit=10, window=60.0)
    for when in failures:
        limiter.record_failure(ADDR, when)
    assert limiter.retry_after(ADDR, now) == expected


def test_limiter_memory_is_bounded():
    limiter = FailureLimiter(limit=1, window=60.0, max_addresses=2)
    for address in ("a", "b", "c"):
        limiter.record_failure(address, 0.0)
    assert limiter.retry_after("a", 1.0) is None  # the stalest was dropped
    assert limiter.retry_after("c", 1.0) == 59


def test_token_whose_account_differs_from_its_key_is_refused(world):
    auth = make(world, token_service=True)
    key_id = keys.parse(world.key).key_id
    claims = tokens.TokenClaims(key_id, world.other_account, False, (), world.clock(), world.clock() + 60)
    token = auth.signer().sign(claims)  # validly signed, but the key belongs to another account
    with pytest.raises(RegistryError) as e:
        auth.authenticate("Bearer " + token, ADDR, realm=REALM)
    assert e.value.code is ErrorCode.UNAUTHORIZED


@pytest.mark.parametrize("header", ["Basic Og==", "basic  Og== ", b"Basic Og=="])
def test_empty_basic_credentials_are_anonymous_not_a_failure(world, header):
    """skopeo with no credentials answers a Basic challenge with ``:``; that never trips the limiter."""
    auth = make(world, limiter=FailureLimiter(limit=2, window=60))
    for _ in range(5):
        with pytest.raises(RegistryError) as e:
            auth.authenticate(header, ADDR, realm=REALM)
        assert e.value.code is ErrorCode.UNAUTHORIZED
    assert auth.authenticate(basic("KEY", world.key), ADDR, realm=REALM).kind == "key"
