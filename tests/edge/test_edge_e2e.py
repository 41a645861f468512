"""
The edge end to end: a real registry (TLS, device CA), the real
``twistd izreg edge`` in front of it with the gateway's device certificate,
and clients on the "gateway" that send no credentials (skopeo, requests).
The Docker engine and containerd's ctr are in test_edge_docker.py.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import requests

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.ocilayout import layout_manifest_digest, read_layout_blob
from tests.helpers.server import free_port
from tests.helpers.skopeo import Skopeo

pytestmark = pytest.mark.edge

OCI = "application/vnd.oci.image.manifest.v1+json"
WARNING = '110 - "served from the edge cache; the registry is unreachable"'


def get(edge, path, **kw):
    return requests.get(edge.url + path, timeout=30, **kw)


def error_code(response) -> str:
    return response.json()["errors"][0]["code"]


def pull_with_skopeo(stack, ref: str, out) -> None:
    Skopeo(stack.edge, stack.tmp).copy(f"docker://{stack.edge.host}/{ref}", f"oci:{out}:v1")


def assert_same_image(image, out) -> None:
    assert layout_manifest_digest(out, "v1") == image["manifest_digest"]
    for digest, data in image["blobs"].items():
        assert read_layout_blob(out, digest) == data


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout}s")


def test_skopeo_pulls_through_the_edge_without_credentials(stack):
    repo = stack.repo()
    image = stack.push(repo, seed=11)
    mark = stack.edge.log_mark()
    pull_with_skopeo(stack, f"{repo}:v1", stack.tmp / "by-tag")
    assert_same_image(image, stack.tmp / "by-tag")
    stack.edge.wait_for_log(rf"GET /v2/{repo}/manifests/\S+ 200 miss", since=mark)
    for digest in image["blobs"]:
        stack.edge.wait_for_log(rf"cached {digest}", since=mark)
    # again, by digest: everything from the cache now
    mark = stack.edge.log_mark()
    pull_with_skopeo(stack, f"{repo}@{image['manifest_digest']}", stack.tmp / "by-digest")
    assert_same_image(image, stack.tmp / "by-digest")
    for digest in image["blobs"]:
        stack.edge.wait_for_log(rf"GET /v2/{repo}/blobs/{digest} 200 hit", since=mark)


def scrape(port: int) -> dict:
    """The edge's /metrics (its own listener), parsed: (name, labels as sorted tuples) -> value."""
    r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_a_miss_then_a_hit(make_stack):
    """--metrics-listen: Prometheus' /metrics on a listener of its own; a pull is a miss, the same again a hit."""
    port = free_port()
    s = make_stack("--metrics-listen", f"tcp:{port}:interface=127.0.0.1")
    assert get(s.edge, "/metrics").status_code == 404  # not on the listener the gateway's clients pull from
    repo = s.repo()
    image = s.push(repo, seed=13)
    blob_bytes = sum(len(data) for data in image["blobs"].values())
    image_bytes = blob_bytes + len(image["manifest_bytes"])
    before = scrape(port)
    assert before[("izreg_edge_upstream_reachable", ())] == 1
    assert before[("izreg_edge_cache_bytes", ())] == 0
    assert before[("izreg_edge_response_memory_limit_bytes", ())] == 256 * 1024 * 1024
    assert not [key for key in before if key[0] == "izreg_edge_requests_total" and "miss" in str(key)]

    mark = s.edge.log_mark()
    pull_with_skopeo(s, f"{repo}:v1", s.tmp / "miss")
    for digest in image["blobs"]:
        s.edge.wait_for_log(rf"cached {digest}", since=mark)
    missed = scrape(port)
    miss = ("izreg_edge_requests_total", (("source", "miss"), ("status", "200")))
    hit = ("izreg_edge_requests_total", (("source", "hit"), ("status", "200")))
    assert missed[miss] == 1 + len(image["blobs"])  # the manifest and each blob
    assert hit not in missed
    assert missed[("izreg_edge_response_bytes_total", (("source", "miss"),))] == image_bytes
    assert missed[("izreg_edge_fetched_bytes_total", (("kind", "blob"),))] == blob_bytes
    assert missed[("izreg_edge_fetched_bytes_total", (("kind", "manifest"),))] == len(image["manifest_bytes"])
    assert missed[("izreg_edge_cache_bytes", ())] == image_bytes
    assert missed[("izreg_edge_upstream_failures_total", ())] == 0

    pull_with_skopeo(s, f"{repo}@{image['manifest_digest']}", s.tmp / "hit")
    assert_same_image(image, s.tmp / "hit")
    hits = scrape(port)
    assert hits[hit] == 1 + len(image["blobs"])
    assert hits[miss] == missed[miss]
    assert hits[("izreg_edge_response_bytes_total", (("source", "hit"),))] == image_bytes
    assert hits[("izreg_edge_fetched_bytes_total", (("kind", "blob"),))] == blob_bytes  # nothing fetched again
    assert hits[("izreg_edge_upstream_reachable", ())] == 1


