# -*- test-case-name: tests.storage.test_index -*-
"""
The LMDB layout: every named database, its keys and values, and the schema
version (pure; no I/O).

Keys that hold a repository name put it first and end it with NUL, so one
repository's entries sit together in key order and a prefix scan lists them
in lexical order (tags list, catalog).

=============  ======================================  =========================================
database       key                                     value
=============  ======================================  =========================================
meta           b"schema_version"                       ascii int
repos          name                                    json {"created", "manifests", "tags", "size",
                                                       "unique", "manifest_bytes", "pushed"} (see refs.py)
tags           name NUL tag                            digest (ascii)
manifests      name NUL digest                         json meta NUL raw manifest bytes
links          name NUL blob digest                    b""  (the repository may read the blob)
bloblinks      blob digest NUL name                    b""  (reverse of links)
blobs          blob digest                             json {"size", "created", "touched"}  (derived from files)
repoblobs      name NUL blob digest                    ascii int: manifests of the repo naming the blob
blobrefs       blob digest NUL name                    b""  (reverse of repoblobs: the blob is referenced)
tagsof         repokey NUL manifest digest NUL tag     b""  (reverse of tags; repokey: refs.repo_key)
referrers      name NUL subject NUL referrer digest    json descriptor (bounded_key: a key over
                                                       511 bytes hashes the referrer digest)
uploads        upload id                               json {"name", "offset", "started", "updated"}
accounts       account id                              json (izreg.auth)
keys           key id                                  json (izreg.auth)
devices        ...                                     json (izreg.auth, device records)
audit          BE microseconds (8) + random (8)        json (izreg.storage.audit)
webhooks       account NUL hook id                     json (izreg.storage.webhooks; secret encrypted)
webhook_queue  BE microseconds (8) + random (8)        json delivery (izreg.storage.webhooks)
webhook_due    delivery id                             b""  (deliveries not yet done)
=============  ======================================  =========================================

Tags, manifests, links, referrers, accounts and keys are authoritative.
``blobs`` is derived from the files; ``repoblobs``, ``blobrefs``, ``tagsof``
and the repository counters are derived from manifests and tags
(``izreg.storage.refs.rebuild``, run by the schema 1 -> 2 upgrade and by
``izreg fsck --repair``).
"""

from __future__ import annotations

import hashlib

SCHEMA_VERSION = 2

META = b"meta"
REPOS = b"repos"
TAGS = b"tags"
MANIFESTS = b"manifests"
LINKS = b"links"
BLOBLINKS = b"bloblinks"
BLOBS = b"blobs"
REFERRERS = b"referrers"
UPLOADS = b"uploads"
ACCOUNTS = b"accounts"
KEYS = b"keys"
DEVICES = b"devices"
AUDIT = b"audit"
REPOBLOBS = b"repoblobs"
BLOBREFS = b"blobrefs"
TAGSOF = b"tagsof"
WEBHOOKS = b"webhooks"
WEBHOOK_QUEUE = b"webhook_queue"
WEBHOOK_DUE = b"webhook_due"

ALL = (META, REPOS, TAGS, MANIFESTS, LINKS, BLOBLINKS, BLOBS, REFERRERS, UPLOADS, ACCOUNTS, KEYS, DEVICES, AUDIT,
       REPOBLOBS, BLOBREFS, TAGSOF, WEBHOOKS, WEBHOOK_QUEUE, WEBHOOK_DUE)
MAX_DBS = 32

SEP = b"\x00"


#: LMDB's largest key (its default build), bytes
MAX_KEY = 511


def key(*parts: str | bytes) -> bytes:
    """Join key parts with NUL."""
    return SEP.join(p.encode() if isinstance(p, str) else p for p in parts)


def bounded_key(*parts: str | bytes) -> bytes:
    """
    L{key}, but when the whole would pass L{MAX_KEY} its last part is
    replaced by ``#<sha256 hex>`` of it: for keys whose last part is only
    there to make them unique (the value holds it in full), so prefix scans
    over the other parts still work. Keys that fit are unchanged.
    """
    whole = key(*parts)
    if len(whole) <= MAX_KEY:
        return whole
    last = parts[-1].encode() if isinstance(parts[-1], str) else parts[-1]
    return key(*parts[:-1], b"#" + hashlib.sha256(last).hexdigest().encode())


def prefix(*parts: str | bytes) -> bytes:
    """The key prefix of everything under C{parts} (ends with NUL)."""
    return key(*parts) + SEP
