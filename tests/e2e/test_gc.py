"""
Online garbage collection, deletes with skopeo and raw HTTP, and fsck, on the
real server (``twistd izreg``) with a tiny grace period and sweep interval.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers.ociclient import OCIClient, expect
from tests.helpers.wait import wait_until
from tests.helpers.ocilayout import build_layout, layout_manifest_digest

GRACE = 3  # seconds: long enough for a blob upload to be followed by its manifest on a loaded machine
INTERVAL = 1
WAIT = 120  # generous deadline for conditions polled on a loaded machine

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def izreg(registry, *argv: str, tty: bool = False) -> subprocess.CompletedProcess:
    """The real ``izreg`` command on the running server's data directory."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-c", "import sys; from izreg.cli import main; sys.exit(main())",
                           "--data-dir", registry.data_dir, *argv], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture
def gc_registry(start_registry, tmp_path):
    config = tmp_path / "gc.toml"
    config.write_text(f"[gc]\ninterval = {INTERVAL}\ngrace = {GRACE}\n[delete]\nprotect_in_use = false\n")
    return start_registry("--config", str(config))


def blob_files(data_dir: str) -> set[str]:
    found = set()
    base = os.path.join(data_dir, "blobs")
    for algorithm in os.listdir(base):
        for fan in os.listdir(os.path.join(base, algorithm)):
            for name in os.listdir(os.path.join(base, algorithm, fan)):
                if not name.endswith(".tmp"):
                    found.add(f"{algorithm}:{name}")
    return found


