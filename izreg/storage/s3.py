# -*- test-case-name: tests.storage.test_contract,tests.storage.test_s3_start,tests.e2e.test_s3 -*-
"""
Blobs and upload sessions in an S3-compatible bucket (AWS S3, MinIO, Ceph
RGW, GCS's S3 API, moto), through boto3: the reference client, with SigV4,
retries and the standard credential chain. boto3 blocks, so every call runs
in a bounded thread pool (C{run}, deferToThreadPool), never on the reactor; a
call that finds no free thread within C{[storage.s3] queue_timeout} fails with
L{busy} (a 503) and never runs.

Keys under C{prefix}::

    blobs/<alg>/<hex[:2]>/<hex>     a blob: written whole (PutObject, CopyObject), never partial
    uploads/<id>/data               the multipart upload of a session (staging key)
    uploads/<id>/tail.<n>           the acknowledged bytes past the last part (< one part)

An upload body is hashed as it arrives and shipped in parts of L{PART_SIZE}
bytes (S3's minimum part), one part in flight per upload while the next
fills; the connection is paused when half of that one is in, so memory per
upload is about one and a half parts. A PATCH is acknowledged once its full parts are
uploaded and the rest (the tail, smaller than a part) is stored as a tail
object; the LMDB record names the multipart upload id, the parts (number,
ETag, size) and the tail, so a session survives a restart of izreg.

A commit: the running hash is checked first (after a restart there is
none: the completed staging object is read back and hashed). A blob that
fits in one part is written with one PutObject at its content address;
a larger one completes the multipart upload on the staging key, then is
copied server-side to its content address (CopyObject, a multipart copy
above L{COPY_PART}). Either way the object at the content address appears whole
and only after its digest is verified, and the 201 follows S3's answer
(durable in the bucket). Then the staging objects are deleted.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from izreg.core.digest import Digest
from izreg.core.text import without_userinfo
from izreg.storage.interfaces import (
    DigestMismatch,
    IBlobReader,
    IBlobStore,
    IBodySink,
    IUploadStore,
    StorageBusy,
    StorageError,
)
from izreg.storage.sink import SinkBase
from izreg.storage.uploads import UploadSession

log = Logger()

#: bytes per multipart part: S3's minimum (5 MiB, except the last part), one
#: more of it every 1,000 parts (S3 takes at most 10,000 parts: blobs up to
#: 268 GiB, while memory stays at two small parts for any common blob)
PART_SIZE = 5 * 1024 * 1024
PARTS_PER_STEP = 1000
#: hash and buffer incoming bytes in pieces of this size
HASH_SIZE = 256 * 1024
#: a blob larger than this is copied to its content address in parts of this size (UploadPartCopy),
#: else with one CopyObject: S3 sends no byte of its answer until a copy is done, and one of up to
#: 5 GiB (its limit) on a slow store outlasted read_timeout, then was sent again. 128 MiB in 60 s: a
#: store that copies at 2.2 MB/s or more
COPY_PART = 128 * 1024**2
READ_CHUNK = 1024 * 1024
#: with several nodes, upload bytes with no record are orphans only once this old (seconds): younger
#: ones may be another node's monolithic POST in flight
ORPHAN_AGE = 24 * 3600


#: boto3 sessions by credentials and region: each session's loader holds the S3 model (about 12 MiB),
#: so the clients of one process (the blobs', the readiness check's) share one
_SESSIONS: dict[tuple, Any] = {}


def _session(config):
    import boto3

    key = (config.s3_access_key_id, config.s3_secret_access_key, config.s3_region)
    session = _SESSIONS.get(key)
    if session is None:
        session = _SESSIONS[key] = boto3.session.Session(
            aws_access_key_id=config.s3_access_key_id,
            aws_secret_access_key=config.s3_secret_access_key,
            region_name=config.s3_region,
        )
    return session


def make_client(config, timeout: float | None = None, connections: int = 1):
    """
    A boto3 S3 client for C{config}'s C{[storage.s3]} (credentials: the config, else boto3's chain);
    with C{timeout}, one that waits at most that long to connect and for each read, and never retries
    (L{bucket_error}'s; L{Bounded}'s), with C{connections} kept open.
    """
    from botocore.config import Config as BotoConfig

    session = _session(config)
    options = dict(
        max_pool_connections=config.s3_threads,
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        # a loaded store (or moto on a busy machine) answers slowly: wait, do not re-send a part; but a
        # connection that died silently (a blackhole) holds its thread this long, then the call retries
        read_timeout=config.s3_read_timeout,
        signature_version="s3v4",
    )
    if timeout is not None:
        options.update(max_pool_connections=connections, retries={"total_max_attempts": 1, "mode": "standard"},
                       connect_timeout=timeout, read_timeout=timeout)
    if config.s3_endpoint_url:
        options["s3"] = {"addressing_style": "path"}  # MinIO, RGW, moto: no bucket DNS names
    return session.client("s3", endpoint_url=config.s3_endpoint_url, config=BotoConfig(**options))


def check_bucket(config):
    """
    Raise L{StorageError} with one line when the bucket cannot be reached
    (start-up); else return the client, its connections closed (so it may
    cross twistd's fork), for L{open_s3}: one client, one copy of its model.
    """
    client = make_client(config)
    where = f"S3 bucket {config.s3_bucket!r}" + endpoint_host(config.s3_endpoint_url)
    try:
        client.head_bucket(Bucket=config.s3_bucket)
    except Exception as e:  # botocore's errors: no credentials, connection refused, 403, 404...
        raise StorageError(f"{where} is not reachable: {_describe(e)}") from None
    finally:
        client.close()
    return client


def endpoint_host(url: str | None) -> str:
    """C{" at HOST[:PORT]"} of an endpoint URL, for a log line (a URL may carry user:password@), or ""."""
    if not url:
        return ""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f" at {parts.hostname}" + (f":{parts.port}" if parts.port else "")


def bucket_error(client, bucket: str) -> str | None:
    """
    The readiness check of the bucket (blocking: in a thread): one HEAD of it with C{client} (a
    L{make_client} with a timeout); C{None} when it answers, else why, in one line that names no
    endpoint (C{/readyz} answers anyone).
    """
    try:
        client.head_bucket(Bucket=bucket)
    except Exception as e:
        unanswered = no_answer(e)
        if unanswered == "timeout":
            return "the S3 endpoint did not answer in time"
        if unanswered == "unreachable":
            return "cannot connect to the S3 endpoint"
        return f"the S3 bucket cannot be reached: {_describe(e)}"  # an answer: no such bucket, access denied, 503...
    return None


def no_answer(e: BaseException) -> str | None:
    """
    Why an S3 call (botocore's exception C{e}) got no answer: C{"timeout"} (to connect or for the next
    bytes), C{"unreachable"} (refused, reset, closed, no route, DNS), else C{None} (an answer, or a
    failure before the request left: no credentials). L{bucket_error}'s and the metrics' outcomes.
    """
    from botocore.exceptions import ConnectionError, ConnectTimeoutError, HTTPClientError, ReadTimeoutError

    if isinstance(e, (ConnectTimeoutError, ReadTimeoutError)):
        return "timeout"
    if isinstance(e, (ConnectionError, HTTPClientError, OSError)):
        return "unreachable"
    return None


#: what botocore's "Unable to locate credentials" leaves out: where izreg (boto3's chain) looks for them
NO_CREDENTIALS = ("no credentials: set [storage.s3] access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID and"
                  " AWS_SECRET_ACCESS_KEY in the server's environment (or ~/.aws/credentials, an instance role)")


def _describe(e: Exception) -> str:
    from botocore.exceptions import NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return NO_CREDENTIALS
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code") or status
        if str(code) in ("404", "NoSuchBucket"):
            return "no such bucket"
        if str(code) in ("403", "AccessDenied"):
            return "access denied (check the credentials and the bucket policy)"
        return f"{code} {error.get('Message', '')}".strip()
    # botocore's own line may quote the endpoint URL whole: its user:password@, if any, left out
    return without_userinfo(str(e).splitlines()[0]) if str(e) else type(e).__name__


def _not_found(e: Exception) -> bool:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NoSuchUpload", "NotFound") or \
        response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404


def busy(wait: float) -> StorageBusy:
    """The failure of an S3 call that waited C{wait} seconds for a free S3 thread, in vain, and never ran."""
    return StorageBusy(f"S3: no thread free for {wait:g} s (storage.s3.queue_timeout): the bucket answers slowly"
                       " or not at all")


def _s3(f):
    """
    Run an S3 call; botocore's failures become L{StorageError} (a 503 for the client). izreg's own
    L{FileNotFoundError} (an object not there: L{S3Reader.begin}'s 404) passes as it is.
    """

    def call(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except (StorageError, DigestMismatch, FileNotFoundError):
            raise
        except Exception as e:
            raise StorageError(f"S3: {_describe(e)}") from e

    call.__name__ = f.__name__
    return call


#: after a L{Bounded} call got no answer, seconds the next ones fail at once, untried
QUIET = 10.0


class Bounded:
    """
    The S3 calls made while the index's writer is held (on LMDB the one writer thread of every account's
    writes; on PostgreSQL a database connection, under a blob lock): a commit's check that a blob it
    found already stored is still there, the empty config's put, the collector's checks and deletes
    (and its listing of the bucket, in an I/O thread: none held for minutes, nor the stop). They
    run on a client that waits at most C{[storage.s3] writer_timeout} seconds to connect and for the
    answer and tries once; a call that got no answer has the next ones fail at once for L{QUIET} seconds.
    A bucket gone silent so holds the writer about one C{writer_timeout}, not a C{read_timeout} per
    attempt per call (minutes). A failed commit is a 503 (push again); the collector retries next sweep.
    """

    def __init__(self, client) -> None:
        self.client = client
        self._quiet_until = 0.0

    def hear(self, client) -> None:
        """
        Any answer the bucket gives C{client} (the blob store's, /readyz's: botocore's C{after-call}, any
        HTTP answer) ends the quiet, so the first commit after an outage is tried, not refused for the
        rest of L{QUIET} (/readyz said ready again and the next push got a 503).
        """
        client.meta.events.register("after-call.s3", self._heard, unique_id=f"izreg-bounded-{id(self)}")

    def _heard(self, **_) -> None:
        self._quiet_until = 0.0

    def __call__(self, method: str, **kwargs):
        if time.monotonic() < self._quiet_until:
            raise StorageError("S3: the bucket did not answer a moment ago: not tried again yet")
        try:
            return getattr(self.client, method)(**kwargs)
        except Exception as e:
            if no_answer(e) is not None:
                self._quiet_until = time.monotonic() + QUIET
            raise

    def pages(self, method: str, **kwargs):
        """The pages of a listing, each one bounded call."""
        token = None
        while True:
            page = self(method, **kwargs, **({"ContinuationToken": token} if token else {}))
            yield page
            token = page.get("NextContinuationToken")
            if not token:
                return


class _Keys:
    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket, self.prefix = bucket, prefix

    def blob(self, digest: Digest) -> str:
        return f"{self.prefix}blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def uploads(self) -> str:
        return f"{self.prefix}uploads/"

    def upload(self, upload_id: str) -> str:
        return f"{self.prefix}uploads/{upload_id}/"

    def staging(self, upload_id: str) -> str:
        return f"{self.upload(upload_id)}data"

    def tail(self, upload_id: str, n: int) -> str:
        return f"{self.upload(upload_id)}tail.{n}"


# -- blobs ---------------------------------------------------------------------------------


@implementer(IBlobReader)
class S3Reader:
    """A ranged GET, opened on the first read and read in the thread pool one piece at a time."""

    def __init__(self, blobs: "S3Blobs", key: str) -> None:
        self._blobs, self._key = blobs, key
        self._position = 0
        self._body = None
        self._lock = threading.Lock()
        self._closed = False

    def seek(self, offset: int) -> None:
        self._position = offset

    def begin(self):
        """
        Open the object at the current position (a Deferred): called before
        the answer's head is sent, so that a bucket out of reach is a clean
        503 (L{StorageError}) and a missing object a L{FileNotFoundError},
        not a connection cut after a 200.
        """
        return self._blobs.run(self._begin)

    @_s3
    def _begin(self) -> None:
        with self._lock:
            if not self._closed and self._body is None and not self._get():
                raise FileNotFoundError(self._key)

    def read(self, size: int = -1):
        if not isInIOThread():
            return self._read(size)  # already in a worker thread (the browse API): block here
        return self._blobs.run(self._read, size)

    def _get(self) -> bool:
        """The GET of the object from the current position (under the lock); C{False} if there is no object."""
        ranged = {"Range": f"bytes={self._position}-"} if self._position else {}
        try:
            answer = self._blobs.client.get_object(Bucket=self._blobs.keys.bucket, Key=self._key, **ranged)
        except Exception as e:
            if "InvalidRange" in str(e):
                return True  # at or past the end: reads give b""
            if _not_found(e):
                return False
            raise
        self._body = answer["Body"]
        return True

    @_s3
    def _read(self, size: int) -> bytes:
        with self._lock:
            if self._closed:
                return b""
            if self._body is None:
                if not self._get():
                    raise StorageError(f"S3: no object {self._key}")
                if self._body is None:
                    return b""  # at or past the end
            data = self._body.read(size if size >= 0 else None)
            self._position += len(data)
            return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._body is None and self._lock.acquire(blocking=False):
            try:
                if self._body is None:
                    return  # never opened (a 404, a 503 refused before its GET): no S3 thread to wait for
            finally:
                self._lock.release()
        if not isInIOThread():
            self._close()
            return
        self._blobs.run(self._close).addErrback(lambda f: None)

    def _close(self) -> None:
        with self._lock:  # after any read in flight
            if self._body is not None:
                self._body.close()
                self._body = None


@implementer(IBlobStore)
class S3Blobs:
    def __init__(self, client, bucket: str, prefix: str, run, redirect_ttl: int | None = None,
                 bounded: Bounded | None = None, copy_part: int = COPY_PART) -> None:
        self.client, self.run = client, run
        self.copy_part = copy_part
        self.keys = _Keys(bucket, prefix)
        self.redirect_ttl = redirect_ttl
        #: L{stat}, L{put_bytes} and L{delete} run inside the index's write transactions: bounded
        self.bounded = bounded or Bounded(client)
        #: the collector's listing (an I/O thread, not the writer): bounded the same, with a quiet of its own,
        #: so one slow page does not refuse every commit's S3 call for L{QUIET}
        self.listing = Bounded(self.bounded.client)

    def open(self, digest: Digest) -> S3Reader:
        return S3Reader(self, self.keys.blob(digest))

    def redirect_url(self, digest: Digest, filename: str | None = None) -> str | None:
        if not self.redirect_ttl:
            return None
        # signing is local (no request): fine on the reactor
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.keys.bucket, "Key": self.keys.blob(digest)},
            ExpiresIn=self.redirect_ttl)

    @_s3
    def stat(self, digest: Digest, *, held: bool = True) -> tuple[int, float] | None:
        """
        The blob's size and time, or C{None}. C{held}: called with the index's writer held (the
        L{Bounded} client: one try); else on the blob client, with botocore's retries (a commit's check
        in the S3 pool, where a SlowDown or a reset must not fail the push).
        """
        where = {"Bucket": self.keys.bucket, "Key": self.keys.blob(digest)}
        try:
            head = self.bounded("head_object", **where) if held else self.client.head_object(**where)
        except Exception as e:
            if _not_found(e):
                return None
            raise
        return head["ContentLength"], head["LastModified"].timestamp()

    @_s3
    def put_bytes(self, digest: Digest, data: bytes) -> None:
        if self.stat(digest) is None:
            self.bounded("put_object", Bucket=self.keys.bucket, Key=self.keys.blob(digest), Body=bytes(data))

    @_s3
    def delete(self, digest: Digest) -> None:
        self.bounded("delete_object", Bucket=self.keys.bucket, Key=self.keys.blob(digest))

    @_s3
    def digests(self):
        base = f"{self.keys.prefix}blobs/"
        found = []
        for page in self.listing.pages("list_objects_v2", Bucket=self.keys.bucket, Prefix=base):
            for item in page.get("Contents", []):
                parts = item["Key"][len(base):].split("/")
                if len(parts) == 3:
                    try:
                        found.append(Digest(parts[0], parts[2]))
                    except ValueError:
                        continue
        return iter(found)

    @_s3
    def hash(self, digest: Digest, algorithm: str) -> str:
        return self.hash_key(self.keys.blob(digest), algorithm)

    def hash_key(self, key: str, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        body = self.client.get_object(Bucket=self.keys.bucket, Key=key)["Body"]
        try:
            for chunk in iter(lambda: body.read(READ_CHUNK), b""):
                hasher.update(chunk)
        finally:
            body.close()
        return hasher.hexdigest()

    def copy(self, source: str, target: str, size: int) -> None:
        """
        Server-side copy: one CopyObject up to L{copy_part} bytes, else a multipart copy in parts of
        that size, one after the other in this thread; the target appears whole, or not at all.
        """
        bucket, whole = self.keys.bucket, {"Bucket": self.keys.bucket, "Key": source}
        if size <= self.copy_part:
            self.client.copy_object(Bucket=bucket, Key=target, CopySource=whole)
            return
        upload = self.client.create_multipart_upload(Bucket=bucket, Key=target)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, self.copy_part), 1):
                end = min(start + self.copy_part, size) - 1
                answer = self.client.upload_part_copy(Bucket=bucket, Key=target, UploadId=upload, PartNumber=number,
                                                      CopySource=whole, CopySourceRange=f"bytes={start}-{end}")
                parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            self.client.complete_multipart_upload(Bucket=bucket, Key=target, UploadId=upload,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=target, UploadId=upload)
            except Exception:
                pass  # the store drops it by its lifecycle rule, if any; the copy's own failure says more
            raise


# -- uploads ---------------------------------------------------------------------------------


@dataclass
class S3Session(UploadSession):
    multipart: str | None = None  # the multipart upload id, once the first part is sent
    parts: list = field(default_factory=list)  # [number, etag, size] per part, in order
    tail: bytearray | None = field(default_factory=bytearray)  # bytes past the parts; None: not loaded yet
    tail_seq: int = 0  # tail.<n> holds the acknowledged tail (0: none)
    tail_size: int = 0
    writer: Any = None
    removed: bool = False
    #: L{S3Uploads._seal} found the blob's object already there and wrote nothing: L{S3Uploads.promote} checks it
    reused: bool = False


@implementer(IBodySink)
class S3Writer(SinkBase):
    """
    Appends one request body to an S3 session: hashes it, gathers it into
    parts and ships them in order, one at a time, in the thread pool.
    """

    def __init__(self, store: "S3Uploads", session: S3Session, limit, expected, discard: bool) -> None:
        previous = session.writer
        super().__init__(session, limit, expected)
        self.store, self.discard = store, discard
        self.failure: Exception | None = None
        self._incoming = bytearray()
        self._parts_before = [list(p) for p in session.parts]
        self._tail_before = bytes(session.tail) if session.tail is not None else None
        self._queued = 0
        self._shipping = False  # a part is queued or in flight
        self._producer = None
        self._paused = False
        self._chain = previous.drained() if previous is not None else defer.succeed(None)
        session.writer = self
        if session.tail is None:
            self._enqueue(self._load_tail)

    # -- the request's content ----------------------------------------------------------

    def throttle(self, producer) -> None:
        self._producer = producer

    def write(self, data: bytes) -> None:
        if not self._accept(data):
            return
        self._incoming += data
        if len(self._incoming) >= HASH_SIZE:
            self._pump()

    def done(self, keep_busy: bool = False) -> int:
        self._finished = True
        self._pump()
        self._resume()
        self.session.offset = self.start + self.written
        if not keep_busy:
            self._chain.addBoth(self._release)
        return self.session.offset

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._incoming.clear()
        self._resume()
        session = self.session
        if self.discard:
            self.store.remove(session).addErrback(lambda f: log.failure("dropping an S3 upload failed", f))
            return
        session.parts = self._parts_before
        session.tail = bytearray(self._tail_before) if self._tail_before is not None else None
        session.hasher = self._hasher_before
        session.offset = self.start
        self._chain.addBoth(self._release)  # parts in flight finish before the next writer starts

    def rollback(self) -> None:
        """
        Undo C{done} after the store acknowledged the body but the index did not record it (a 503): the
        session's parts, tail and tail object already hold the body, and a retry of it from the offset
        put back would append it twice, under a hash that still matches. The next request revives the
        session from its record, the last acknowledged state.
        """
        super().rollback()
        self.store.forget(self.session)

    def _release(self, result=None):
        self.session.busy = False
        self._let_go()
        return None

    def _let_go(self) -> None:
        """Nothing left in flight: the session no longer needs this writer (no cycle keeps buffers alive)."""
        self._tail_before = None
        if self.session.writer is self:
            self.session.writer = None

    # -- parts ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Hash what came in, move it to the tail, and ship every full part."""
        session = self.session
        if session.tail is None or self.failure is not None:
            return  # the tail is loading; its job pumps again
        if self._incoming:
            if session.hasher is not None:
                session.hasher.update(self._incoming)
            session.tail += self._incoming
            self._incoming.clear()
        size = self.store.part_size * (1 + len(session.parts) // PARTS_PER_STEP)
        if self._shipping:
            if len(session.tail) >= size // 2:
                self._pause()  # one part in flight and half the next one in: memory stays at 1.5 parts
            return
        if len(session.tail) >= size:
            part = session.tail  # the buffer itself goes (no copy of the part); the rest starts a new tail
            session.tail = part[size:]
            del part[size:]
            number = len(session.parts) + 1
            session.parts.append([number, None, len(part)])
            self._shipping = True
            self._enqueue(self._ship, number, part)

    def _pause(self) -> None:
        if not self._finished and self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()

    def _enqueue(self, job, *args) -> None:
        self._queued += 1

        def step(_):
            if self.failure is not None or self.session.removed:
                return None
            d = self.store.run(job, *args)
            d.addCallback(lambda value: getattr(self, f"{job.__name__}_done")(value, *args))
            return d

        def failed(f):
            if self.failure is None:
                self.failure = f.value if isinstance(f.value, StorageError) else StorageError(str(f.value))
                if isinstance(f.value, StorageError):  # the bucket out of reach: one line (the request logs its 503)
                    log.warn("S3 upload {id} failed: {error}", id=self.session.id, error=str(f.value))
                else:
                    log.failure("S3 upload {id} failed", f, id=self.session.id)
            return None

        def after(_):
            self._queued -= 1
            if job.__name__ == "_ship":
                self._shipping = False
                self._pump()  # the next part, if it is full
            if not self._shipping:
                self._resume()
            return None

        self._chain.addCallback(step).addErrback(failed).addBoth(after)

    def _resume(self) -> None:
        if self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()

    @_s3
    def _ship(self, number: int, part: bytearray) -> str:
        store, session = self.store, self.session
        if session.multipart is None:
            session.multipart = store.client.create_multipart_upload(
                Bucket=store.keys.bucket, Key=store.keys.staging(session.id))["UploadId"]
        answer = store.client.upload_part(Bucket=store.keys.bucket, Key=store.keys.staging(session.id),
                                          UploadId=session.multipart, PartNumber=number, Body=part)
        return answer["ETag"]

    def _ship_done(self, etag: str, number: int, part: bytearray) -> None:
        if len(self.session.parts) >= number:
            self.session.parts[number - 1][1] = etag

    @_s3
    def _load_tail(self) -> bytes:
        session = self.session
        if not session.tail_size:
            return b""
        body = self.store.client.get_object(Bucket=self.store.keys.bucket,
                                            Key=self.store.keys.tail(session.id, session.tail_seq))["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        if len(data) < session.tail_size:
            raise StorageError(f"the tail of upload {session.id} is shorter than acknowledged")
        return data[:session.tail_size]

    def _load_tail_done(self, data: bytes) -> None:
        self.session.tail = bytearray(data)
        self._tail_before = bytes(data) if self._tail_before is None else self._tail_before
        self._pump()

    def drained(self) -> defer.Deferred:
        """Fires when every job queued so far has finished (never fails)."""
        d = defer.Deferred()
        self._chain.addBoth(lambda _: d.callback(None))
        return d

    @defer.inlineCallbacks
    def flush(self):
        """Ship every full part (also what the tail load held back) and wait for them; raise the first failure."""
        while True:
            yield self.drained()
            if self.failure is not None:
                raise self.failure
            self._pump()
            if not self._queued:
                return


@implementer(IUploadStore)
class S3Uploads:
    """
    Upload sessions in the bucket; C{sessions} caches the ones this process
    worked on (their running hash, their tail bytes). C{shared}: the upload
    records are in a database other nodes write too (#16); the registry then
    drops a cached session whose record another node moved on (it is rebuilt
    from the record: no hash, the staging object is hashed at commit, the
    tail read back from the bucket), L{prune} those another node ended, and
    young upload bytes with no record are not orphans (another node's POST).
    """

    def __init__(self, blobs: S3Blobs, part_size: int = PART_SIZE, shared: bool = False) -> None:
        self.blobs = blobs
        self.part_size = part_size
        self.shared = shared
        self.client, self.keys, self.run = blobs.client, blobs.keys, blobs.run
        self.sessions: dict[str, S3Session] = {}

    def create(self, name: str, now: float, persisted: bool = True, algorithm: str = "sha256") -> S3Session:
        session = S3Session(str(uuid.uuid4()), name, "", now, hasher=hashlib.new(algorithm), persisted=persisted)
        self.sessions[session.id] = session
        return session

    def get(self, upload_id: str, record: dict | None) -> S3Session | None:
        session = self.sessions.get(upload_id)
        if session is not None:
            return session
        if record is None:
            return None
        state = record.get("s3", {})
        parts = [list(p) for p in state.get("parts", [])]
        tail_size = state.get("tail_size", 0)
        if sum(p[2] for p in parts) + tail_size != record["offset"] or any(p[1] is None for p in parts):
            return None
        session = S3Session(upload_id, record["name"], "", record["started"], record["offset"], hasher=None,
                            multipart=state.get("multipart"), parts=parts,
                            tail=None if tail_size else bytearray(), tail_seq=state.get("tail", 0),
                            tail_size=tail_size)
        self.sessions[upload_id] = session
        return session

    def sink(self, session: S3Session, limit=None, expected=None, discard: bool = False) -> S3Writer:
        return S3Writer(self, session, limit, expected, discard)

    def record(self, session: S3Session, now: float) -> dict:
        record = session.record(now)
        record["s3"] = {"multipart": session.multipart, "parts": [list(p) for p in session.parts],
                        "tail": session.tail_seq, "tail_size": session.tail_size}
        return record

    @defer.inlineCallbacks
    def acknowledge(self, sink: S3Writer):
        session = sink.session
        try:
            yield sink.flush()
            if sink.written or len(session.tail) != session.tail_size:
                n = session.tail_seq + 1
                if session.tail:
                    yield self.run(self._put, self.keys.tail(session.id, n), session.tail)  # no writer runs meanwhile
                stale = session.tail_seq - 1  # the LMDB record names tail_seq until the caller writes the new one
                session.tail_seq, session.tail_size = n, len(session.tail)
                if stale > 0:
                    self.run(self._delete, self.keys.tail(session.id, stale)).addErrback(lambda f: None)
        except Exception:
            self.forget(session)  # the next request revives it from its last acknowledged record
            raise
        sink._let_go()
        return session.offset

    @_s3
    def _put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.keys.bucket, Key=key, Body=data)

    @_s3
    def _delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.keys.bucket, Key=key)

    @defer.inlineCallbacks
    def seal(self, session: S3Session, digest: Digest):
        writer = session.writer
        if writer is None:
            writer = self.sink(session)  # a commit with no body: finish the tail load, if any
            writer.done(keep_busy=True)
        try:
            yield writer.flush()
        except Exception:
            self.forget(session)
            raise
        hasher = session.hasher if session.hasher is not None and session.hasher.name == digest.algorithm else None
        if hasher is not None and hasher.hexdigest() != digest.hex:
            raise DigestMismatch(f"{digest.algorithm}:{hasher.hexdigest()}")
        try:
            yield self.run(self._seal, session, digest, hasher is not None)
        except StorageError:
            self.forget(session)
            raise
        writer._let_go()
        session.tail = bytearray()  # stored: drop the buffer now, not when the session is collected

    @_s3
    def _seal(self, session: S3Session, digest: Digest, verified: bool) -> None:
        bucket, target = self.keys.bucket, self.keys.blob(digest)
        if not session.parts:
            data = session.tail
            if not verified:
                actual = hashlib.new(digest.algorithm, data).hexdigest()
                if actual != digest.hex:
                    raise DigestMismatch(f"{digest.algorithm}:{actual}")
            session.reused = self.blobs.stat(digest, held=False) is not None
            if not session.reused:
                self.client.put_object(Bucket=bucket, Key=target, Body=data)
        else:
            staging = self.keys.staging(session.id)
            parts = [dict(PartNumber=n, ETag=etag) for n, etag, _ in session.parts]
            if session.tail:
                number = len(session.parts) + 1
                answer = self.client.upload_part(Bucket=bucket, Key=staging, UploadId=session.multipart,
                                                 PartNumber=number, Body=session.tail)
                parts.append(dict(PartNumber=number, ETag=answer["ETag"]))
            self.client.complete_multipart_upload(Bucket=bucket, Key=staging, UploadId=session.multipart,
                                                  MultipartUpload={"Parts": parts})
            if not verified:
                actual = self.blobs.hash_key(staging, digest.algorithm)
                if actual != digest.hex:
                    raise DigestMismatch(f"{digest.algorithm}:{actual}")
            session.reused = self.blobs.stat(digest, held=False) is not None
            if not session.reused:
                self.blobs.copy(staging, target, session.offset)
        self._clean(session.id, None)

    @_s3
    def promote(self, session: S3Session, digest: Digest) -> None:
        """
        L{seal} wrote the verified object at its content address: nothing
        left to do, unless it found the object already there (an old blob,
        or an orphan) and wrote nothing. A collector (another node's, under
        the blob's lock) may have deleted that one since: this runs under
        the same lock, in the index's commit, and checks it is still there,
        else the commit fails (a 503: push again) instead of recording a
        blob whose bytes are gone.
        """
        if session.reused and self.blobs.stat(digest) is None:
            raise StorageError(f"S3: blob {digest} was deleted (collected) before its record was written; push it again")

    def remove(self, session: S3Session) -> defer.Deferred:
        self.forget(session)
        session.removed = True
        waited = session.writer.drained() if session.writer is not None else defer.succeed(None)
        record = {"s3": {"multipart": session.multipart}}

        def drop(_):
            session.writer, session.tail = None, bytearray()
            return self.run(self.expire, session.id, record)

        return waited.addCallback(drop)

    def forget(self, session: S3Session) -> None:
        self.sessions.pop(session.id, None)

    def prune(self, known: set[str]) -> None:
        """Drop cached sessions whose record is gone (ended on another node) and that no request holds."""
        for upload_id, session in list(self.sessions.items()):
            if upload_id not in known and session.persisted and not session.busy:
                self.sessions.pop(upload_id, None)

    @_s3
    def expire(self, upload_id: str, record: dict | None) -> None:
        known = (record or {}).get("s3", {}).get("multipart")
        self._clean(upload_id, known)

    def _clean(self, upload_id: str, multipart: str | None) -> None:
        """Abort the session's multipart uploads and delete its objects (idempotent)."""
        bucket, staging = self.keys.bucket, self.keys.staging(upload_id)
        ids = {multipart} if multipart else set()
        listed = self.client.list_multipart_uploads(Bucket=bucket, Prefix=staging)
        ids.update(u["UploadId"] for u in listed.get("Uploads", []) if u["Key"] == staging)
        for multipart_id in ids:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=staging, UploadId=multipart_id)
            except Exception as e:
                if not _not_found(e):
                    raise
        keys = [item["Key"] for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=self.keys.upload(upload_id)) for item in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                              "Quiet": True})

    @_s3
    def orphans(self, known: set[str]) -> list[str]:
        bucket, base = self.keys.bucket, self.keys.uploads()
        found = set()
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=base):
            found.update(u["Key"][len(base):].split("/")[0] for u in page.get("Uploads", []))
        if self.shared:
            return sorted(i for i in found | self._idle_uploads(base) if i and i not in known and i not in self.sessions
                          and i not in self._busy_uploads(base))
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base, Delimiter="/"):
            found.update(p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", []))
        return sorted(i for i in found if i and i not in known and i not in self.sessions)

    def _idle_uploads(self, base: str) -> set[str]:
        """Upload ids with objects in the bucket (any age)."""
        found = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.keys.bucket, Prefix=base):
            found.update(item["Key"][len(base):].split("/")[0] for item in page.get("Contents", []))
        return found

    def _busy_uploads(self, base: str) -> set[str]:
        """
        Upload ids written to within L{ORPHAN_AGE}: with other nodes sharing
        the bucket, an upload with no record may be another node's
        monolithic POST in flight, not an orphan.
        """
        import datetime

        since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=ORPHAN_AGE)
        busy = set()
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.keys.bucket, Prefix=base):
            busy.update(u["Key"][len(base):].split("/")[0] for u in page.get("Uploads", []) if u["Initiated"] > since)
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.keys.bucket, Prefix=base):
            busy.update(item["Key"][len(base):].split("/")[0] for item in page.get("Contents", [])
                        if item["LastModified"] > since)
        return busy


