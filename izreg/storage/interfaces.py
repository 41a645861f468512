"""
The storage seam: what the registry and the HTTP layer may ask of blob and
upload storage. Nothing above ``izreg/storage/`` calls ``os`` on blob or
upload bytes, builds a path or holds a file object: it holds these.

Implementations: the filesystem (L{izreg.storage.blobs}, L{izreg.storage.uploads}),
S3-compatible object storage (L{izreg.storage.s3}) and an in-memory fake
(L{izreg.storage.memory}). ``tests/storage/test_contract.py`` holds every one
of them to the same behaviour.

Blocking methods are marked so: the caller runs them in a thread (the writer
thread or the I/O pool), never on the reactor. Methods that return a
Deferred do their own threading.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class DigestMismatch(Exception):
    """The bytes of an upload do not hash to the digest the client named."""

    def __init__(self, actual: str) -> None:
        super().__init__(actual)
        self.actual = actual


class StorageError(Exception):
    """The storage backend failed (not the client's fault): answered 503, logged."""


class StorageBusy(StorageError):
    """
    A storage call was not started: every thread that calls the backend stayed busy longer than the
    wait allowed (the store answers slowly or not at all). Answered 503 with Retry-After; nothing of
    the call ran.
    """


class IBlobReader(Interface):
    """
    An open blob, read once from a position. A reader may also offer
    C{sendfile(out_fd, offset, count) -> int} (the filesystem's does:
    ``os.sendfile``); the HTTP producer uses it on plain TCP when present.
    A reader that waits on the network may offer C{begin()}, a Deferred that
    opens it at its position (S3's does), raising L{StorageError} or
    L{FileNotFoundError}: the blob route calls it before the answer's head.
    """

    def seek(offset: int) -> None:
        """Where the next read starts (called before the first read)."""

    def read(size: int):
        """
        Up to C{size} bytes from the current position (C{b""} at the end):
        bytes, or, on the reactor thread, a Deferred that fires with them when
        the read waits on the network (never blocking the reactor). Called in
        a worker thread, a read may block and always returns bytes.
        """

    def close() -> None:
        """Release the file or the connection (idempotent)."""


class IBlobStore(Interface):
    """Immutable, content-addressed blobs: a blob is absent or whole, never partial."""

    def open(digest):
        """An L{IBlobReader} of the blob, cheap and non-blocking (it may fail on its first read if the blob is gone)."""

    def redirect_url(digest, filename: str | None = None):
        """A short-lived URL a client may fetch the blob from directly, or C{None} (serve the bytes)."""

    def stat(digest):
        """C{(size, mtime)} of a stored blob or C{None}. Blocking."""

    def put_bytes(digest, data: bytes) -> None:
        """Store a small blob whose digest the caller checked; durable on return. Blocking."""

    def delete(digest) -> None:
        """Remove a blob (absent is fine). Blocking; run on the writer thread."""

    def digests():
        """Iterate over every stored blob's digest. Blocking."""

    def hash(digest, algorithm: str) -> str:
        """The hex hash of a whole stored blob. Blocking."""


class IBodySink(Interface):
    """
    Where one upload request body goes as it arrives (the request's
    C{content}: Twisted calls C{write} per chunk, C{tell}/C{seek} when the
    body is complete and C{close} when the request ends).
    """

    session = Attribute("the L{UploadSession} the body appends to")
    expected = Attribute("the byte count a Content-Range announced, or None")
    written = Attribute("bytes received so far")
    overflow = Attribute("true when the body went past its limit")

    def write(data: bytes) -> None:
        """
        Append (buffered, hashed, shipped as it fills). C{data} is bytes-like
        (the chunked decoder passes views of its reads): copy it, never keep it.
        """

    def throttle(producer) -> None:
        """An C{IPushProducer} (the connection) the sink may pause while its store cannot keep up."""

    def done(keep_busy: bool = False) -> int:
        """
        Keep the bytes (synchronous: a client that goes away after this cannot
        truncate them); return the session's new offset. Durability comes from
        L{IUploadStore.acknowledge} or L{IUploadStore.seal}.
        """

    def abort() -> None:
        """Drop this body's bytes (the request failed or the client went away)."""

    def close() -> None:
        """The request ended: abort unless L{done} was called."""


class IUploadStore(Interface):
    """
    Resumable upload sessions: the bytes of each, appended in order and
    hashed as they arrive. The session's acknowledged state lives in LMDB
    (C{record}); the store revives a session from it after a restart.
    """

    sessions = Attribute("live sessions by id")

    def create(name: str, now: float, persisted: bool = True, algorithm: str = "sha256"):
        """A new, empty L{UploadSession}."""

    def get(upload_id: str, record: dict | None):
        """The live session, or one revived from its LMDB C{record}, or C{None}."""

    def sink(session, limit: int | None = None, expected: int | None = None, discard: bool = False):
        """An L{IBodySink} appending to C{session}; C{discard}: a failed body removes the session."""

    def record(session, now: float) -> dict:
        """What LMDB keeps of C{session} (JSON-able) so L{get} can revive it."""

    def acknowledge(sink):
        """Deferred: the body of C{sink} (after L{IBodySink.done}) is durable; fires with the offset."""

    def seal(session, digest):
        """
        Deferred: every byte of C{session} is durable and hashes to C{digest}
        (else it fails with L{DigestMismatch}). The blob is not yet visible.
        """

    def promote(session, digest) -> None:
        """Make a sealed session the blob C{digest} (absent before, whole after). Blocking: the writer thread."""

    def remove(session) -> None:
        """Forget C{session} and drop its bytes. Blocking."""

    def forget(session) -> None:
        """Drop the live session object (its bytes stay)."""

    def expire(upload_id: str, record: dict | None) -> None:
        """Drop the bytes of a session that is no longer live (expiry, orphans). Blocking."""

    def orphans(known: set[str]) -> list[str]:
        """Ids of stored sessions neither live nor in C{known} (left by a crash mid-POST). Blocking."""


class IMetadataIndex(Interface):
    """
    The registry's metadata: repositories, blob records and links, upload
    sessions, manifests, tags, referrers and the repository counters.

    Implementations: LMDB (L{izreg.storage.lmdbindex.Index}, one process) and
    PostgreSQL (L{izreg.storage.pgindex.PgIndex}, shared by several nodes);
    ``tests/storage/test_index.py`` holds both to the same behaviour.

    Every method is synchronous and one transaction. The server calls reads
    through its C{run_read} runner and writes through C{run_write} (LMDB: reads
    inline, writes on the writer thread; PostgreSQL: both on a thread pool);
    the ``izreg`` command calls them directly. Listings are in byte order and
    page after C{last} (exclusive; empty or None: from the start).
    """

    def close() -> None:
        """Release the environment or the connection pool."""

    def version():
        """
        A value that differs once any write to the index has committed (from
        this process or another), or C{None} when the store has no cheap one;
        answers at once, never waits on I/O. Answers read after it was taken
        may be served again while it is unchanged (the HTTP layer's tag pages).
        """

    # -- repositories
    def repo_exists(name: str) -> bool:
        """Whether the repository has a manifest, a tag or a blob link."""

    def list_repos(start: str, last, limit: int):
        """C{(names, more)}: repository names starting with C{start}, after C{last}, at most C{limit}."""

    def repo_stats(name: str):
        """The repository's counters (C{created, pushed, manifests, tags, size, unique, manifest_bytes}) or C{None}."""

    def list_repo_stats(start: str, last, limit: int):
        """Like L{list_repos}, as C{([(name, stats)], more)}."""

    # -- blobs and links
    def blob_size(name: str, digest):
        """The size of a blob the repository may read (recorded and linked), or C{None}."""

    def blob_record(digest):
        """The blob's record C{{"size", "created"[, "touched"]}} or C{None}."""

    def commit_blob(name: str, digest, size: int, now: float, upload_id, place=None) -> None:
        """Record and link a blob, end its upload session; C{place()} puts the bytes in place inside the transaction."""

    def mount_blob(name: str, digest, sources, now: float) -> bool:
        """Link the blob into C{name} if one of C{sources} has it linked (checked in the same transaction)."""

    def unused_blob(name: str, digest) -> bool:
        """Whether the repository has the blob linked and none of its manifests names it."""

    def touch_blob(name: str, digest, now: float) -> bool:
        """Hold a linked blob off garbage collection for a grace period; C{False} if it is gone."""

    def blob_referenced(digest) -> bool:
        """Whether any manifest of any repository names the blob."""

    def repos_linking(digest, within: str = "", limit: int | None = None):
        """
        The repositories that link the blob, in byte order; only those whose
        name starts with C{within}, at most C{limit}: a seek, not a walk of
        every repository that links it.
        """

    def unlink_blob(name: str, digest) -> bool:
        """
        Drop the repository's link (the repository goes when empty); C{False}
        if it has none. Refused when a manifest of the repository names the
        blob (config or layer), checked in the same transaction:
        L{RegistryError} BLOB_REFERENCED (L{izreg.storage.refs.blob_referenced}:
        the digest and the first few such manifests by digest) and nothing is
        written.
        """

    # -- upload sessions
    def put_upload(upload_id: str, record: dict, expected_offset: int | None = None) -> bool:
        """
        Create or replace an upload session's record; C{True}. With
        C{expected_offset}: only if a record exists whose offset is still
        that (several nodes: another one may have moved the session on
        meanwhile); else nothing is written and C{False}.
        """

    def get_upload(upload_id: str):
        """The session's record or C{None}."""

    def delete_upload(upload_id: str) -> bool:
        """Drop a session's record; whether it existed."""

    def list_uploads():
        """C{[(upload_id, record)]} by id."""

    # -- manifests, tags and referrers
    def put_manifest(name: str, digest, meta: dict, data: bytes, blobs, children, tag, referrer, now: float,
                     expect=None) -> None:
        """
        Store a manifest with its tag and referrers entry in one transaction, after
        checking that its C{blobs} ((digest, size)) are recorded and linked with that
        size and its C{children} are manifests of the repository: else
        L{RegistryError} MANIFEST_BLOB_UNKNOWN (C{{"missing": [...]}}, at most 20)
        or MANIFEST_INVALID (a size mismatch), and nothing is written. An existing
        manifest keeps its first bytes.

        C{expect} (an L{izreg.core.preconditions.Precondition}): checked first, in
        the same transaction, against what C{tag} names (no tag: C{digest} if the
        repository has that manifest); when it does not hold, L{RegistryError}
        PRECONDITION_FAILED and nothing is written. Of two writers that expect the
        same, exactly one stores.
        """

    def get_manifest(name: str, digest):
        """C{(meta, bytes)} or C{None}."""

    def list_manifests(name: str, last, limit: int):
        """C{([(digest, meta, bytes, tags)], more)} by digest, after C{last}."""

    def tags_of(name: str, digest):
        """The tags that point at the manifest, in byte order."""

    def resolve_tag(name: str, tag: str):
        """The tag's L{Digest}, or C{None}."""

    def list_tags(name: str, last, limit: int):
        """C{(tags, more)} in byte order after C{last}."""

    def delete_tag(name: str, tag: str, expect=None) -> bool:
        """
        Drop a tag (the repository goes when empty); C{False} if there is none.
        C{expect}: checked against the tag's digest in the same transaction, as
        for L{put_manifest} (PRECONDITION_FAILED, nothing deleted).
        """

    def delete_manifest(name: str, digest) -> bool:
        """Delete a manifest, its tags and its referrers entry."""

    def children_of(name: str, digest):
        """The child manifests an index names."""

    def deletion(name: str, digest):
        """What L{delete_tree} would delete now: the manifest, then the children it takes along."""

    def delete_tree(name: str, digest, cascade: bool = True):
        """Delete a manifest (and with C{cascade} the children no tag or other index holds): C{{"deleted", "tags"}} or C{None}."""

    def purge_repo(name: str) -> int:
        """Delete a repository with everything in it; its manifest count."""

    def referrers(name: str, subject):
        """The descriptors of the manifests whose subject is C{subject}, by digest."""

    # -- whole-index reads (browse, metrics)
    def account_blobs(account: str):
        """The set of blob digests the manifests of the account's repositories name."""

    def totals() -> dict:
        """C{{"blobs", "blob_bytes", "manifests", "manifest_bytes", "uploads"}}."""

    # -- garbage collection (izreg.storage.gc): candidates, then checked writes, a batch per transaction
    def gc_blob_candidates(cutoff: float):
        """C{[(digest, size)]} of blob records no manifest names, untouched since before C{cutoff}."""

    def gc_link_candidates(cutoff: float):
        """C{[(name, blob)]} of links older than C{cutoff} that no manifest of the repository names."""

    def gc_untagged_candidates(cutoff: float):
        """C{[(name, digest)]} of manifests created before C{cutoff}: untagged, not a referrer, held by no index."""

    def collect_blobs(digests, cutoff: float):
        """
        One transaction: each blob still a candidate is re-checked and its
        record and links dropped; a list of its size (or C{None}: kept) per
        digest. The bytes stay: the caller deletes them afterwards with
        L{without_records} (a re-push in between keeps them; a crash in between
        leaves a file no record names, which the next sweep collects, never a
        record without its bytes).
        """

    def without_records(digests, f):
        """One transaction: C{f(digest)} for each blob with no record, none being committable meanwhile (serialized with L{commit_blob}); C{None} for the others."""

    def collect_links(links, cutoff: float):
        """One transaction: drop each C{(name, blob)} link still a candidate; a list of bools (dropped)."""

    # -- fsck (izreg.storage.fsck)
    def blob_records():
        """C{[(digest, record)]} of every blob record, by digest."""

    def set_blob_size(digest, size: int) -> None:
        """Correct a blob record's size."""

    def index_blob(digest, size: int, now: float) -> None:
        """Record a blob that is in place, linked nowhere."""

    def forget_blob(digest) -> None:
        """Drop a blob's record and every link to it."""

    def manifest_references():
        """C{[(name, digest, [(blob, linked, recorded)], [missing children])]} of every manifest."""

    def recount(repair: bool = False):
        """Names of derived data out of step with the manifests (rebuilt with C{repair})."""


class IAuditLog(Interface):
    """
    The append-only audit log (L{izreg.storage.audit.AuditLog} on LMDB,
    L{izreg.storage.pgaudit.PgAuditLog} on PostgreSQL). Synchronous; a
    record is a write (the server's writer runner).
    """

    def record(*, action: str, account, actor: str, target: str, address=None, detail=None, now: float) -> None:
        """Append one record (C{detail}: anything JSON-able)."""

    def entries(account=None, since=None, limit=None) -> list:
        """Records oldest first, each a dict with C{time} (optionally one account's, from C{since}, at most C{limit})."""

    def prune(before, keep, limit: int) -> int:
        """
        One transaction: delete at most C{limit} of the oldest records, those
        older than C{before} (C{None}: no age limit) and those beyond the newest
        C{keep} (C{None}: no count limit); the number deleted. Called again
        while it returns C{limit} (L{izreg.storage.audit.prune_batches}): a
        store may keep the count's cutoff between those calls (PostgreSQL
        does), so records added meanwhile may stay until the next prune.
        """


class IWebhookStore(Interface):
    """
    Webhooks and their durable delivery queue (L{izreg.storage.webhooks.WebhookStore}
    on LMDB, L{izreg.storage.pgwebhooks.PgWebhookStore} on PostgreSQL).
    Secrets are sealed, never stored in clear. Synchronous, one transaction
    per method.
    """

    def add(account: str, url: str, secret: str, events, now: float):
        """A new L{Hook}. @raise WebhookError: a bad URL or a short secret."""

    def hooks(account=None) -> list:
        """The L{Hook}s (of one account), by account then id."""

    def remove(hook_id: str):
        """Remove a hook; the L{Hook} or C{None}."""

    def secret(account: str, hook_id: str):
        """The hook's secret (bytes), unsealed; C{None} if the hook is gone."""

    def wants(account: str, kind: str) -> list:
        """The account's hooks subscribed to C{kind}."""

    def enqueue(kind: str, now: float, **fields) -> list:
        """Queue the event for every hook that wants it; the delivery ids (hex, time-ordered)."""

    def due(now: float, limit: int, busy=frozenset()) -> list:
        """
        C{(id, record)} of pending deliveries whose time has come, oldest
        first, except C{busy}. On a shared database each is claimed for a
        lease (no other node gets it until L{finish} or the lease ends).
        """

    def next_due():
        """When the earliest pending delivery is due, or C{None}."""

    def finish(delivery_id: str, now: float, status, error, next_try):
        """Record an attempt: delivered, retried at C{next_try}, or failed; the record or C{None}."""

    def deliveries(account=None, hook_id=None, limit=None) -> list:
        """Delivery records (dicts with C{id}), newest first."""

    def prune(before: float) -> int:
        """Drop finished deliveries done before C{before}; the count."""
