# -*- test-case-name: tests.http.test_smoke -*-
"""The listing routes: tags, referrers and the browse API's manifests of a repository."""

from __future__ import annotations

from izreg.core import mediatypes as mt
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.manifest import referrers_index
from izreg.http.handlers import BROWSE_PAGE, Handlers, _arg, _set


class TagPages:
    """
    The encoded answers of tags/list by (repository, n, last), each with the
    index's version (L{izreg.storage.interfaces.IMetadataIndex.version}) taken
    before it was read: served again only while the index is still at that
    version, i.e. no write has committed since, by this process or another
    (a tag pushed or deleted, or anything else: then it is read again). An
    index without a version (PostgreSQL) is read every time. The caller is
    authorized on every request before this is asked.
    """

    #: pages kept, and their bytes in all; past either, all are dropped (the next requests read them again)
    SIZE = 1024
    BYTES = 8 * 1024 * 1024
    #: a larger page (a repository with thousands of tags, no ``n``) is read every time, never kept
    PAGE_BYTES = 64 * 1024

    def __init__(self) -> None:
        self.pages: dict[tuple, tuple] = {}
        self.bytes = 0

    def get(self, key: tuple, version) -> tuple | None:
        page = self.pages.get(key)
        if page is None or version is None or page[0] != version:
            return None
        return page[1]

    def put(self, key: tuple, version, page: tuple) -> None:
        """Keep C{page} (C{(link, body)}) for C{key} at C{version}."""
        size = len(page[1])
        if version is None or size > self.PAGE_BYTES:
            return
        if len(self.pages) >= self.SIZE or self.bytes + size > self.BYTES:
            self.pages.clear()
            self.bytes = 0
        old = self.pages.get(key)
        if old is not None:
            self.bytes -= len(old[1][1])
        self.pages[key] = (version, page)
        self.bytes += size


class ListingRoutes(Handlers):
    tag_pages: TagPages

    async def list_tags(self, request, route):
        repo = route.repository
        limit, last = self._page(request)
        key, version = (repo.name, limit, last), self.registry.index_version()  # the version first, then the read
        page = self.tag_pages.get(key, version)
        if page is None:
            tags, more = await self.registry.tags(repo, limit, last)
            link = self._link_value(f"/v2/{repo}/tags/list", limit, tags[-1]) if more and tags else None
            page = (link, self._encode({"name": repo.name, "tags": tags}))
            self.tag_pages.put(key, version, page)
        link, body = page
        if link is not None:
            _set(request, Link=link)
        return self._answer_json(request, body)

    async def list_referrers(self, request, route):
        repo = route.repository
        artifact_type = _arg(request, "artifactType")
        found = await self.registry.referrers(repo, Digest.parse(route.argument), artifact_type)
        if artifact_type is not None:
            _set(request, OCI_Filters_Applied="artifactType")
        return self._json(request, referrers_index(found), mt.OCI_INDEX)

    async def browse_manifests(self, request, route):
        """The repository's manifests with tags, sizes, platforms and device pulls (docs/api.rst)."""
        repo = route.repository
        limit, last = self._page(request)
        found, more = await self.registry.run_io(self.browser.manifests, repo.name, min(limit, BROWSE_PAGE), last)
        if not found and last is None and not await self.registry.repo_exists(repo):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, {"name": repo.name})
        if more and found:
            self._link(request, f"/v2/{repo}/_izreg/manifests", min(limit, BROWSE_PAGE), found[-1]["digest"])
        return self._json(request, {"name": repo.name, "manifests": found})
