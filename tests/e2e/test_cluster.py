"""
Three izreg nodes over one PostgreSQL and one S3 bucket (moto), behind
haproxy (round-robin per request): every node is equal (#16).

Each test sends requests either through haproxy or to chosen nodes
directly (``node 1, 2, 3 in turn``), so a push really spans the nodes.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.parse

import pytest
import requests

from tests.helpers.cluster import cluster  # noqa: F401  (the module's three-node cluster)
from tests.helpers.conformance import SUITES, run_conformance, suite_available
from tests.helpers.ociclient import OCIClient, expect, sha256_digest
from tests.helpers.ocilayout import build_image, build_layout, random_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.postgres, pytest.mark.s3]

MiB = 1024 * 1024


def client(target, creds: str | None = None) -> OCIClient:
    """An OCI client of one node (a RegistryProcess) or of haproxy (the Cluster)."""
    user, _, password = (creds or target.creds).partition(":")
    return OCIClient(target.url, auth=(user, password))


def path_of(location: str) -> str:
    """A Location as a path with its query: the same upload, asked of any node."""
    parts = urllib.parse.urlsplit(location)
    return urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))


def push_image(c: OCIClient, repo: str, image: dict, tag: str) -> None:
    for digest, data in image["blobs"].items():
        expect(c.push_blob_monolithic(repo, data), 201)
    expect(c.put_manifest(repo, tag, image["manifest_bytes"]), 201)


def pulls_whole(c: OCIClient, repo: str, image: dict, ref: str) -> None:
    got = expect(c.get_manifest(repo, ref), 200)
    assert got.content == image["manifest_bytes"]
    for digest in image["blobs"]:
        body = expect(c.get_blob(repo, digest, allow_redirects=True), 200).content
        assert sha256_digest(body) == digest


def test_a_chunked_push_spans_the_nodes(cluster):
    repo = f"{cluster.account}/spans"
    nodes = [client(node, cluster.creds) for node in cluster.nodes]
    data = random_bytes(13 * MiB + 12345, "spans")  # S3 parts of 5 MiB: parts and tails across nodes
    chunk = 3 * MiB
    location = path_of(nodes[0].location(expect(nodes[0].start_upload(repo), 202)))
    # node 1, 2, 1 (its cached session is stale by then), 3, 2...: every request on another node
    order = [1, 0, 2, 1, 0]
    for n, start in zip(order, range(0, len(data), chunk)):
        resp = expect(nodes[n].patch_chunk(location, data[start:start + chunk], start), 202)
        assert resp.headers["Range"] == f"0-{min(start + chunk, len(data)) - 1}"
        location = path_of(resp.headers["Location"])
    status = expect(nodes[2].request("GET", location), 204)
    assert status.headers["Range"] == f"0-{len(data) - 1}"
    digest = sha256_digest(data)
    expect(nodes[1].request("PUT", nodes[1].with_query(location, digest=digest), headers={"Content-Length": "0"}), 201)
    for c in nodes:
        body = expect(c.get_blob(repo, digest, allow_redirects=True), 200).content
        assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]


def test_a_tag_pushed_through_one_node_is_served_by_every_other_at_once(cluster):
    repo = f"{cluster.account}/at-once"
    one, two, three = (client(node, cluster.creds) for node in cluster.nodes)
    for i in range(3):
        image = build_image(layers=(1000 + i,), seed=f"at-once-{i}")
        push_image(one, repo, image, "latest")
        for other in (two, three):
            got = expect(other.get_manifest(repo, "latest"), 200)
            assert got.headers["Docker-Content-Digest"] == image["manifest_digest"]
        assert "latest" in three.tags(repo)


def test_a_key_revoked_with_izreg_is_refused_by_every_node_at_the_next_request(cluster):
    account, creds = cluster.new_account()
    nodes = [client(node, creds) for node in cluster.nodes]
    for c in nodes:
        expect(c.request("GET", "/v2/"), 200)
    key_id = cluster.izreg("key", "list", account, "--json").splitlines()[0].split('"id": "')[1].split('"')[0]
    cluster.izreg("key", "revoke", key_id)
    for c in nodes:
        refused = expect(c.request("GET", "/v2/"), 401)
        assert "revoked" in refused.text


def test_concurrent_pushes_of_one_tag_through_two_nodes_end_with_one_winner(cluster):
    repo = f"{cluster.account}/race"
    one, two = client(cluster.nodes[0], cluster.creds), client(cluster.nodes[1], cluster.creds)
    images = [build_image(layers=(2000 + i,), seed=f"race-{i}") for i in range(2)]
    for c, image in zip((one, two), images):
        for data in image["blobs"].values():
            expect(c.push_blob_monolithic(repo, data), 201)
    for round_ in range(5):
        barrier = threading.Barrier(2)
        answers = []

        def put(c, image):
            barrier.wait()
            answers.append(c.put_manifest(repo, "race", image["manifest_bytes"]).status_code)

        threads = [threading.Thread(target=put, args=pair) for pair in zip((one, two), images)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert answers == [201, 201], answers
        winner = expect(one.get_manifest(repo, "race"), 200).headers["Docker-Content-Digest"]
        assert winner in {image["manifest_digest"] for image in images}
        assert expect(two.get_manifest(repo, "race"), 200).headers["Docker-Content-Digest"] == winner
        assert one.tags(repo).count("race") == 1
        for image in images:  # the loser is still whole by digest
            pulls_whole(two, repo, image, image["manifest_digest"])


def test_kill9_of_a_node_mid_push_the_client_finishes_on_the_next(cluster):
    repo = f"{cluster.account}/kill9"
    nodes = [client(node, cluster.creds) for node in cluster.nodes]
    acknowledged = []
    for i in range(2):  # images pushed whole before the kill
        image = build_image(layers=(3000 + i, 200_000), seed=f"kill9-{i}")
        push_image(nodes[i % 3], repo, image, f"v{i}")
        acknowledged.append((image, f"v{i}"))
    data = random_bytes(12 * MiB, "kill9")
    chunk = 4 * MiB
    location = path_of(nodes[0].location(expect(nodes[0].start_upload(repo), 202)))
    expect(nodes[1].patch_chunk(location, data[:chunk], 0), 202)
    victim = cluster.nodes[1]

    def body():  # the second chunk to node 2, which dies half way through it
        yield data[chunk:chunk + MiB]
        victim.kill9()
        yield data[chunk + MiB:2 * chunk]

    with pytest.raises(requests.RequestException):
        nodes[1].request("PATCH", location, data=body(), headers={
            "Content-Type": "application/octet-stream", "Content-Range": f"{chunk}-{2 * chunk - 1}"})
    try:
        # the client retries on the next node: where does the upload stand?
        status = expect(nodes[2].request("GET", location), 204)
        offset = int(status.headers["Range"].split("-")[1]) + 1
        assert offset == chunk  # what node 2 acknowledged before it died
        for start in range(offset, len(data), chunk):
            expect(nodes[2].patch_chunk(location, data[start:start + chunk], start), 202)
        digest = sha256_digest(data)
        expect(nodes[0].request("PUT", nodes[0].with_query(location, digest=digest),
                                headers={"Content-Length": "0"}), 201)
        image = build_image(layers=(5000,), seed="kill9-after")
        push_image(nodes[2], repo, image, "after")
        acknowledged.append((image, "after"))
        for image, tag in acknowledged:  # every acknowledged image pulls whole, from the living nodes
            for c in (nodes[0], nodes[2]):
                pulls_whole(c, repo, image, tag)
        assert sha256_digest(expect(nodes[0].get_blob(repo, digest, allow_redirects=True), 200).content) == digest
    finally:
        victim.start()  # the rest of the module has three nodes again
    for image, tag in acknowledged:
        pulls_whole(nodes[1], repo, image, tag)


def test_skopeo_copy_through_haproxy(cluster, tmp_path):
    from tests.helpers.skopeo import Skopeo

    layout = tmp_path / "layout"
    build_layout(layout, tag="v1", layers=(1024, 300_000, 6 * MiB), seed="skopeo-cluster")
    skopeo = Skopeo(cluster, tmp_path)
    ref = skopeo.ref(f"{cluster.account}/skopeo", "v1")
    skopeo.copy(f"oci:{layout}:v1", ref)
    skopeo.copy(ref, f"oci:{tmp_path / 'back'}:v1")
    assert skopeo.inspect_json(ref)["Digest"]


def test_the_izreg_command_works_against_the_database(cluster):
    """Every admin command reaches the cluster's data through the database, from any machine (here: no data dir)."""
    repo = f"{cluster.account}/admin"
    image = build_image(layers=(4000,), seed="admin")
    push_image(client(cluster), repo, image, "v1")
    assert cluster.account in cluster.izreg("account", "list")
    assert "admin" in cluster.izreg("images", cluster.account)
    assert cluster.izreg("usage", cluster.account)
    assert f"{repo}:v1" in cluster.izreg("audit", "--account", cluster.account)  # the push-tag record
    assert cluster.izreg("gc", "--dry-run").startswith("would free ")
    assert cluster.izreg("fsck").rstrip().endswith("clean")
    assert cluster.izreg("db", "status").endswith("up to date")
    cluster.izreg("device", "revoke", "--serial", "0a0b0c", "--note", "cluster")
    assert "a0b0c" in cluster.izreg("device", "list-revoked")  # serials are normalized (no leading zero)
    pulls_whole(client(cluster.nodes[2], cluster.creds), repo, image, "v1")  # nothing the commands did broke it