def push(client: OCIClient, repo: str, layers: list[bytes], tag: str | None, config_seed: str) -> tuple[str, bytes]:
    """Blobs (HEAD first, as docker does: a blob already there is not sent again), then the manifest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": config_seed}).encode()
    for blob in (config, *layers):
        if client.head_blob(repo, sha(blob)).status_code != 200:
            expect(client.push_blob_monolithic(repo, blob), 201)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(b), "size": len(b)}
                   for b in layers],
    }).encode()
    expect(client.put_manifest(repo, tag or sha(manifest), manifest), 201)
    return sha(manifest), manifest


def referenced(client: OCIClient, repos: list[str]) -> tuple[dict, set[str]]:
    """Every manifest left (by repo) and every blob they reference; each blob pulled and verified."""
    left, blobs = {}, set()
    for repo in repos:
        listing = client.request("GET", f"/v2/{repo}/_izreg/manifests")
        if listing.status_code == 404:
            continue
        for m in expect(listing, 200).json()["manifests"]:
            data = expect(client.request("GET", f"/v2/{repo}/manifests/{m['digest']}",
                                         headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}), 200).content
            assert sha(data) == m["digest"]
            left.setdefault(repo, []).append(m["digest"])
            doc = json.loads(data)
            for d in [doc["config"], *doc["layers"]] if "config" in doc else []:
                body = expect(client.get_blob(repo, d["digest"]), 200).content
                assert sha(body) == d["digest"] and len(body) == d["size"]
                blobs.add(d["digest"])
    return left, blobs


def test_pushes_deletes_and_sweeps_at_once(gc_registry, tmp_path):
    registry = gc_registry
    client = OCIClient(registry.url, auth=registry.requests_auth)
    account = registry.account
    repos = [f"{account}/gc/{name}" for name in ("web", "api", "db")]
    base = os.urandom(200_000)  # shared by every image
    pushed: list[tuple[str, str]] = []  # (repo, digest) pushed and not deleted yet
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def pusher(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(6):
                repo = repos[rng.randrange(len(repos))]
                layers = [base, os.urandom(rng.randrange(1000, 60_000))]
                if i % 2:
                    # a mount from another repository of the account, then a manifest using it
                    source = repos[(repos.index(repo) + 1) % len(repos)]
                    if client.head_blob(source, sha(base)).status_code == 200:
                        client.mount_blob(repo, sha(base), source)
                digest, _ = push(client, repo, layers, f"s{seed}-{i}" if i % 3 else None, f"{seed}-{i}")
                with lock:
                    pushed.append((repo, digest))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def deleter() -> None:
        rng = random.Random(99)
        try:
            while not stop.is_set():
                with lock:
                    victim = pushed.pop(rng.randrange(len(pushed))) if len(pushed) > 2 else None
                if victim is not None:
                    expect(client.request("DELETE", f"/v2/{victim[0]}/manifests/{victim[1]}"), 202)
                stop.wait(0.05)
        except BaseException as e:
            errors.append(e)

    def sweeper() -> None:  # izreg gc from the command line, beside the server's own sweeps
        try:
            while not stop.is_set():
                done = izreg(registry, "gc", "--grace", f"{GRACE}s")
                assert done.returncode == 0, done.stderr
                assert done.stdout.startswith("freed "), done.stdout
        except BaseException as e:
            errors.append(e)

    pushers = [threading.Thread(target=pusher, args=(seed,)) for seed in range(4)]
    helpers = [threading.Thread(target=deleter), threading.Thread(target=sweeper)]
    for t in pushers + helpers:
        t.start()
    for t in pushers:
        t.join(timeout=600)
    stop.set()
    for t in helpers:
        t.join(timeout=600)
    assert not errors, errors
    quiet_since = time.time()  # nothing changed after this

    # every image left pulls and verifies
    left, blobs = referenced(client, repos)
    assert sum(len(v) for v in left.values()) == len(pushed)
    for repo, digest in pushed:
        assert digest in left[repo]
    # no unreferenced blob outlives the grace period and one more sweep (izreg gc waits for a server
    # sweep in progress, then makes its own): the grace period is time itself, so it is slept through
    time.sleep(max(0.0, quiet_since + GRACE + 0.5 - time.time()))
    done = izreg(registry, "gc", "--grace", f"{GRACE}s")
    assert done.returncode == 0, done.stderr
    assert blob_files(registry.data_dir) == blobs, done.stdout
    # and the store is consistent
    done = izreg(registry, "fsck")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("clean")


def blob_path(registry, digest: str) -> str:
    algorithm, hexa = digest.split(":")
    return os.path.join(registry.data_dir, "blobs", algorithm, hexa[:2], hexa)


def test_skopeo_and_http_deletes_then_gc_reclaims(gc_registry, tmp_path):
    registry = gc_registry
    if not os.path.exists("/usr/bin/skopeo"):
        pytest.skip("skopeo is not installed")
    from tests.helpers.skopeo import Skopeo

    skopeo = Skopeo(registry, tmp_path)
    client = OCIClient(registry.url, auth=registry.requests_auth)
    repo = f"{registry.account}/deletes/app"
    layout = build_layout(str(tmp_path / "layout"), "v1", layers=(2048, 40_000), seed=7)
    skopeo.copy(f"oci:{tmp_path / 'layout'}:v1", skopeo.ref(repo, "v1"))
    skopeo.copy(f"oci:{tmp_path / 'layout'}:v1", skopeo.ref(repo, "v2"))
    digest = layout_manifest_digest(str(tmp_path / "layout"), "v1")
    blobs = [d["digest"] for d in [layout["manifest"]["config"], *layout["manifest"]["layers"]]]
    # raw HTTP, by tag: only the tag goes
    expect(client.request("DELETE", f"/v2/{repo}/manifests/v2"), 202)
    assert skopeo.list_tags(repo) == ["v1"]
    expect(client.request("HEAD", f"/v2/{repo}/manifests/{digest}"), 200)
    # skopeo delete (by digest, as skopeo does): the manifest and its tags
    skopeo.delete(skopeo.ref(repo, "v1"))
    expect(client.request("HEAD", f"/v2/{repo}/manifests/{digest}"), 404)
    assert skopeo.list_tags(repo) == []
    # the blobs stay until the grace period has passed, then a sweep reclaims them and the repository goes
    deadline = time.monotonic() + GRACE + INTERVAL + WAIT
    while any(os.path.exists(blob_path(registry, b)) for b in blobs):
        assert time.monotonic() < deadline, "the deleted image's blobs were not reclaimed"
        time.sleep(0.2)
    while repo in expect(client.request("GET", "/v2/_catalog"), 200).json()["repositories"]:
        assert time.monotonic() < deadline, "the empty repository stayed in the catalog"
        time.sleep(0.2)
    # every delete is in the audit log, with the key id and the client address
    from izreg.storage.audit import AuditLog
    from izreg.storage.lmdbenv import open_env

    env = open_env(registry.data_dir, 1 << 30)
    try:
        entries = [e for e in AuditLog(env).entries(account=registry.account)
                   if e["target"].startswith(repo) and e["action"].startswith("delete")]
    finally:
        env.close()
    key_id = registry.creds.split(":", 1)[1].split("_")[1]
    assert [(e["action"], e["target"]) for e in entries] == [("delete-tag", f"{repo}:v2"),
                                                             ("delete-manifest", f"{repo}@{digest}")]
    assert {(e["actor"], e["address"]) for e in entries} == {(f"key:{key_id}", "127.0.0.1")}


def test_the_servers_sweep_prunes_the_audit_log_to_its_retention(start_registry, tmp_path):
    config = tmp_path / "audit.toml"
    config.write_text(f"[gc]\ninterval = {INTERVAL}\ngrace = {GRACE}\n[audit]\nmax_entries = 2\n")
    registry = start_registry("--config", str(config))
    client = OCIClient(registry.url, auth=registry.requests_auth)
    repo = f"{registry.account}/audited/app"
    for i in range(4):
        push(client, repo, [os.urandom(1000)], f"v{i}", f"audit-{i}")

    def listed():  # the izreg audit command, as an operator reads the log
        done = izreg(registry, "audit", "--json")
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["target"] for line in done.stdout.splitlines()]

    # the account's and key's creation and the first two pushes go at a sweep; the newest two stay
    wait_until(lambda: listed() == [f"{repo}:v2", f"{repo}:v3"], "the audit log pruned to its 2 newest records",
               timeout=WAIT)


def test_izreg_gc_dry_run_and_fsck_repair(gc_registry, tmp_path):
    registry = gc_registry
    client = OCIClient(registry.url, auth=registry.requests_auth)
    repo = f"{registry.account}/fsck/app"
    layers = [os.urandom(5000), os.urandom(7000)]
    digest, _ = push(client, repo, layers, "v1", "fsck")
    done = izreg(registry, "fsck")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("clean"), done.stdout + done.stderr
    # a dry run deletes nothing and says so
    done = izreg(registry, "gc", "--dry-run", "--grace", "0")
    assert done.returncode == 0 and done.stdout.startswith("would free "), done.stdout + done.stderr

    corrupt, missing = sha(layers[0]), sha(layers[1])
    with open(blob_path(registry, corrupt), "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))  # always a different byte (b"X" was the same 1 time in 256)
    os.unlink(blob_path(registry, missing))
    done = izreg(registry, "fsck")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"problem: corrupt blob {corrupt}" in done.stdout
    assert f"problem: missing blob {missing}" in done.stdout
    assert done.stdout.rstrip().endswith("problems")
    done = izreg(registry, "fsck", "--repair")
    assert done.returncode == 1, done.stdout  # the manifest lost two blobs: push them again
    assert f"repaired: corrupt blob {corrupt}" in done.stdout and f"repaired: missing blob {missing}" in done.stdout
    assert f"not repaired: manifest {repo}@{digest} references blob {corrupt}, which is lost" in done.stdout
    expect(client.head_blob(repo, corrupt), 404)  # never served corrupt
    # pushed again, the store is clean
    push(client, repo, layers, "v1", "fsck")
    done = izreg(registry, "fsck")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("clean"), done.stdout + done.stderr
    for layer in layers:
        assert expect(client.get_blob(repo, sha(layer)), 200).content == layer


@pytest.mark.s3
def test_gc_and_fsck_on_s3(start_registry, moto_server, tmp_path):
    bucket = moto_server.new_bucket()
    config = tmp_path / "s3.toml"
    config.write_text(moto_server.config_toml(bucket) + f"[gc]\ninterval = {INTERVAL}\ngrace = {GRACE}\n")
    registry = start_registry("--config", str(config))
    client = OCIClient(registry.url, auth=registry.requests_auth)
    repo = f"{registry.account}/s3/app"
    keep = os.urandom(3000)
    doomed = os.urandom(4000)
    push(client, repo, [keep], "keep", "s3-keep")
    digest, _ = push(client, repo, [doomed], None, "s3-doomed")
    s3 = moto_server.client()

    def stored() -> set[str]:
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        return {k.split("/")[-3] + ":" + k.split("/")[-1] for k in keys if "/blobs/" in f"/{k}"}

    assert sha(doomed) in stored()
    expect(client.request("DELETE", f"/v2/{repo}/manifests/{digest}"), 202)
    deadline = time.monotonic() + GRACE + INTERVAL + WAIT
    while sha(doomed) in stored():
        assert time.monotonic() < deadline, "the deleted image's layer stayed in the bucket"
        time.sleep(0.2)
    assert sha(keep) in stored()
    done = izreg(registry, "--config", str(config), "fsck")
    assert done.returncode == 0 and done.stdout.rstrip().endswith("clean"), done.stdout + done.stderr
    done = izreg(registry, "--config", str(config), "gc", "--dry-run")
    assert done.returncode == 0 and done.stdout.startswith("would free 0 files"), done.stdout + done.stderr
    s3.delete_object(Bucket=bucket, Key=next(k for k in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
                                               if k.endswith(sha(keep).split(":")[1])))
    done = izreg(registry, "--config", str(config), "fsck")
    assert done.returncode == 1 and f"problem: missing blob {sha(keep)}" in done.stdout, done.stdout + done.stderr
