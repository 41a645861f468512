"""
The S3 calls made while the index's writer is held (L{izreg.storage.s3.Bounded}), against a real moto
server behind a TCP proxy of the test's own that goes silent: a commit's check that a blob it found
already stored is still there waits one C{writer_timeout}, then the next calls fail at once. On a real
server (the collector's delete, with another account's writes meanwhile): tests/e2e/test_s3_queue.py.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from izreg.core.digest import Digest
from izreg.service.config import Config
from izreg.storage.interfaces import StorageError
from izreg.storage.s3 import S3Uploads, make_client, s3_blobs
from tests.storage.test_contract import NAME, append

pytestmark = pytest.mark.s3

WRITER_TIMEOUT = 1
#: what a bounded call may take in all on a loaded machine
WITHIN = WRITER_TIMEOUT + 4


@pytest.fixture
def proxy(moto_proxy):
    return moto_proxy


def stored(moto_server, s3_bucket, proxy, data: bytes):
    """The config and blob store of a node behind C{proxy}, and C{data} already stored as a blob."""
    config = Config(storage_backend="s3", s3_bucket=s3_bucket, s3_endpoint_url=proxy.url, s3_threads=2,
                    s3_read_timeout=30, s3_writer_timeout=WRITER_TIMEOUT)
    blobs = s3_blobs(config, deferToThread)
    digest = Digest.of(data)
    moto_server.client().put_object(Bucket=s3_bucket, Key=blobs.keys.blob(digest), Body=data)
    return config, blobs, data, digest


@pytest_twisted.ensureDeferred
async def test_the_commit_of_a_blob_found_stored_waits_one_writer_timeout_for_a_silent_bucket(
        moto_server, s3_bucket, proxy):
    # promote runs in the index's commit (on LMDB the one writer thread): its HEAD waited read_timeout
    # (30 s here, 60 by default) per attempt, five attempts, with every account's writes behind it
    config, blobs, data, digest = stored(moto_server, s3_bucket, proxy, b"stored before" * 100)
    uploads = S3Uploads(blobs)
    session = uploads.create(NAME, 1.0)
    await append(uploads, session, data)
    await uploads.seal(session, digest)
    assert session.reused  # found stored: the commit checks it is still there

    proxy.blackhole()
    began = time.monotonic()
    with pytest.raises(StorageError):
        await deferToThread(uploads.promote, session, digest)
    assert time.monotonic() - began < WITHIN
    began = time.monotonic()
    with pytest.raises(StorageError, match="did not answer a moment ago"):  # not tried: no wait at all
        await deferToThread(blobs.delete, digest)
    assert time.monotonic() - began < 1
    # the bucket back: an answer to any other client (here /readyz's, a HEAD of the bucket) ends the quiet at
    # once; the next commit was refused for the rest of QUIET (10 s) after /readyz said ready again
    proxy.restore()
    check = make_client(config, timeout=WRITER_TIMEOUT)
    blobs.bounded.hear(check)
    await deferToThread(check.head_bucket, Bucket=s3_bucket)
    await deferToThread(blobs.delete, digest)
    assert blobs.stat(digest) is None


@pytest_twisted.ensureDeferred
async def test_a_silent_listing_does_not_quiet_the_commits_and_a_commit_check_keeps_its_retries(
        moto_server, s3_bucket, proxy):
    # the collector's listing (an I/O thread) shared the writer's quiet: one slow page refused every commit's
    # S3 call for 10 s; and the commit's check in the S3 pool (seal) lost botocore's retries to it
    _, blobs, data, digest = stored(moto_server, s3_bucket, proxy, b"listed" * 100)
    proxy.blackhole()
    with pytest.raises(StorageError):
        await deferToThread(blobs.digests)
    proxy.restore()
    assert await deferToThread(blobs.stat, digest) == (len(data), pytest.approx(time.time(), abs=600))
    blobs.bounded._quiet_until = time.monotonic() + 600  # the writer's calls quiet: the seal's check is not
    assert (await deferToThread(blobs.stat, digest, held=False))[0] == len(data)
