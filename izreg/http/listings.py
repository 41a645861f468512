# -*- test-case-name: tests.http.test_smoke -*-
"""The listing routes: tags, referrers and the browse API's manifests of a repository."""

from __future__ import annotations

from izreg.core import mediatypes as mt
from izreg.core.digest import Digest
from izreg.core.errors import ErrorCode, RegistryError
from izreg.core.manifest import referrers_index
from izreg.http.handlers import BROWSE_PAGE, Handlers, _arg, _set


class ListingRoutes(Handlers):
    async def list_tags(self, request, route):
        repo = route.repository
        limit, last = self._page(request)
        tags, more = await self.registry.tags(repo, limit, last)
        if more and tags:
            self._link(request, f"/v2/{repo}/tags/list", limit, tags[-1])
        return self._json(request, {"name": repo.name, "tags": tags})

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
