"""
The browse page (``/ui/``) in a real headless Chromium, against the real
``twistd izreg server`` on loopback: images pushed with skopeo, one of them
pulled by a device over the TLS listener with its certificate.

A person pastes an access key, sees the account's repositories and a
repository's manifests with the right sizes, copies a docker or helm pull
command, deletes an unused tag, meets the in-use refusal (409) of an image a
device pulled and overrides it. An annotation holding HTML is shown as text;
a wrong or revoked key gets a clear message, a read-only key is told why it
may not delete; the key never reaches the URL, a cookie or localStorage; the
layout fits a phone.

Every test leaves a screenshot in ``test-artifacts/browser/``
(L{tests.helpers.browser.artifact_path}). With
``IZREG_UPDATE_DOCS_SCREENSHOT=1`` the repository view is also written to
``docs/ui.png`` (the README's picture).
"""

from __future__ import annotations

import os
import shutil
import time
from decimal import ROUND_HALF_UP, Decimal

import pytest
import requests

from izreg.service.config import FIELDS
from tests.helpers.browser import artifact_path, require_chromium, start_chromium
from tests.helpers.ociclient import OCIClient, expect
from tests.helpers.ocilayout import build_image, build_layout, canonical_json, sha256_digest
from tests.helpers.server import REPO_ROOT, RegistryProcess, free_port
from tests.helpers.skopeo import SKOPEO, Skopeo

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg", reason="izreg's own page"),
    pytest.mark.skipif(not os.path.exists(SKOPEO), reason="skopeo is not installed"),
]

#: the in-use refusal of #11 (409 for a manifest a device pulled), configured by [delete] protect_in_use
IN_USE_PROTECTION = ("delete", "protect_in_use") in FIELDS

XSS = "<img src=x onerror=alert(1)>"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
WAIT = 30  # seconds: generous, the machine is shared


# -- what the page must show, computed here from what was pushed ---------------------------------


def human_size(size: int) -> str:
    """The page's size format: bytes below 1 KiB, else one decimal below 10 units, else whole units."""
    if size < 1024:
        return f"{size} B"
    value, units = Decimal(size), ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    unit = -1
    while True:
        value /= 1024
        unit += 1
        if not (value >= 1024 and unit < len(units) - 1):
            break
    step = Decimal("0.1") if value < 10 else Decimal("1")
    return f"{value.quantize(step, rounding=ROUND_HALF_UP)} {units[unit]}"


def test_human_size_matches_the_page_format():
    assert [human_size(n) for n in (0, 1023, 1024, 1280, 10 * 1024 - 52, 10 * 1024, 150_000, 3 * 1024**3)] == [
        "0 B", "1023 B", "1.0 KiB", "1.3 KiB", "9.9 KiB", "10 KiB", "146 KiB", "3.0 GiB"]


def image_size(image: dict) -> int:
    return len(image["manifest_bytes"]) + sum(len(data) for data in image["blobs"].values())


def exact_time(iso: str) -> str:
    return iso.replace("T", " ").replace("Z", " UTC")


# -- the registry, its data and the browser (one of each for the module) ----------------------------------


