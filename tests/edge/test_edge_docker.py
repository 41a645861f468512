"""
The clients a gateway runs, pulling through the edge without credentials:
the Docker engine (``docker pull 127.0.0.1:PORT/<account>/<app>:<tag>``)
and containerd's ``ctr images pull --plain-http``.

Uses the shared C{docker_engine} fixture (tests/helpers/dockerd.py).
"""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.edge, pytest.mark.docker]

@pytest.fixture(scope="module")
def engine(docker_engine):
    return docker_engine


def test_docker_and_ctr_pull_through_the_edge(stack, engine):
    repo = stack.repo()
    image = stack.push(repo, seed=61)
    ref = f"{stack.edge.host}/{repo}:v1"

    pulled = engine.docker("pull", ref)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    digests = engine.docker("image", "inspect", "--format", "{{json .RepoDigests}}", ref)
    assert f"{stack.edge.host}/{repo}@{image['manifest_digest']}" in digests.stdout
    by_digest = engine.docker("pull", f"{stack.edge.host}/{repo}@{image['manifest_digest']}")
    assert by_digest.returncode == 0, by_digest.stderr

    namespace = "edge-e2e"
    proc = engine.ctr("-n", namespace, "images", "pull", "--plain-http", ref, text=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = engine.ctr("-n", namespace, "images", "ls", text=False)
    assert image["manifest_digest"].encode() in listed.stdout
    for digest, data in image["blobs"].items():
        content = engine.ctr("-n", namespace, "content", "get", digest, text=False)
        assert content.returncode == 0 and content.stdout == data, digest


def test_docker_pull_of_a_name_without_the_account_says_the_gateways_account(stack, engine):
    """docker pull containers.local:8080/app:v1 on a gateway: at once, the form and the account to put in front."""
    started = time.monotonic()
    pulled = engine.docker("pull", f"{stack.edge.host}/app:v1")
    assert pulled.returncode != 0
    assert f"your account id is {stack.account}: use {stack.account}/app" in pulled.stderr, pulled.stderr
    assert time.monotonic() - started < 10