def test_ranges_tags_list_and_head(stack):
    repo = stack.repo()
    image = stack.push(repo, seed=12)
    layer = max(image["blobs"], key=lambda d: len(image["blobs"][d]))
    data = image["blobs"][layer]
    # uncached: the Range goes to the registry
    r = get(stack.edge, f"/v2/{repo}/blobs/{layer}", headers={"Range": "bytes=100-199"})
    assert (r.status_code, r.content) == (206, data[100:200])
    r = requests.head(f"{stack.edge.url}/v2/{repo}/blobs/{layer}", timeout=30)
    assert (r.status_code, int(r.headers["Content-Length"])) == (200, len(data))
    # cached: from the file
    mark = stack.edge.log_mark()
    assert get(stack.edge, f"/v2/{repo}/blobs/{layer}").content == data
    stack.edge.wait_for_log(rf"cached {layer}", since=mark)
    r = get(stack.edge, f"/v2/{repo}/blobs/{layer}", headers={"Range": "bytes=-10"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, data[-10:], f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}")
    stack.edge.wait_for_log(rf"GET /v2/{repo}/blobs/{layer} 206 hit", since=mark)
    r = get(stack.edge, f"/v2/{repo}/blobs/{layer}", headers={"Range": f"bytes={len(data)}-"})
    assert (r.status_code, error_code(r)) == (416, "RANGE_INVALID")
    assert get(stack.edge, f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": ["v1"]}
    r = requests.head(f"{stack.edge.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI}, timeout=30)
    assert (r.status_code, r.headers["Docker-Content-Digest"], r.content) == (200, image["manifest_digest"], b"")


def test_unknown_content_passes_the_registrys_404(stack):
    repo = stack.repo()
    stack.push(repo, seed=14)
    for path, code in ((f"/v2/{repo}/manifests/nope", "MANIFEST_UNKNOWN"),
                       (f"/v2/{stack.repo()}/manifests/v1", "NAME_UNKNOWN"),
                       (f"/v2/{repo}/blobs/sha256:{'0' * 64}", "BLOB_UNKNOWN")):
        r = get(stack.edge, path, headers={"Accept": OCI})
        direct = requests.get(stack.registry.url + path, headers={"Accept": OCI}, auth=stack.registry.requests_auth,
                              timeout=30)
        assert (r.status_code, error_code(r)) == (404, code)
        assert r.content == direct.content


def test_a_name_without_the_account_gets_the_registrys_denied_with_the_gateways_account(stack):
    """containers.local:8080/app:v1: the registry's 403, which names the form and the gateway's own account."""
    for path in ("/v2/app/manifests/v1", "/v2/library/app/tags/list"):
        r = get(stack.edge, path, headers={"Accept": OCI})
        assert (r.status_code, error_code(r)) == (403, "DENIED"), r.text
        assert f"your account id is {stack.account}: use {stack.account}/" in r.json()["errors"][0]["message"]
    r = get(stack.edge, "/v2/App/manifests/v1")  # not a name at all: the edge's own 400
    assert (r.status_code, error_code(r)) == (400, "NAME_INVALID")


def test_push_and_delete_are_refused_and_nothing_changes_upstream(stack):
    repo = stack.repo()
    image = stack.push(repo, seed=13)
    proc = Skopeo(stack.edge, stack.tmp).copy(f"oci:{image['path']}:v1", f"docker://{stack.edge.host}/{repo}:v2",
                                              check=False)
    assert proc.returncode != 0
    for method, path in (("DELETE", f"/v2/{repo}/manifests/{image['manifest_digest']}"),
                         ("DELETE", f"/v2/{repo}/manifests/v1"),
                         ("PUT", f"/v2/{repo}/manifests/v3"),
                         ("POST", f"/v2/{repo}/blobs/uploads/"),
                         ("PATCH", f"/v2/{repo}/blobs/uploads/x"),
                         ("DELETE", f"/v2/{repo}/blobs/{next(iter(image['blobs']))}")):
        r = requests.request(method, stack.edge.url + path, data=b"x" * 1000, timeout=30)
        assert (r.status_code, error_code(r)) == (405, "UNSUPPORTED"), (method, path)
        assert "push to and delete on the registry directly" in r.json()["errors"][0]["message"]
        assert r.content.endswith(b"}\n")  # the edge's own JSON ends in a newline, as the registry's and distribution's
    assert Skopeo(stack.registry, stack.tmp).list_tags(repo) == ["v1"]
    Skopeo(stack.registry, stack.tmp).inspect_raw(f"docker://{stack.registry.host}/{repo}@{image['manifest_digest']}")


def test_healthz(stack):
    r = get(stack.edge, "/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["upstream_unreachable"] is None and r.json()["upstream_refused"] is None
    assert r.content.endswith(b"}\n") and r.content.count(b"\n") == 1


def test_healthz_follows_the_registry_while_nothing_pulls(make_stack, tmp_path):
    """
    No pull, pin or pull report asks the registry: the edge's own check (upstream_check_interval, 1 s
    here) turns /healthz to upstream_unreachable when the registry stops, and back to ok when it starts.
    """
    config = tmp_path / "check.toml"
    config.write_text("[edge]\nupstream_check_interval = 1\n")
    s = make_stack("--config", str(config))
    mark = s.edge.log_mark()
    s.registry.stop()
    s.edge.wait_for_log(r"the registry https://\S+ is unreachable: the registry refused the connection", since=mark)
    health = get(s.edge, "/healthz").json()
    assert health["status"] == "upstream_unreachable", health
    assert health["upstream_unreachable"] == f"the registry refused the connection: nothing listens at {s.upstream}"
    mark = s.edge.log_mark()
    s.registry.start()
    s.edge.wait_for_log(r"the registry https://\S+ answers again", since=mark)
    health = get(s.edge, "/healthz").json()
    assert (health["status"], health["upstream_unreachable"]) == ("ok", None), health
    requests_served = re.findall(r"\] (GET|HEAD|POST) (\S+) \d{3} ", s.edge.log_text())
    assert {path for _, path in requests_served} == {"/healthz"}, requests_served  # nothing but /healthz was asked


def test_a_wrong_upstream_ca_is_told_in_a_sentence_and_logged_once(stack, tmp_path):
    """
    An edge that does not trust the registry's certificate says so in words
    (503 detail, /healthz), naming the --upstream-ca file; OpenSSL's own
    reason goes to its log only, once (not per request).
    """
    from izreg import devcerts

    other = devcerts.write_dev_certs(str(tmp_path / "other"), time.time(), stack.account)
    edge = stack.new_edge("--upstream-ca", other.ca_cert, label="wrong-ca")
    edge.start()
    mark = edge.log_mark()
    repo = stack.repo()
    sentence = f"the registry's certificate is not signed by the CA in --upstream-ca ({other.ca_cert})"
    for _ in range(3):
        r = get(edge, f"/v2/{repo}/manifests/v1", headers={"Accept": OCI})
        assert (r.status_code, error_code(r)) == (503, "UNAVAILABLE")
        assert r.json()["errors"][0]["detail"]["reason"] == sentence
        assert "SSL routines" not in r.text
    edge.wait_for_log(rf"the registry https://\S+ is unreachable: {re.escape(sentence)} \(.*certificate verify failed",
                      since=mark)
    edge.wait_for_log(rf"GET /v2/{repo}/manifests/v1 503 unavailable", since=mark)
    # the edge is up (200: it serves what it has cached); the registry is not, and why, for who watches it
    r = get(edge, "/healthz")
    health = r.json()
    assert r.status_code == 200 and health["status"] == "upstream_unreachable", health
    assert health["upstream_unreachable"] == sentence and health["upstream_refused"] is None, health
    edge.close()
    assert edge.log_text().count("is unreachable") == 1, edge.log_tail()


def test_an_expired_or_misnamed_registry_certificate_is_told_in_a_sentence(make_stack, tmp_path):
    """The registry restarted with a server certificate of the right CA, expired, then for another host."""
    from cryptography.hazmat.primitives import serialization
    from cryptography import x509

    from izreg import devcerts

    s = make_stack()
    with open(os.path.join(s.certs, "server", "ca.key"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(s.certs, "ca.crt"), "rb") as f:
        ca = devcerts.Issued(key, x509.load_pem_x509_certificate(f.read()))
    now = time.time()
    expired = devcerts.make_server_cert(ca, now - 40 * 86400, days=30)
    misnamed = devcerts.make_server_cert(ca, now, names=("registry.example",))
    until = expired.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    for issued, sentence in (
            (expired, f"the registry's certificate expired on {until}"),
            (misnamed, f"the registry's certificate is not for the host of --upstream ({s.upstream});"
                       " it names registry.example")):
        cert, key_file = str(tmp_path / "server.crt"), str(tmp_path / "server.key")
        devcerts.write_file(cert, devcerts.cert_pem(issued.cert))
        devcerts.write_file(key_file, devcerts.key_pem(issued.key), 0o600)
        args = s.registry.extra_args
        args[args.index("--tls-cert") + 1], args[args.index("--tls-key") + 1] = cert, key_file
        s.registry.restart()
        mark = s.edge.log_mark()
        r = get(s.edge, f"/v2/{s.repo()}/manifests/v1", headers={"Accept": OCI})
        assert (r.status_code, error_code(r)) == (503, "UNAVAILABLE"), r.text
        assert r.json()["errors"][0]["detail"]["reason"] == sentence
        assert get(s.edge, "/healthz").json()["upstream_unreachable"] == sentence
        s.edge.wait_for_log(rf"is unreachable: {re.escape(sentence)} \(", since=mark)


def test_offline_pulls_restart_and_reports(make_stack):
    """
    Registry down: cached images pull by digest and by tag (Warning), an uncached one
    fails within seconds; the cache survives an edge restart while the registry is
    down; the pulls served from the cache reach the registry's pull records later.
    A tag a client only resolved with a HEAD (containerd and dockerd do that when
    they hold the manifest already) is there offline too.
    """
    s = make_stack()
    repo, other, headed = s.repo("app"), s.repo("uncached"), s.repo("headed")
    image = s.push(repo, seed=21)
    s.push(other, seed=22)
    headed_image = s.push(headed, seed=23)
    pull_with_skopeo(s, f"{repo}:v1", s.tmp / "online")
    r = requests.head(f"{s.edge.url}/v2/{headed}/manifests/v1", headers={"Accept": OCI}, timeout=30)
    assert (r.status_code, r.headers["Docker-Content-Digest"], r.content) == (200, headed_image["manifest_digest"], b"")
    down = s.edge.log_mark()
    s.registry.stop()

    for attempt in range(2):
        r = get(s.edge, f"/v2/{repo}/manifests/v1", headers={"Accept": OCI})
        assert (r.status_code, r.content, r.headers.get("Warning")) == (200, image["manifest_bytes"], WARNING)
        if attempt == 0:
            s.edge.wait_for_log(r"the registry https://\S+ is unreachable: .*refused", since=down)
        r = get(s.edge, f"/v2/{repo}/manifests/{image['manifest_digest']}", headers={"Accept": OCI})
        assert r.status_code == 200 and r.headers.get("Warning") == WARNING
        r = get(s.edge, f"/v2/{headed}/manifests/v1", headers={"Accept": OCI})
        assert (r.status_code, r.content, r.headers.get("Warning")) == (200, headed_image["manifest_bytes"], WARNING)
        out = s.tmp / f"offline-{attempt}"
        pull_with_skopeo(s, f"{repo}:v1", out)
        assert_same_image(image, out)
        started = time.monotonic()
        r = get(s.edge, f"/v2/{other}/manifests/v1", headers={"Accept": OCI})
        assert (r.status_code, error_code(r)) == (503, "UNAVAILABLE")
        assert time.monotonic() - started < 10
        r = get(s.edge, f"/v2/{other}/blobs/sha256:{'1' * 64}")
        assert (r.status_code, error_code(r)) == (503, "UNAVAILABLE")
        if attempt == 0:
            s.edge.restart()  # the registry is still down: the cache is all there is

    # the same manifest under a second repository: its only pull record comes from the edge's report
    twin = s.repo("twin")
    s.registry.start()
    s.push(twin, seed=21)
    mark = s.edge.log_mark()
    r = get(s.edge, f"/v2/{twin}/manifests/v1", headers={"Accept": OCI})
    assert r.status_code == 200 and "Warning" not in r.headers
    s.edge.wait_for_log(rf"GET /v2/{twin}/manifests/v1 200 hit", since=mark)
    s.edge.wait_for_log(r"the registry https://\S+ answers again", since=mark)
    s.edge.wait_for_log(r"reported \d+ pulls? served", since=mark, timeout=60)
    # the outage in the edge's log: its changes at warn and info; what repeats (a line per request
    # served from the cache, the pull reports every interval) at its level once an edge process, then debug:
    # not written at the default [edge] log_level, info
    outage = list(s.edge.log_lines)[-(s.edge.lines_logged - down):]
    loud = [line for line in outage if "#debug]" not in line]
    assert len([line for line in loud if re.search(r"#warn\].* is unreachable: ", line)]) == 2, outage  # an edge each
    assert len([line for line in loud if re.search(r"#warn\].*: serving .* from the cache", line)]) == 2, outage
    assert len([line for line in loud if re.search(r"#info\].* answers again", line)]) == 1, outage
    assert len([line for line in loud if re.search(r"pull reports? wait", line)]) <= 2, outage
    assert not any("#debug]" in line for line in outage), outage
    s.registry.stop()  # flushes the batched pull records
    pulls = s.registry.cli("device", "pulls", s.account)
    assert f"gw-1" in pulls and twin in pulls and image["manifest_digest"] in pulls, pulls


def test_revoked_gateway_gets_the_registrys_401_and_no_cache(make_stack):
    s = make_stack()
    repo = s.repo()
    image = s.push(repo, seed=31)
    pull_with_skopeo(s, f"{repo}:v1", s.tmp / "before")
    mark = s.edge.log_mark()
    s.registry.cli("device", "revoke", "--cert", os.path.join(s.certs, "client.cert"), "--note", "e2e")
    direct = requests.get(f"https://127.0.0.1:{s.registry.tls_port}/v2/{repo}/manifests/v1",
                          cert=(os.path.join(s.certs, "client.cert"), os.path.join(s.certs, "client.key")),
                          verify=os.path.join(s.certs, "ca.crt"), headers={"Accept": OCI}, timeout=30)
    assert direct.status_code == 401
    for path in (f"/v2/{repo}/manifests/v1", f"/v2/{repo}/manifests/{image['manifest_digest']}"):
        r = get(s.edge, path, headers={"Accept": OCI})
        assert (r.status_code, r.content) == (401, direct.content), path
    r = get(s.edge, f"/v2/{repo}/blobs/{next(iter(image['blobs']))}")
    assert r.status_code == 401
    proc = Skopeo(s.edge, s.tmp).copy(f"docker://{s.edge.host}/{repo}:v1", f"oci:{s.tmp / 'after'}:v1", check=False)
    assert proc.returncode != 0
    # /healthz says so, in a sentence with the registry's own words; its whole answer is in the log
    sentence = (f"the registry refused this gateway's device certificate (--device-cert {s.edge.cert}): HTTP 401"
                f' "{direct.json()["errors"][0]["message"]}"')
    assert "revoked" in sentence
    r = get(s.edge, "/healthz")
    assert (r.status_code, r.json()["status"], r.json()["upstream_refused"]) == (200, "upstream_refused", sentence)
    s.edge.wait_for_log(rf"refuses this gateway: {re.escape(sentence)} \(.*revoked-serial", since=mark)
    # registry unreachable: the cache serves again
    s.registry.stop()
    r = get(s.edge, f"/v2/{repo}/manifests/v1", headers={"Accept": OCI})
    assert (r.status_code, r.headers.get("Warning")) == (200, WARNING)
    health = get(s.edge, "/healthz").json()
    assert health["status"] == "upstream_unreachable" and health["upstream_refused"] == sentence, health
    assert s.edge.log_text().count("refuses this gateway") == 1, s.edge.log_tail()  # not once per 401


def test_pinned_image_is_cached_ahead_and_follows_its_tag(make_stack, tmp_path):
    s = make_stack()
    repo, second = s.repo("pinned"), s.repo("second")
    first = s.push(repo, seed=41)
    s.push(second, seed=42)
    config = tmp_path / "edge.toml"
    config.write_text(f'[edge]\npin = ["{repo}:v1"]\npin_refresh_interval = 1\n')
    edge = s.new_edge("--config", str(config))
    mark = edge.log_mark()
    edge.start()
    edge.wait_for_log(rf"pinned {repo}:v1 at {first['manifest_digest']}", since=mark, timeout=60)
    # pins added with izreg-edge while the edge runs
    assert edge.cli("pin", f"{second}:v1").startswith(f"pinned {second}:v1: a running edge fetches it within 2 s")
    edge.wait_for_log(rf"pinned {second}:v1 at sha256:", since=mark, timeout=60)
    assert edge.cli("pin", f"{second}:v1") == f"pinned {second}:v1 (already pinned)"
    moved = s.push(repo, seed=43)
    edge.wait_for_log(rf"pinned {repo}:v1 at {moved['manifest_digest']}", since=mark, timeout=60)
    listing = edge.cli("pins")
    assert moved["manifest_digest"] in listing and second in listing
    s.registry.stop()
    # no client ever asked for these: all from the pin
    out = s.tmp / "pinned-offline"
    Skopeo(edge, s.tmp).copy(f"docker://{edge.host}/{repo}:v1", f"oci:{out}:v1")
    assert_same_image(moved, out)
    assert "unpinned" in edge.cli("unpin", f"{second}:v1")
    assert second not in edge.cli("pins")


def test_izreg_edge_pins_says_a_pin_the_registry_does_not_have_is_not_found(stack):
    """It said "not fetched yet" for a tag the registry answered 404, as for a pin never tried."""
    repo = stack.repo("no-such-image")
    mark = stack.edge.log_mark()
    stack.edge.cli("pin", f"{repo}:v1")
    stack.edge.wait_for_log(rf"pin {re.escape(repo)}:v1: the registry answered 404", since=mark, timeout=30)
    line = next(line for line in stack.edge.cli("pins").splitlines() if line.startswith(f"{repo}:v1 "))
    ref, digest, status = line.split(None, 2)
    assert digest == "-" and re.fullmatch(
        r"not found on the registry \(404: no such repository or tag\) at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status), line
    assert json.loads(stack.edge.cli("pins", "--json"))[f"{repo}:v1"]["problem"].startswith("not found on the registry")
    stack.edge.cli("unpin", f"{repo}:v1")


def test_a_pin_added_while_the_edge_runs_is_fetched_within_seconds(stack):
    """
    ``izreg-edge pin`` writes the cache's index; the running edge looks for new pins every 2 s and fetches
    them then, not at its next refresh round (pin_refresh_interval: 300 s by default, as here).
    """
    repo = stack.repo("pinned-now")
    image = stack.push(repo, seed=44)
    mark = stack.edge.log_mark()
    said = stack.edge.cli("pin", f"{repo}:v1")
    assert said == (f"pinned {repo}:v1: a running edge fetches it within 2 s, or when the registry answers again"
                    " if it is unreachable; `izreg-edge pins` shows when it was fetched, or why not")
    stack.edge.wait_for_log(rf"pinned {repo}:v1 at {image['manifest_digest']}", since=mark, timeout=30)
    for digest in image["blobs"]:
        stack.edge.wait_for_log(rf"cached {digest}", since=mark)
    assert image["manifest_digest"] in stack.edge.cli("pins")
    assert "unpinned" in stack.edge.cli("unpin", f"{repo}:v1")
