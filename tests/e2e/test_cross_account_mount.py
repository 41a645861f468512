"""
A real containerd pushing an image it pulled from another account's
repository (OCI distribution-spec v1.1, end-11): ``ctr images pull`` notes
where each blob came from (the ``containerd.io/distribution.source.<host>``
label), and ``ctr images push`` to a repository of another account first
asks to mount each blob from there (``POST ?mount=<digest>&from=<source>``),
with the pushing key, which may not read the source. containerd takes only
201 or 202 from that POST: the registry must answer "unable to mount" with a
new upload session (202), and then the push uploads the blobs itself. The
same as what docker's containerd image store and buildkit do.
"""

from __future__ import annotations

import secrets

import pytest

from tests.e2e.test_docker_engine import _pulled_by_ctr, engine, ok  # noqa: F401  (engine: the fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def test_ctr_pushes_an_image_of_another_account_to_its_own(engine, registry, new_repo, tmp_path):
    source = f"{registry.host}/{new_repo('base')}:v1"
    namespace, _ = _pulled_by_ctr(engine, registry, tmp_path, source)  # pulled with the first account's key
    labels = ok(engine.ctr("-n", namespace, "content", "ls")).stdout
    host = registry.host.partition(":")[0]  # a label key holds no port
    assert f"containerd.io/distribution.source.{host}=" in labels  # what makes ctr try a mount
    account, key = registry.new_account()
    target = f"{registry.host}/{account}/copy-{secrets.token_hex(3)}:v1"
    ok(engine.ctr("-n", namespace, "images", "tag", source, target))
    ok(engine.ctr("-n", namespace, "images", "push", "--plain-http", "--user", key, target))
    # the copy is whole in the second account (its blobs uploaded there, nothing linked from the first)
    again = "izreg-" + secrets.token_hex(3)
    ok(engine.ctr("-n", again, "images", "pull", "--plain-http", "--user", key, target))
