"""
Device principals at the HTTP layer, without TLS.

A device is authenticated by its client certificate on the TLS listener;
that needs a real handshake, which the end-to-end TLS tests do. Here: what
a device principal may do (L{policy.authorize}), what the L{AccessGuard}
does with one (requests are fakes carrying the guard's cached principal),
and the order of the guard's checks on a TLS transport that has no client
certificate.
"""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from izreg.auth import policy
from izreg.auth.authenticator import Authenticator
from izreg.auth.failures import FailedAuthentications
from izreg.auth.policy import Action, Principal
from izreg.auth.ratelimit import FailureLimiter
from izreg.auth.store import AuthStore
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import Repository
from izreg.http.guard import AccessGuard
from izreg.storage.lmdbenv import open_env
from tests.http.authhelpers import basic, unknown_key

ACCOUNT = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
NOW = 1_700_000_000.0

DEVICE = Principal("device", ACCOUNT, read_only=True, device_id="d1")
OWN = Repository.parse(f"{ACCOUNT}/app")
FOREIGN = Repository.parse(f"{OTHER}/app")


class FakeRequest:
    """Just what the guard reads from a twisted.web request."""

    def __init__(self, authorization: bytes | None = None, transport=None, principal=None) -> None:
        self.headers = {b"authorization": authorization, b"host": b"registry.example:5443"}
        self.transport = transport
        self.client = type("Address", (), {"host": "192.0.2.7"})()
        if principal is not None:
            self._izreg_principal = principal

    def getHeader(self, name: bytes):
        return self.headers.get(name.lower())

    def isSecure(self) -> bool:
        return self.transport is not None


class TLSTransport:
    """A transport whose handle is an OpenSSL connection with no peer certificate."""

    def getHandle(self):
        return SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)


class NeverCalled:
    """A device verifier that fails the test if the guard asks it anything."""

    def verify(self, cert, now):
        raise AssertionError("the device verifier was consulted")


@pytest.fixture
def authenticator(tmp_path):
    env = open_env(str(tmp_path), 1 << 30)
    store = AuthStore(env)
    yield Authenticator(store, lambda: NOW, token_service=False, failures=FailedAuthentications(FailureLimiter(limit=3, window=60)))
    env.close()


@pytest.fixture
def guard(authenticator):
    return AccessGuard(authenticator, NeverCalled(), lambda: NOW)


# Policy ------------------------------------------------------------------------------


def test_device_may_pull_from_its_own_account():
    policy.authorize(DEVICE, OWN, Action.PULL)
    policy.authorize(DEVICE, Repository.parse(f"{ACCOUNT}/deep/er/name"), Action.PULL)


@pytest.mark.parametrize("action", [Action.PUSH, Action.DELETE])
def test_device_may_not_write(action):
    with pytest.raises(RegistryError) as e:
        policy.authorize(DEVICE, OWN, action)
    assert e.value.code is ErrorCode.DENIED
    assert e.value.detail == {"name": OWN.name, "action": action.value}


@pytest.mark.parametrize("action", list(Action))
def test_device_may_not_touch_another_account(action):
    with pytest.raises(RegistryError) as e:
        policy.authorize(DEVICE, FOREIGN, action)
    assert e.value.code is ErrorCode.DENIED
    assert e.value.code.status == 403


def test_device_is_never_given_token_scopes():
    assert DEVICE.scopes is None
    assert DEVICE.may(Action.PULL) and not DEVICE.may(Action.PUSH) and not DEVICE.may(Action.DELETE)


# The guard with a device principal -----------------------------------------------------


def test_guard_lets_a_device_pull_its_own_account(guard):
    request = FakeRequest(principal=DEVICE)
    assert guard.check(request, OWN, Action.PULL) is DEVICE
    assert guard.check(request, None, Action.PULL) is DEVICE  # /v2/