def test_the_open_upload_cap_counts_every_nodes_sessions(tmp_path_factory, postgres_server, moto_server):
    """A cluster of its own (the cap is 3): sessions started on node 1 count on node 2 once it re-reads them."""
    import time

    from tests.helpers.cluster import Cluster

    small = Cluster(tmp_path_factory.mktemp("cap"), postgres_server, moto_server, nodes=2,
                    extra_toml="[uploads]\nmax_open_per_account = 3\n")
    try:
        small.start()
        one, two = client(small.nodes[0], small.creds), client(small.nodes[1], small.creds)
        repo = f"{small.account}/cap"
        expect(two.start_upload(repo), 202)  # node 2 reads the (empty) list, and counts its own
        for _ in range(2):
            expect(one.start_upload(repo), 202)  # three open now, two of them through node 1
        expect(one.start_upload(repo), 429)
        deadline = time.monotonic() + 60
        while True:  # node 2 refuses once it has re-read the sessions (every 10 s)
            resp = two.start_upload(repo)
            if resp.status_code == 429:
                break
            expect(resp, 202)
            expect(two.request("DELETE", path_of(resp.headers["Location"])), 204)
            assert time.monotonic() < deadline, "node 2 never counted node 1's sessions"
            time.sleep(0.5)
        assert "max_open_per_account" in resp.text
    finally:
        small.close()


