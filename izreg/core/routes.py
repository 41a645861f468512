# -*- test-case-name: tests.core.test_routes -*-
"""
Splitting a ``/v2/`` path into repository name and endpoint (pure).

A repository name may itself contain ``manifests`` or ``blobs`` as path
components, so the name is matched greedily: the endpoint is the last
suffix that fits. A path that fits an endpoint but whose name is invalid
is a C{NAME_INVALID}, not a 404; when the name is one of the spec's grammar
outside every account (L{OutsideNamespaces}), the error names the endpoint,
so that the caller can be authenticated before it is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.names import OutsideNamespaces, Repository

_ROUTE = re.compile(
    r"^(?P<name>.+)/(?:"
    r"(?P<manifests>manifests)/(?P<reference>[^/]+)"
    r"|(?P<uploads>blobs/uploads)(?:/(?P<upload>[^/]*))?"
    r"|(?P<blobs>blobs)/(?P<digest>[^/]+)"
    r"|(?P<tags>tags/list)/?"
    r"|(?P<referrers>referrers)/(?P<subject>[^/]+)"
    r"|(?P<browse>_izreg/manifests)/?"
    r")$",
    re.DOTALL,
)

MANIFEST = "manifest"
UPLOADS = "uploads"
UPLOAD = "upload"
BLOB = "blob"
TAGS = "tags"
REFERRERS = "referrers"
#: izreg's own listing of a repository's manifests (``_izreg`` cannot be a name component)
BROWSE = "browse"


@dataclass(frozen=True)
class Route:
    endpoint: str
    repository: Repository
    argument: str | None


def match(path: str) -> Route:
    """Match the part of a path after ``/v2/``."""
    m = _ROUTE.fullmatch(path)
    if m is None:
        raise RegistryError(ErrorCode.NOT_FOUND, {"path": path[:300]})
    try:
        repository = Repository.parse(m.group("name"))
    except OutsideNamespaces as e:
        e.endpoint = _route(m, None).endpoint
        raise
    return _route(m, repository)


def _route(m: re.Match, repository: Repository | None) -> Route:
    if m.group("manifests"):
        return Route(MANIFEST, repository, m.group("reference"))
    if m.group("uploads"):
        upload = m.group("upload")
        return Route(UPLOAD, repository, upload) if upload else Route(UPLOADS, repository, None)
    if m.group("blobs"):
        return Route(BLOB, repository, m.group("digest"))
    if m.group("tags"):
        return Route(TAGS, repository, None)
    if m.group("browse"):
        return Route(BROWSE, repository, None)
    return Route(REFERRERS, repository, m.group("subject"))
