"""
The browse page's files at ``/ui/`` (izreg.http.ui.pages), in process: what
is served, with which headers, and that ``[ui] enabled = false`` turns it off.
The page itself is driven in a real browser in tests/browser.
"""

from __future__ import annotations

import json
import re

import pytest
import pytest_twisted

from izreg.http.ui.pages import FILES, StaticPages
from tests.http.conftest import header, start_server

SECURITY = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@pytest_twisted.async_yield_fixture(scope="module")
async def site(tmp_path_factory):
    server = await start_server(tmp_path_factory.mktemp("ui"))
    yield server
    await server.service.stopService()


def assert_secure(response):
    for name, value in SECURITY.items():
        assert header(response, name) == value, name
    policy = dict(part.strip().split(" ", 1) for part in header(response, "Content-Security-Policy").split(";"))
    assert policy["default-src"] == "'self'"
    for directive in ("script-src", "style-src"):
        assert policy[directive] == "'self'", "no inline script or style, no other origin"
    assert policy["frame-ancestors"] == "'none'" and policy["form-action"] == "'none'"


@pytest.mark.parametrize("path, content_type", [
    ("/ui/", "text/html; charset=utf-8"),
    ("/ui/app.js", "text/javascript; charset=utf-8"),
    ("/ui/app.css", "text/css; charset=utf-8"),
    ("/ui/favicon.svg", "image/svg+xml"),
])
@pytest_twisted.ensureDeferred
async def test_files_are_served_with_strict_headers(site, path, content_type):
    response, body = await site.request("GET", path)
    assert response.code == 200
    assert header(response, "Content-Type") == content_type
    assert response.length == len(body) > 0
    assert_secure(response)
    etag = header(response, "ETag")
    again, again_body = await site.request("GET", path, headers={"If-None-Match": etag})
    assert again.code == 304 and again_body == b""
    assert_secure(again)
    head, head_body = await site.request("HEAD", path)
    assert head.code == 200 and head_body == b""
    assert_secure(head)


@pytest.mark.parametrize("path", ["/ui/index.html.bak", "/ui/..%2Fpages.py", "/ui/static%2Fapp.js", "/ui/a/b"])
@pytest_twisted.ensureDeferred
async def test_only_the_listed_files_are_served(site, path):
    response, body = await site.request("GET", path)
    assert response.code == 404
    assert b"import" not in body


@pytest_twisted.ensureDeferred
async def test_ui_without_slash_leads_to_the_page(site):
    response, _ = await site.request("GET", "/ui", allow_redirects=False)
    assert response.code in (301, 302, 307, 308)
    assert header(response, "Location").endswith("/ui/")


@pytest_twisted.ensureDeferred
async def test_the_root_leads_to_the_page(site):
    # the start-up line says "izreg serving http://127.0.0.1:5000/": opened in a browser, that was a JSON 404
    for method in ("GET", "HEAD"):
        response, _ = await site.request(method, "/", allow_redirects=False)
        assert response.code == 302, method
        assert header(response, "Location").endswith("/ui/")


@pytest_twisted.ensureDeferred
async def test_ui_answers_only_get_and_head(site):
    response, _ = await site.request("POST", "/ui/", body=b"key=izr_x")
    assert response.code == 405


@pytest_twisted.ensureDeferred
async def test_disabled(tmp_path):
    server = await start_server(tmp_path, ui_enabled=False)
    try:
        for path in ("/ui/", "/ui/app.js"):
            response, body = await server.request("GET", path)
            assert response.code == 404, path
            assert b"[ui] enabled = false" in body
        response, body = await server.request("GET", "/")
        assert response.code == 404
        assert json.loads(body)["errors"][0]["message"] == ("the browse page is off ([ui] enabled = false);"
                                                             " the registry API is at /v2/")
    finally:
        await server.service.stopService()


def test_the_page_has_no_inline_script_or_style():
    """What the Content-Security-Policy would block anyway: the page must not need it."""
    pages = StaticPages()
    html = pages.files[""][0].decode()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    assert scripts and all(body.strip() == "" for body in scripts)
    assert not re.search(r"<style\b", html)
    assert not re.search(r"\s(on[a-z]+|style)\s*=", html)
    assert "http://" not in html and "https://" not in html, "no CDN: everything from this origin"
    script = re.sub(r"^\s*//.*$", "", pages.files["app.js"][0].decode(), flags=re.M)  # code, not comments
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "document.write" not in script
    assert "localStorage" not in script and "document.cookie" not in script
    assert set(FILES) == {"", "app.js", "app.css", "favicon.svg"}


@pytest.mark.parametrize("path", ["/v2/_izreg/repositories", "/v2/0123456789abcdef0123456789abcdef/app/_izreg/manifests"])
@pytest.mark.parametrize("authorization", [
    None,
    "Basic S0VZOm5vdC1hLWtleQ==",  # KEY:not-a-key
    "Bearer izr_0123456789abcdef_" + "A" * 43,
])
@pytest_twisted.ensureDeferred
async def test_the_page_s_api_calls_are_never_challenged_basic(site, path, authorization):
    """Chromium holds a fetch() answered ``WWW-Authenticate: Basic`` for its own login prompt."""
    response, _ = await site.request("GET", path, headers={"Authorization": authorization} if authorization else {})
    assert response.code == 401
    challenge = header(response, "WWW-Authenticate")
    assert challenge.startswith('Bearer realm="izreg"'), challenge
    if authorization and authorization.startswith("Bearer"):
        assert 'error="invalid_token"' in challenge