def test_failed_authentications_are_braked_across_nodes(cluster):
    # a made-up key: failures share the address's brake, counted by every node
    bad = OCIClient(cluster.url, auth=("KEY", "izr_" + "0" * 16 + "_" + "A" * 43))
    statuses = []
    for _ in range(10 + 3 + 3):  # the limit (10), plus at most one more per other node, plus slack
        statuses.append(bad.request("GET", "/v2/", headers={"X-Forwarded-For": "192.0.2.77"}).status_code)
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429, statuses  # three nodes counting alone would allow 30


@pytest.mark.conformance
@pytest.mark.parametrize("suite", SUITES)
def test_oci_conformance_through_haproxy(suite, cluster, tmp_path):
    from tests.conftest import require_tool

    require_tool(suite_available(suite), f"the OCI conformance suite {suite} (../shared/conformance)")
    user, _, key = cluster.creds.partition(":")
    marks = [node.log_mark() for node in cluster.nodes]
    result = run_conformance(cluster.url, f"{cluster.account}/conformance-{suite.replace('.', '')}/repo1", user, key,
                             suite=suite, results_dir=str(tmp_path / "results"))
    print(result.summary().splitlines()[0])  # the figures, with -s
    assert result.passed > 0, result.summary()
    assert result.failed == 0, result.summary()
    # round-robin per request: every node served a share of the suite (its access log grew)
    served = [node.lines_logged - mark for node, mark in zip(cluster.nodes, marks)]
    assert all(n > 50 for n in served), served