class Site:
    def __init__(self, registry: RegistryProcess, tmp):
        self.registry = registry
        self.tmp = tmp
        self.account = registry.account
        self.key = registry.creds.partition(":")[2]
        self.images: dict[str, dict] = {}  # "repo:tag" -> image
        self.url = registry.url + "/ui/"

    def name(self, path: str) -> str:
        return f"{self.account}/{path}"

    def api(self, method: str, path: str, key: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {key or self.key}", **kw.pop("headers", {})}
        return requests.request(method, self.registry.url + path, headers=headers, timeout=30, **kw)

    def manifests(self, path: str) -> dict[str, dict]:
        answer = expect(self.api("GET", f"/v2/{self.name(path)}/_izreg/manifests"), 200).json()
        return {m["digest"]: m for m in answer["manifests"]}

    def repositories(self) -> dict[str, dict]:
        answer = expect(self.api("GET", "/v2/_izreg/repositories"), 200).json()
        return {r["name"]: r for r in answer["repositories"]}


def _push(site: Site, skopeo: Skopeo, path: str, tag: str, seed: int, layers) -> dict:
    image = build_layout(site.tmp / f"layout-{seed}", tag=tag, layers=layers, seed=seed)
    skopeo.copy(f"oci:{image['path']}:{tag}", f"docker://{site.registry.host}/{site.name(path)}:{tag}")
    site.images[f"{path}:{tag}"] = image
    return image


def _push_annotated(site: Site, path: str, tag: str, annotations: dict) -> dict:
    """A manifest whose annotations hold what a page must never run (pushed with a raw client)."""
    client = OCIClient(site.registry.url, auth=site.registry.requests_auth)
    image = build_image(layers=(700,), seed=90)
    for data in image["blobs"].values():
        expect(client.push_blob_monolithic(site.name(path), data), 201)
    manifest = dict(image["manifest"], annotations=annotations)
    image["manifest_bytes"] = canonical_json(manifest)
    image["manifest_digest"] = sha256_digest(image["manifest_bytes"])
    expect(client.put_manifest(site.name(path), tag, image["manifest_bytes"]), 201)
    site.images[f"{path}:{tag}"] = image
    return image


def _push_chart(site: Site, path: str, version: str) -> dict:
    """A Helm chart as helm and oras push it: a helm config and one chart layer."""
    client = OCIClient(site.registry.url, auth=site.registry.requests_auth)
    config = canonical_json({"name": "web", "version": version, "apiVersion": "v2"})
    chart = b"helm chart bytes " * 40
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": HELM_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": HELM_CHART, "digest": sha256_digest(chart), "size": len(chart)}],
    }
    for data in (config, chart):
        expect(client.push_blob_monolithic(site.name(path), data), 201)
    body = canonical_json(manifest)
    expect(client.put_manifest(site.name(path), version, body), 201)
    image = {"manifest_bytes": body, "manifest_digest": sha256_digest(body),
             "blobs": {sha256_digest(config): config, sha256_digest(chart): chart}}
    site.images[f"{path}:{version}"] = image
    return image


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require_chromium()
    tmp = tmp_path_factory.mktemp("browse-page")
    registry = RegistryProcess(data_dir=str(tmp / "data"), log_path=str(tmp / "server.log"))
    try:
        registry.start()  # creates the account and its key (bootstrap.txt)
        certs = str(tmp / "certs")
        registry.cli("dev-certs", certs, "--account", registry.account, "--device-id", "gw-1")
        config = tmp / "izreg.toml"
        config.write_text("[devices]\npull_flush_interval = 1\n")
        tls_port = free_port()
        registry.extra_args = [
            "--config", str(config),
            "--tls-listen", f"tcp:{tls_port}:interface=127.0.0.1",
            "--tls-cert", os.path.join(certs, "server", "server.crt"),
            "--tls-key", os.path.join(certs, "server", "server.key"),
            "--device-ca", os.path.join(certs, "ca.crt"),
        ]
        registry.restart()
        site = Site(registry, tmp)
        site.tls_url, site.ca = f"https://127.0.0.1:{tls_port}", os.path.join(certs, "ca.crt")
        skopeo = Skopeo(registry, tmp)
        _push(site, skopeo, "app", "v1", 1, [2048, 150_000])
        _push(site, skopeo, "app", "v2", 2, [4096, 60_000])
        _push(site, skopeo, "tidy", "keep", 3, [1500])
        _push(site, skopeo, "tidy", "old", 4, [2500])
        _push(site, skopeo, "edge/web", "1.0", 5, [3000, 20_000])
        _push_annotated(site, "notes", "x", {"org.opencontainers.image.description": XSS,
                                             "org.opencontainers.image.title": "notes"})
        _push_chart(site, "charts/web", "0.1.0")

        # a device pulls edge/web:1.0 and app:v1 over the TLS listener with its certificate
        for path, tag in (("edge/web", "1.0"), ("app", "v1")):
            device = f"docker://127.0.0.1:{tls_port}/{site.name(path)}:{tag}"
            skopeo.run("copy", "--src-cert-dir", certs, device, f"oci:{tmp / 'on-device'}:{tag}")
        deadline = time.monotonic() + WAIT  # pull records are flushed every second here
        while not all(site.manifests(path)[site.images[f"{path}:{tag}"]["manifest_digest"]]["devices"]["count"]
                      for path, tag in (("edge/web", "1.0"), ("app", "v1"))):
            assert time.monotonic() < deadline, "the device's pulls were not recorded"
            time.sleep(0.2)
        yield site
    finally:
        registry.close()


