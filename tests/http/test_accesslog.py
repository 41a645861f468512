"""Route templates for the access log and the metrics: never a raw path."""

from __future__ import annotations

import pytest

from izreg.auth.policy import Principal
from izreg.http.accesslog import new_request_id, route_of

NAME = "0123456789abcdef0123456789abcdef/app/x"
DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("path, route, repository", [
    (f"/v2/{NAME}/manifests/v1", "/v2/{name}/manifests/{reference}", NAME),
    (f"/v2/{NAME}/manifests/{DIGEST}", "/v2/{name}/manifests/{reference}", NAME),
    (f"/v2/{NAME}/blobs/{DIGEST}", "/v2/{name}/blobs/{digest}", NAME),
    (f"/v2/{NAME}/blobs/uploads/", "/v2/{name}/blobs/uploads/", NAME),
    (f"/v2/{NAME}/blobs/uploads/0f0f", "/v2/{name}/blobs/uploads/{uuid}", NAME),
    (f"/v2/{NAME}/tags/list", "/v2/{name}/tags/list", NAME),
    (f"/v2/{NAME}/referrers/{DIGEST}", "/v2/{name}/referrers/{digest}", NAME),
    (f"/v2/{NAME}/_izreg/manifests", "/v2/{name}/_izreg/manifests", NAME),
    ("/v2/", "/v2/", None), ("/v2/_catalog", "/v2/_catalog", None), ("/readyz", "/readyz", None),
    ("/ui/app.js", "/ui/{file}", None), ("/ui/", "/ui/", None),
    ("/v2/nope", "other", None), ("/etc/passwd", "other", None), ("/v2/%ff", "other", None),
    (f"/v2/{NAME}/manifests/v1/extra", "other", None),
])
def test_route_of(path, route, repository):
    assert route_of(path.encode()) == (route, repository)


def test_request_ids():
    assert len(new_request_id(None)) == 24
    assert new_request_id(b"proxy-id-12345678") == "proxy-id-12345678"
    assert new_request_id(b"bad id\n{json}") != "bad id\n{json}"


def test_our_request_ids_are_unique():
    ids = {new_request_id(None) for _ in range(10000)}
    assert len(ids) == 10000 and all(len(i) == 24 and int(i, 16) >= 0 for i in ids)


class _Address:
    host = "127.0.0.1"


class _Request:
    """What the access log reads of a finished request."""

    method, path, code, sentLength, bytes_in, started = b"GET", b"/v2/x/tags/list", 200, 321, 0, 10.0
    request_id = "0123456789abcdef01234567"
    client = _Address()  # as twisted's Request; read through izreg.http.clientaddr (trusted proxies)

    def __init__(self, principal=None, authorization=None) -> None:
        self.principal, self.authorization = principal, authorization

    def getClientAddress(self):
        return _Address()

    def getHeader(self, name):
        return self.authorization


@pytest.mark.parametrize("principal", [
    None,
    Principal("key", "a" * 32, "b" * 16, False),
    Principal("device", "a" * 32, read_only=True, device_id="d" * 16),
])
def test_the_access_event_is_what_log_info_would_emit(principal):
    """The event built by hand (L{AccessLog.__call__}) has what C{log.info(LINE_KEY's format, ...)} gave, the same text."""
    from twisted.logger import LogLevel, globalLogPublisher

    from izreg.http import accesslog

    events, infos = [], []
    globalLogPublisher.addObserver(events.append)
    try:
        accesslog.AccessLog(lambda: 10.25, [infos.append])(_Request(principal, b"Bearer x"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("log_namespace") == "izreg.access"]
    fields = vars(infos[0])
    who = "anonymous" if principal is None else (
        f"key {principal.key_id}" if principal.kind == "key" else f"device {principal.account}/{principal.device_id}")
    expected = dict(fields, who=who, access_line=accesslog.LINE.format(who=who, **fields))
    assert {k: v for k, v in event.items() if not k.startswith("log_")} == expected
    assert event["log_level"] is LogLevel.info and event["log_format"] == "{access_line}"
    assert event["log_logger"] is accesslog.log and event["log_source"] is None and "log_time" in event
    assert event["access_line"] == f"127.0.0.1 GET other 200 in=0 out=321 0.250s {who} id=0123456789abcdef01234567"