def test_two_nodes_writing_one_upload_at_once_acknowledge_one_chunk(cluster):
    # a PATCH on one node while another node's PATCH of the same chunk was in flight: both were
    # acknowledged (202), the later record overwriting the earlier; now the second gets a 416
    import base64
    import http.client

    repo = f"{cluster.account}/racing"
    one, two, three = (client(node, cluster.creds) for node in cluster.nodes)
    data = random_bytes(256 * 1024, "racing")
    location = path_of(one.location(expect(one.start_upload(repo), 202)))
    slow = http.client.HTTPConnection("127.0.0.1", cluster.nodes[0].port, timeout=60)
    try:
        slow.putrequest("PATCH", location)
        slow.putheader("Authorization", "Basic " + base64.b64encode(cluster.creds.encode()).decode())
        slow.putheader("Content-Type", "application/octet-stream")
        slow.putheader("Content-Range", f"0-{len(data) - 1}")
        slow.putheader("Content-Length", str(len(data)))
        slow.endheaders()
        slow.send(data[:1000])  # node 1 holds the session at offset 0 and takes the body
        fast = expect(two.patch_chunk(location, data, 0), 202)  # node 2 writes the same chunk meanwhile
        assert fast.headers["Range"] == f"0-{len(data) - 1}"
        slow.send(data[1000:])
        late = slow.getresponse()
        body = late.read()
        assert late.status == 416, body
        assert late.getheader("Range") == f"0-{len(data) - 1}"
        assert b"RANGE_INVALID" in body
    finally:
        slow.close()
    digest = sha256_digest(data)
    location = path_of(fast.headers["Location"])
    expect(three.request("PUT", three.with_query(location, digest=digest), headers={"Content-Length": "0"}), 201)
    assert expect(one.get_blob(repo, digest, allow_redirects=True), 200).content == data


def test_tokens_behind_haproxy_ending_tls(tmp_path_factory, postgres_server, moto_server):
    """
    The token service on two nodes behind haproxy ending TLS (docs/deploy.rst): the challenge
    sends the client to the token endpoint by https (it said http: the client's key went in plain
    text to port 80, or nowhere), and a token one node issued is taken by the other.
    """
    import time

    from izreg.devcerts import write_dev_certs
    from tests.helpers.cluster import Cluster
    from tests.helpers.server import random_account

    base = tmp_path_factory.mktemp("tls-tokens")
    paths = write_dev_certs(str(base / "certs"), time.time(), random_account())
    pem = base / "haproxy.pem"
    pem.write_bytes(open(paths.server_cert, "rb").read() + open(paths.server_key, "rb").read())
    small = Cluster(base, postgres_server, moto_server, nodes=2, extra_toml="[auth]\ntoken_service = true\n",
                    tls_pem=str(pem))
    try:
        small.start()
        # a client's own X-Forwarded-Proto is overwritten by haproxy's
        challenge = requests.get(f"{small.url}/v2/", headers={"X-Forwarded-Proto": "http"}, verify=paths.ca_cert,
                                 timeout=30)
        assert challenge.status_code == 401
        realm = challenge.headers["WWW-Authenticate"].split('realm="')[1].split('"')[0]
        assert realm == f"{small.url}/v2/token", challenge.headers["WWW-Authenticate"]
        answer = requests.get(realm, params={"service": "izreg", "scope": f"repository:{small.account}/t:pull,push"},
                              auth=small.requests_auth, verify=paths.ca_cert, timeout=30)
        assert answer.status_code == 200, answer.text
        token = answer.json()["token"]
        for node in small.nodes:  # whichever node issued it, each takes it
            got = requests.get(f"{node.url}/v2/{small.account}/t/tags/list", timeout=30,
                               headers={"Authorization": f"Bearer {token}"})
            assert got.status_code == 404 and got.json()["errors"][0]["code"] == "NAME_UNKNOWN", got.text
    finally:
        small.close()