def _big_buffers_back_to_the_os() -> None:
    """
    Part buffers are megabytes, allocated and freed in several threads. glibc
    raises its mmap threshold after such a free and then serves them from
    per-thread arenas that keep the memory; a fixed 1 MiB threshold has them
    mapped and unmapped, so izreg's RSS stays flat.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX: the S3 threads' small allocations share two arenas
    except (OSError, AttributeError):
        pass  # not glibc: its allocator has its own policy


def s3_blobs(config, run, client=None) -> S3Blobs:
    """
    The S3 blob store of C{config}; C{run} calls a blocking function in the S3 thread pool (the
    ``izreg`` command: inline); C{client}: the one start-up checked with.
    """
    # the writer thread, the I/O threads (the collector's scans) and the S3 threads may each hold one
    bounded = Bounded(make_client(config, timeout=config.s3_writer_timeout, connections=config.s3_threads + 4))
    client = client or make_client(config)
    bounded.hear(client)
    return S3Blobs(client, config.s3_bucket, config.s3_prefix, run,
                   redirect_ttl=config.s3_redirect_ttl if config.s3_redirect else None, bounded=bounded)


def open_s3(config, run, client=None) -> tuple[S3Blobs, S3Uploads]:
    """The S3 blob and upload stores of C{config} (L{s3_blobs})."""
    _big_buffers_back_to_the_os()
    blobs = s3_blobs(config, run, client)
    # upload records in a database other nodes share: the sessions cached here are checked against them
    return blobs, S3Uploads(blobs, shared=config.metadata_backend != "lmdb")