@pytest.fixture(scope="module")
def chromium(site):
    driver = start_chromium(site.tmp / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The page in the browser, with the few steps the tests repeat."""

    def __init__(self, driver, site: Site):
        self.driver, self.site = driver, site

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, condition, message: str):
        """Until C{condition()} is true (the page re-renders rows, so an element may go stale meanwhile)."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        ignored = (StaleElementReferenceException, NoSuchElementException)
        return WebDriverWait(self.driver, WAIT, poll_frequency=0.05, ignored_exceptions=ignored).until(
            lambda d: condition(), message)

    def visible(self, css: str):
        return self.wait(lambda: (e := self.find_all(css)) and e[0].is_displayed() and e[0], f"{css} never shown")

    def login(self, key: str | None = None):
        self.visible("#key").send_keys(key or self.site.key)
        self.find("#login-button").click()

    def open_repositories(self):
        self.login()
        return self.wait(lambda: self.find_all("#repository-table tbody tr") and self.find("#repositories").is_displayed(),
                         "no repositories shown")

    def row(self, table: str, **data):
        (key, value), = data.items()
        css = f'#{table} tbody tr[data-{key}="{value}"]'
        return self.wait(lambda: (rows := self.find_all(css)) and rows[0], f"no row {css}")

    def open_repository(self, path: str):
        self.open_repositories()
        self.row("repository-table", name=self.site.name(path)).find_element("css selector", "a").click()
        self.wait(lambda: self.find("#repository-name").text == self.site.name(path), "repository not opened")
        return self.wait(lambda: self.find_all("#manifest-table tbody tr.manifest"), "no manifests shown")

    def confirm(self, expect_title: str, answer: bool, expect_text: str = ""):
        dialog = self.visible("#confirm")
        self.wait(lambda: expect_title in self.find("#confirm-title").text, f"no dialog {expect_title!r}")
        assert expect_text in self.find("#confirm-text").text
        title = self.find("#confirm-title").text
        self.find("#confirm-ok" if answer else "#confirm-cancel").click()
        # closed, or already asking the next question (a 409 can come back before a poll sees it closed)
        self.wait(lambda: not dialog.is_displayed() or self.find("#confirm-title").text != title,
                  "the dialog stayed open")

    def message(self, fragment: str) -> str:
        self.wait(lambda: fragment in self.find("#message").text, f"no message with {fragment!r}")
        return self.find("#message").text

    def storage(self) -> dict:
        return self.driver.execute_script(
            "return {session: Object.assign({}, sessionStorage), local: Object.assign({}, localStorage),"
            " cookie: document.cookie}")

    def console_problems(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser")
                if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]]


@pytest.fixture
def page(chromium, site, request):
    """A fresh start on /ui/ (no key stored); a screenshot of the end state afterwards."""
    chromium.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    chromium.get(site.url)
    chromium.execute_script("sessionStorage.clear(); localStorage.clear();")
    chromium.delete_all_cookies()
    chromium.get(site.url)
    chromium.get_log("browser")  # drop what came before
    page = Page(chromium, site)
    yield page
    chromium.save_screenshot(artifact_path(request.node.name))
    assert page.console_problems() == [], "the page broke its Content-Security-Policy or threw"


