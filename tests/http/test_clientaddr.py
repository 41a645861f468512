"""The client address behind trusted proxies (izreg.http.clientaddr), and the brake that uses it."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.web.http_headers import Headers

from izreg.http.clientaddr import MAX_HOPS, TrustedProxies
from tests.http.authhelpers import Keys, auth, basic, other_secret, unknown_key
from tests.http.conftest import start_server

PROXIES = TrustedProxies(["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"])


@pytest.mark.parametrize(
    "peer, headers, expected",
    [
        ("198.51.100.9", {"X-Forwarded-For": ["203.0.113.5"]}, "198.51.100.9"),  # untrusted peer: headers ignored
        ("10.1.2.3", {}, "10.1.2.3"),
        ("10.1.2.3", {"X-Forwarded-For": ["203.0.113.5"]}, "203.0.113.5"),
        ("10.1.2.3", {"X-Forwarded-For": ["1.1.1.1, 203.0.113.5, 10.9.9.9"]}, "203.0.113.5"),  # spoofed left part
        ("10.1.2.3", {"X-Forwarded-For": ["1.1.1.1", "203.0.113.5"]}, "203.0.113.5"),
        ("10.1.2.3", {"X-Forwarded-For": ["10.2.2.2, 192.0.2.1"]}, "10.2.2.2"),  # all trusted: the leftmost
        ("10.1.2.3", {"X-Forwarded-For": ["garbage"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ['for=203.0.113.7;proto=https, for="[2001:db8::1]:4711"']}, "203.0.113.7"),
        # both: one is the proxy's, the other the client's own (haproxy's option forwardfor passes a Forwarded
        # on): believed when they agree, else neither (the proxy), or the client would pick its address
        ("10.1.2.3", {"Forwarded": ['for="[2001:db9::1]:4711"'], "X-Forwarded-For": ["1.2.3.4"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9"], "X-Forwarded-For": ["198.51.100.7"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ["for=unknown"], "X-Forwarded-For": ["198.51.100.7"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ["for=198.51.100.7"], "X-Forwarded-For": ["198.51.100.7"]}, "198.51.100.7"),
        ("10.1.2.3", {"Forwarded": ["for=1.1.1.1, for=198.51.100.7"], "X-Forwarded-For": ["198.51.100.7"]},
         "198.51.100.7"),
        # a Forwarded element without for= (the proxy's, RFC 7239 allows it) names no client: the proxy is
        # the client, as it is when a proxy sets X-Forwarded-For and passes on a client's own Forwarded
        ("10.1.2.3", {"Forwarded": ["proto=https"], "X-Forwarded-For": ["198.51.100.7"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9, proto=https"]}, "10.1.2.3"),  # the client's own for= left of it
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9", "by=10.0.0.1;proto=https"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9, for=10.0.0.5, host=example.org"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9, host=example.org, for=10.0.0.5"]}, "10.0.0.5"),  # last trusted
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9, for=10.0.0.5;proto=https"]}, "203.0.113.9"),
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9, , "]}, "203.0.113.9"),  # empty list elements are none
        # for=unknown, an obfuscated for=_hidden, X-Forwarded-For's unknown: no address, the walk ends there too
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9, for=unknown"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9, for=_hidden"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ['for=203.0.113.9, for="_hidden:_port"']}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.9, for=unknown, for=10.0.0.5"]}, "10.0.0.5"),
        ("10.1.2.3", {"X-Forwarded-For": ["203.0.113.9, unknown"]}, "10.1.2.3"),
        ("10.1.2.3", {"X-Forwarded-For": ["203.0.113.9, _hidden, 10.0.0.5"]}, "10.0.0.5"),
        ("10.1.2.3", {"Forwarded": ["for=203.0.113.8:1234"]}, "203.0.113.8"),
        ("10.1.2.3", {"Forwarded": ["for=unknown"]}, "10.1.2.3"),
        # an IPv6 zone is any text to ipaddress (control characters, a new brake per zone): not a client's address
        ("10.1.2.3", {"X-Forwarded-For": ["fe80::1%\x1b[31mevil\x0b"]}, "10.1.2.3"),
        ("10.1.2.3", {"Forwarded": ['for="[fe80::1%eth0]"']}, "10.1.2.3"),
        ("10.1.2.3", {"X-Forwarded-For": ["2001:DB9:0::1"]}, "2001:db9::1"),  # written one way: one brake
        # a dual-stack listener (interface=::) sees an IPv4 proxy as IPv4-mapped: still the trusted proxy
        ("::ffff:10.1.2.3", {"X-Forwarded-For": ["203.0.113.5"]}, "203.0.113.5"),
        ("::ffff:10.1.2.3", {"X-Forwarded-For": ["203.0.113.5, ::ffff:192.0.2.1"]}, "203.0.113.5"),
        ("::ffff:198.51.100.9", {"X-Forwarded-For": ["203.0.113.5"]}, "::ffff:198.51.100.9"),
    ],
)
def test_client_address(peer, headers, expected):
    assert PROXIES.client(peer, Headers(headers)) == expected


def test_at_most_max_hops_are_read():
    """A client behind a trusted proxy may send thousands of trusted addresses: each is parsed, ~5 us."""
    far = ["203.0.113.5"] + ["10.0.0.1"] * MAX_HOPS
    for headers in ({"X-Forwarded-For": [", ".join(far)]}, {"Forwarded": [", ".join(f"for={hop}" for hop in far)]}):
        assert PROXIES.client("10.1.2.3", Headers(headers)) == "10.0.0.1"  # the farthest trusted proxy read
        headers = {name: [value[0].replace("10.0.0.1", "203.0.113.5", 1)] for name, value in headers.items()}
        assert PROXIES.client("10.1.2.3", Headers(headers)) == "203.0.113.5"  # within MAX_HOPS: the client


def test_no_trusted_proxies_means_the_peer():
    assert TrustedProxies().client("10.1.2.3", Headers({"X-Forwarded-For": ["1.2.3.4"]})) == "10.1.2.3"


@pytest_twisted.ensureDeferred
async def test_the_brake_is_per_forwarded_client_behind_a_trusted_proxy(tmp_path):
    server = await start_server(tmp_path, auth_failure_limit=3, trusted_proxies=("127.0.0.1",))
    try:
        keys = Keys.make(server)
        guesser = {"X-Forwarded-For": "203.0.113.5"}
        for _ in range(3):
            response, _ = await server.request("GET", "/v2/", headers={**guesser, **auth(basic(unknown_key()))})
            assert response.code == 401
        response, _ = await server.request("GET", "/v2/", headers={**guesser, **auth(basic(unknown_key()))})
        assert response.code == 429
        # another client behind the same proxy is not braked, and a valid key never is
        other = {"X-Forwarded-For": "203.0.113.6"}
        response, _ = await server.request("GET", "/v2/", headers={**other, **auth(basic(unknown_key()))})
        assert response.code == 401
        response, _ = await server.request("GET", "/v2/", headers={**guesser, **auth(basic(keys.a_key))})
        assert response.code == 200
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_brake_counts_ipv6_clients_per_64(tmp_path):
    """One IPv6 host has a whole /64 of addresses at will: a new one for each guess is still the same brake."""
    server = await start_server(tmp_path, auth_failure_limit=3, trusted_proxies=("127.0.0.1",))
    try:
        keys = Keys.make(server)

        async def status(address: str, credentials: str) -> int:
            headers = {"X-Forwarded-For": address, **auth(basic(credentials))}
            response, _ = await server.request("GET", "/v2/", headers=headers)
            return response.code

        guesses = [await status(f"2001:db8:1:2::{i}", unknown_key()) for i in range(1, 5)]
        assert guesses == [401, 401, 401, 429]
        assert await status("2001:db8:1:2:ffff:ffff:ffff:ffff", unknown_key()) == 429
        assert await status("2001:db8:1:3::1", unknown_key()) == 401  # the next /64 is another site
        # guesses of one key's secret: that key id is braked from the /64, from no other
        guesses = [await status(f"2001:db8:5:6:{i}::1", other_secret(keys.a_key)) for i in range(1, 5)]
        assert guesses == [401, 401, 401, 429]
        assert await status("2001:db8:5:6::77", keys.a_key) == 429
        assert await status("2001:db8:5:7::1", keys.a_key) == 200
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("trusted, sent, scheme", [
    (("127.0.0.1",), "https", "https"),  # haproxy ends TLS and says so: the client fetches its token over https
    (("127.0.0.1",), None, "http"),
    (("127.0.0.1",), "http, https", "https"),  # the nearest proxy's, the last
    (("127.0.0.1",), "gopher", "http"),  # no scheme of ours: ignored
    (("10.0.0.1",), "https", "http"),  # not from a trusted proxy: anyone could send it
    ((), "https", "http"),
])
async def test_the_token_realm_has_the_scheme_a_trusted_proxy_forwards(tmp_path, trusted, sent, scheme):
    server = await start_server(tmp_path, token_service=True, trusted_proxies=trusted)
    try:
        headers = {"X-Forwarded-Proto": sent} if sent else {}
        response, _ = await server.request("GET", "/v2/", headers={**headers, "Host": "registry.example.net"})
        assert response.code == 401
        challenge = response.headers.getRawHeaders("WWW-Authenticate")[0]
        assert f'realm="{scheme}://registry.example.net/v2/token"' in challenge, challenge
    finally:
        await server.service.stopService()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("host, sent", [
    ("registry.example.net", None),
    ("evil.example.org", "http"),  # a client's own Host and scheme: not echoed
    ("10.0.0.12:5000", None),  # a node's own address, as a health check or a misrouted client sends it
])
async def test_a_configured_token_realm_is_the_realm_whatever_host_is_sent(tmp_path, host, sent):
    realm = "https://registry.example.net/v2/token"
    server = await start_server(tmp_path, token_service=True, token_realm=realm, trusted_proxies=("127.0.0.1",))
    try:
        headers = {"X-Forwarded-Proto": sent} if sent else {}
        for path in ("/v2/", "/v2/_catalog"):  # no credentials; a catalog scope
            response, _ = await server.request("GET", path, headers={**headers, "Host": host})
            assert response.code == 401
            challenge = response.headers.getRawHeaders("WWW-Authenticate")[0]
            assert challenge.startswith(f'Bearer realm="{realm}",'), challenge
    finally:
        await server.service.stopService()
