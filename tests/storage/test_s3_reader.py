# -*- test-case-name: tests.storage.test_s3_reader -*-
"""S3Reader's close: an object never opened costs no S3 thread (in memory: no bucket)."""

from __future__ import annotations

from twisted.internet.defer import succeed

from izreg.storage.s3 import S3Reader


class Blobs:
    """What S3Reader asks of L{izreg.storage.s3.S3Blobs}: C{run} (here: counted, run at once)."""

    def __init__(self) -> None:
        self.runs: list = []

    def run(self, f, *args):
        self.runs.append(f)
        return succeed(f(*args))


class Body:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_closing_a_reader_never_opened_takes_no_s3_thread():
    # a GET refused for a busy pool (503) closed its reader through the same pool: a second call queued for
    # nothing, counted again in izreg_s3_queue_rejected_total when refused in turn
    blobs = Blobs()
    reader = S3Reader(blobs, "blobs/sha256/ab/abcd")
    reader.close()
    reader.close()
    assert blobs.runs == []


def test_closing_an_opened_reader_closes_its_body_in_the_pool():
    blobs = Blobs()
    reader = S3Reader(blobs, "blobs/sha256/ab/abcd")
    reader._body = body = Body()  # as _get leaves it
    reader.close()
    assert body.closed and reader._body is None and len(blobs.runs) == 1
