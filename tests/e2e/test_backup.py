"""
``izreg backup`` while pushes run, ``izreg restore`` into a fresh data dir,
then every image acknowledged before the backup started (and every tag the
backup holds) pulls whole from a server on the restored data.
"""

from __future__ import annotations

import os
import threading

import pytest

from tests.e2e.test_operations import pull_image, push_image
from tests.helpers.ociclient import OCIClient
from tests.helpers.server import RegistryProcess

pytestmark = pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                                reason="izreg's own backup")


def test_backup_while_pushing_then_restore(tmp_path):
    source = RegistryProcess(data_dir=str(tmp_path / "data"), log_path=str(tmp_path / "server.log"))
    restored = None
    try:
        source.start()
        client = OCIClient(source.url, auth=source.requests_auth)
        repo = f"{source.account}/backed/app"
        acked: list[tuple[str, str]] = []  # (tag, manifest digest), in order
        lock, stop, errors = threading.Lock(), threading.Event(), []
        for n in range(3):
            acked.append((f"before{n}", push_image(client, repo, f"before{n}", seed=b"b%d" % n)[0]))

        def pusher():
            own = OCIClient(source.url, auth=source.requests_auth)
            n = 0
            try:
                while not stop.is_set() or n < 2:
                    tag = f"during{n}"
                    digest, _ = push_image(own, repo, tag, seed=b"d%d" % n)
                    with lock:
                        acked.append((tag, digest))
                    n += 1
            except Exception as e:  # reported by the test, not lost in a thread
                errors.append(e)

        thread = threading.Thread(target=pusher)
        thread.start()
        with lock:
            before_backup = list(acked)
        try:
            out = source.cli("backup", str(tmp_path / "backup"))
        finally:
            stop.set()
            thread.join(120)
        assert not errors, errors
        assert "backed up the index" in out
        source.stop()

        restore = RegistryProcess(data_dir=str(tmp_path / "restored"), log_path=str(tmp_path / "restored.log"))
        restore.cli("restore", str(tmp_path / "backup"))
        restored = RegistryProcess(data_dir=str(tmp_path / "restored"), log_path=str(tmp_path / "restored.log"),
                                   creds=source.creds)
        restored.start()
        rclient = OCIClient(restored.url, auth=restored.requests_auth)
        tags = set(rclient.tags(repo))
        for tag, digest in before_backup:
            assert tag in tags
        digests = dict(acked)
        for tag in tags:  # whatever the snapshot holds is whole
            manifest = pull_image(rclient, repo, tag)
            assert "sha256:" + __import__("hashlib").sha256(manifest).hexdigest() == digests[tag]
    finally:
        source.close()
        if restored is not None:
            restored.close()