@pytest.mark.parametrize("repository, action", [(OWN, Action.PUSH), (OWN, Action.DELETE), (FOREIGN, Action.PULL),
                                                (FOREIGN, Action.PUSH)])
def test_guard_denies_a_device_anything_else(guard, repository, action):
    with pytest.raises(RegistryError) as e:
        guard.check(FakeRequest(principal=DEVICE), repository, action)
    assert e.value.code is ErrorCode.DENIED
    assert "WWW-Authenticate" not in e.value.headers


def test_catalog_is_denied_to_devices(guard):
    with pytest.raises(RegistryError) as e:
        guard.catalog_account(FakeRequest(principal=DEVICE))
    assert e.value.code is ErrorCode.DENIED
    assert "devices" in e.value.message


def test_catalog_is_allowed_to_a_key_of_the_same_shape(guard):
    """The refusal above is about devices, not about read-only principals."""
    key = Principal("key", ACCOUNT, key_id="0123456789abcdef", read_only=True)
    assert guard.catalog_account(FakeRequest(principal=key)) == ACCOUNT


def test_catalog_is_denied_to_devices_with_the_token_service(authenticator):
    authenticator.token_service = True
    guard = AccessGuard(authenticator, NeverCalled(), lambda: NOW)
    with pytest.raises(RegistryError) as e:
        guard.catalog_account(FakeRequest(principal=DEVICE))
    assert e.value.code is ErrorCode.DENIED


# Order of the guard's checks ---------------------------------------------------------------


def test_tls_without_a_client_certificate_is_a_401(guard):
    with pytest.raises(RegistryError) as e:
        guard.check(FakeRequest(transport=TLSTransport()), OWN, Action.PULL)
    assert e.value.code is ErrorCode.UNAUTHORIZED
    assert e.value.headers["WWW-Authenticate"] == 'Basic realm="izreg"'


def test_authorization_header_wins_over_the_tls_transport(guard, authenticator):
    """With a header, the certificate is never looked at (the verifier would fail the test)."""
    request = FakeRequest(basic(unknown_key()).encode(), transport=TLSTransport())
    with pytest.raises(RegistryError) as e:
        guard.check(request, OWN, Action.PULL)
    assert e.value.code is ErrorCode.UNAUTHORIZED
    assert "invalid access key" in e.value.message


def test_guard_caches_a_failure_so_it_counts_once(guard, authenticator):
    request = FakeRequest(basic(unknown_key()).encode())
    errors = []
    for _ in range(3):  # the early check when a body starts, the handler's, a cross-mount's
        with pytest.raises(RegistryError) as e:
            guard.check(request, OWN, Action.PUSH)
        errors.append(e.value)
    assert errors[0] is errors[1] is errors[2]
    # one failure recorded of the limit of 3: two more requests fail with 401, the next is refused
    assert authenticator.failures.limiter.retry_after("192.0.2.7", NOW) is None
    for _ in range(2):
        with pytest.raises(RegistryError) as e:
            guard.check(FakeRequest(basic(unknown_key()).encode()), OWN, Action.PULL)
        assert e.value.code is ErrorCode.UNAUTHORIZED
    with pytest.raises(RegistryError) as e:
        guard.check(FakeRequest(basic(unknown_key()).encode()), OWN, Action.PULL)
    assert e.value.code is ErrorCode.TOOMANYREQUESTS


def test_guard_caches_the_principal_per_request(guard, authenticator):
    record = authenticator.store.create_account(NOW)
    _, key = authenticator.store.create_key(record.account_id, NOW)
    request = FakeRequest(basic(key.reveal()).encode())
    first = guard.check(request, Repository.parse(f"{record.account_id}/app"), Action.PUSH)
    assert first.kind == "key" and first.account == record.account_id
    # the second check (another repository of the request) reuses it, and still authorizes
    with pytest.raises(RegistryError) as e:
        guard.check(request, FOREIGN, Action.PULL)
    assert e.value.code is ErrorCode.DENIED
    assert guard.check(request, None, Action.PULL) is first