# -- the tests ------------------------------------------------------------------------------------------


def test_log_in_and_see_the_repositories_with_their_sizes(page, site):
    page.open_repositories()
    assert page.find("#account").text == site.account
    assert not page.find("#login").is_displayed()
    expected = site.repositories()
    app = site.images["app:v1"], site.images["app:v2"]
    assert expected[site.name("app")]["size"] == sum(image_size(i) for i in app)  # no blob shared
    for path, tags, manifests in [("app", 2, 2), ("tidy", 2, 2), ("edge/web", 1, 1), ("notes", 1, 1)]:
        row = page.row("repository-table", name=site.name(path))
        cells = row.find_elements("css selector", "td")
        assert cells[0].text == path
        assert cells[1].text == str(tags) and cells[2].text == str(manifests)
        size = expected[site.name(path)]["size"]
        assert cells[3].text == human_size(size)
        assert cells[3].find_element("css selector", "span").get_attribute("title").startswith(f"{size:,} bytes")
        last_push = cells[4].find_element("css selector", "time")
        assert last_push.get_attribute("title") == exact_time(expected[site.name(path)]["last_push"])
        assert last_push.text.endswith("ago") or last_push.text == "now", last_push.text


def test_open_a_repository_see_its_manifests_and_pull_commands(page, site, request):
    page.open_repository("app")
    shown = site.manifests("app")
    for tag in ("v1", "v2"):
        image = site.images[f"app:{tag}"]
        digest = image["manifest_digest"]
        row = page.row("manifest-table", digest=digest)
        assert [t.text for t in row.find_elements("css selector", ".tag-name")] == [tag]
        assert row.find_element("css selector", ".digest").get_attribute("title") == digest
        assert row.find_element("css selector", ".kind").text == "image"
        assert row.find_element("css selector", ".platforms").text == "linux/amd64"
        size = row.find_element("css selector", ".size")
        assert shown[digest]["size"] == image_size(image)
        assert size.text == human_size(image_size(image))
        assert size.get_attribute("title") == f"{image_size(image):,} bytes"
        pushed = row.find_elements("css selector", "time")[0]
        assert pushed.get_attribute("title") == exact_time(shown[digest]["pushed"])
        devices = row.find_element("css selector", ".devices").text
        if tag == "v1":  # pulled by the device
            assert devices.startswith("1 device\nlast ") and devices.endswith("ago"), devices
            last = row.find_elements("css selector", "time")
            assert last[1].get_attribute("title") == exact_time(shown[digest]["last_pulled"])
        else:
            assert devices == "none"
        details = page.find(f'#manifest-table tr[data-details-of="{digest}"]')
        command = details.find_element("css selector", "input.command").get_attribute("value")
        assert command == f"docker pull {site.registry.host}/{site.name('app')}:{tag}"
    assert page.storage()["session"] == {"izreg.accessKey": site.key}
    # the README's picture: this view, at a size that shows it without blank space
    page.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": 1200, "height": 400, "deviceScaleFactor": 1, "mobile": False})
    shot = artifact_path(request.node.name + "-readme")
    page.driver.save_screenshot(shot)
    if os.environ.get("IZREG_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(shot, os.path.join(REPO_ROOT, "docs", "ui.png"))


def test_delete_an_unused_tag(page, site):
    page.open_repository("tidy")
    old = site.images["tidy:old"]["manifest_digest"]
    row = page.row("manifest-table", digest=old)
    row.find_element("css selector", 'button.delete-tag[data-tag="old"]').click()
    page.confirm("Delete tag old?", answer=True, expect_text=site.name("tidy"))
    page.message(f"Deleted tag old of {site.name('tidy')}")
    # the manifest stays (a tag delete only removes the tag), now untagged
    page.wait(lambda: page.row("manifest-table", digest=old).find_elements("css selector", ".tag-name") == [],
              "the deleted tag is still shown")
    assert expect(site.api("GET", f"/v2/{site.name('tidy')}/tags/list"), 200).json()["tags"] == ["keep"]


@pytest.mark.xfail(not IN_USE_PROTECTION, strict=True, reason="the in-use refusal (#11) is not on main yet")
def test_delete_of_an_image_a_device_pulled_shows_the_409(page, site, request):
    page.open_repository("edge/web")
    digest = site.images["edge/web:1.0"]["manifest_digest"]
    row = page.row("manifest-table", digest=digest)
    assert row.find_element("css selector", ".devices").text.startswith("1 device")

    # refused (409), the registry's message shown, and kept when the person cancels the override
    row.find_element("css selector", "button.delete-manifest").click()
    page.confirm("Delete manifest", answer=True)
    page.wait(lambda: page.find("#confirm").is_displayed() or "Deleted" in page.find("#message").text,
              "neither the in-use question nor a result")
    assert page.find("#confirm").is_displayed(), "no 409: the registry deleted a manifest a device pulled"
    page.visible("#confirm")
    page.wait(lambda: "In use" in page.find("#confirm-title").text, "no in-use question")
    page.driver.save_screenshot(artifact_path(request.node.name + "-in-use"))
    page.confirm("In use", answer=False, expect_text="Izreg-Force-Delete")
    server_message = page.message("Kept manifest").partition(": ")[2]
    assert "device" in server_message, server_message
    assert page.row("manifest-table", digest=digest)
    expect(site.api("HEAD", f"/v2/{site.name('edge/web')}/manifests/{digest}"), 200)

    # overridden with Izreg-Force-Delete when the person says so
    page.row("manifest-table", digest=digest).find_element("css selector", "button.delete-manifest").click()
    page.confirm("Delete manifest", answer=True)
    page.confirm("In use", answer=True, expect_text=server_message)
    page.message("Deleted manifest")
    page.wait(lambda: not page.find_all(f'#manifest-table tr[data-digest="{digest}"]'), "the manifest is still shown")
    expect(site.api("HEAD", f"/v2/{site.name('edge/web')}/manifests/{digest}"), 404)


def test_an_annotation_holding_html_is_shown_as_text(page, site):
    from selenium.common.exceptions import NoAlertPresentException

    page.open_repository("notes")
    digest = site.images["notes:x"]["manifest_digest"]
    row = page.row("manifest-table", digest=digest)
    details = page.find(f'#manifest-table tr[data-details-of="{digest}"]')
    values = [dd.text for dd in details.find_elements("css selector", ".annotations dd")]
    assert XSS in values
    assert row.is_displayed()
    assert page.driver.execute_script("return document.querySelectorAll('img, [onerror]').length") == 0
    with pytest.raises(NoAlertPresentException):
        page.driver.switch_to.alert.text  # noqa: B018: no dialog opened


def test_a_repository_address_with_capitals_says_names_are_lowercase(page, site):
    """A typed #/r/<account>/MyApp: the registry's NAME_INVALID message, with the lowercase name to use."""
    page.open_repositories()
    page.driver.execute_script("location.hash = arguments[0]", f"#/r/{site.account}/MyApp")
    shown = page.message("repository names are lowercase")
    assert shown.endswith(f": use {site.account}/myapp"), shown


def test_a_wrong_or_revoked_key_gets_a_clear_message(page, site):
    # a wrong key: refused at once (a Basic challenge would hold fetch() for a login prompt)
    page.login("izr_0123456789abcdef_" + "A" * 43)
    error = page.visible("#login-error")
    assert "refused this access key" in error.text and "invalid access key" in error.text
    assert page.storage()["session"] == {}

    # a key that works, then is revoked while the page is open
    key = site.registry.cli("key", "create", site.account, "--name", "browser")
    page.login(key)
    page.row("repository-table", name=site.name("app"))
    site.registry.cli("key", "revoke", key.split("_")[1])
    page.find("#refresh").click()
    error = page.visible("#login-error")
    assert "revoked" in error.text, error.text
    assert page.storage()["session"] == {}
    assert not page.find("#repositories").is_displayed()


def test_the_key_is_never_in_the_url_cookies_or_local_storage(page, site):
    page.open_repository("app")
    page.find("#refresh").click()
    page.row("manifest-table", digest=site.images["app:v1"]["manifest_digest"])
    urls = page.driver.execute_script("return performance.getEntries().map(e => e.name)")
    assert any("/_izreg/manifests" in url for url in urls)
    state = page.storage()
    assert site.key not in page.driver.current_url
    assert all(site.key not in url for url in urls)
    assert page.driver.get_cookies() == [] and state["cookie"] == ""
    assert state["local"] == {}
    assert state["session"] == {"izreg.accessKey": site.key}
    assert site.key not in page.driver.page_source
    assert site.key not in site.registry.log_text()
    page.find("#logout").click()
    page.visible("#login")
    assert page.storage()["session"] == {}


def test_readable_on_a_phone(page, site, request):
    page.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    page.open_repository("app")
    widths = page.driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths == [390, 390], "the page scrolls sideways on a phone"
    row = page.row("manifest-table", digest=site.images["app:v1"]["manifest_digest"])
    assert row.find_element("css selector", ".size").is_displayed()
    # cards, not a table: the header row is hidden and each cell says what it is
    assert not page.find("#manifest-table thead").is_displayed()
    assert row.find_element("css selector", "td").get_attribute("data-label") == "Tags"


def test_a_helm_chart_gets_a_helm_pull_command_to_copy(page, site):
    page.open_repository("charts/web")
    chart = site.images["charts/web:0.1.0"]
    row = page.row("manifest-table", digest=chart["manifest_digest"])
    assert row.find_element("css selector", ".kind").text.startswith("Helm chart")
    assert row.find_element("css selector", ".size").text == human_size(image_size(chart))
    details = page.find(f'#manifest-table tr[data-details-of="{chart["manifest_digest"]}"]')
    command = f"helm pull oci://{site.registry.host}/{site.name('charts/web')} --version 0.1.0 --plain-http"
    assert details.find_element("css selector", "input.command").get_attribute("value") == command

    # Copy puts the command on the clipboard
    page.driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": site.registry.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    button = details.find_element("css selector", "button.copy")
    button.click()
    page.wait(lambda: button.text == "Copied", "the command was not copied")
    copied = page.driver.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, (e) => done('error: ' + e))")
    assert copied == command


def test_the_page_is_served_on_the_tls_listener_too(site):
    """Every listener serves /ui/ (a person on a gateway's https address); no client certificate needed."""
    response = requests.get(site.tls_url + "/ui/", verify=site.ca, timeout=30)
    assert response.status_code == 200 and "app.js" in response.text
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert response.headers["X-Frame-Options"] == "DENY"


def test_a_read_only_key_sees_why_it_may_not_delete(page, site):
    key = site.registry.cli("key", "create", site.account, "--name", "viewer", "--read-only")
    page.login(key)
    page.row("repository-table", name=site.name("tidy")).find_element("css selector", "a").click()
    keep = site.images["tidy:keep"]["manifest_digest"]
    page.row("manifest-table", digest=keep).find_element("css selector", 'button.delete-tag[data-tag="keep"]').click()
    page.confirm("Delete tag keep?", answer=True)
    assert "read-only" in page.message("Could not delete tag keep")
    assert "keep" in expect(site.api("GET", f"/v2/{site.name('tidy')}/tags/list"), 200).json()["tags"]
