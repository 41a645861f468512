# -*- test-case-name: tests.http.test_smoke -*-
"""The upload routes: POST (monolithic, mount, start), GET status, PATCH, PUT and DELETE a session."""

from __future__ import annotations

from izreg.auth.policy import Action
from izreg.auth.runners import settled
from izreg.core.digest import Digest
from izreg.core.names import OutsideNamespaces, Repository
from izreg.core.ranges import upload_range
from izreg.core.errors import ErrorCode, RegistryError
from izreg.http.handlers import Handlers, _arg, _set
from izreg.http.responses import shield
from izreg.storage.interfaces import IBodySink

PULL = Action.PULL


class UploadRoutes(Handlers):
    def _upload_accepted(self, request, repo, session, code: int = 202) -> bytes:
        request.setResponseCode(code)
        _set(request, Location=self._upload_location(repo, session.id), Range=upload_range(session.offset),
             Docker_Upload_UUID=session.id)
        if code != 204:  # RFC 9110 (8.6): a 204 MUST NOT carry Content-Length (it has no content)
            _set(request, Content_Length=0)
        return b""

    def _blob_created(self, request, repo, digest) -> bytes:
        request.setResponseCode(201)
        _set(request, Location=f"/v2/{repo}/blobs/{digest}", Docker_Content_Digest=digest, Content_Length=0)
        return b""

    async def post_upload(self, request, route):
        repo = route.repository
        body = self._body(request)
        mount = _arg(request, "mount")
        if mount is not None:
            digest = Digest.parse(mount)
            mountable, source_repo = await self._mount_source(request, _arg(request, "from"))
            if mountable and await self.registry.mount(repo, digest, source_repo) is not None:
                return self._blob_created(request, repo, digest)
        elif _arg(request, "digest") is not None:
            digest = Digest.parse(_arg(request, "digest"))
            writer = body if IBodySink.providedBy(body) else None
            session = writer.session if writer else self.registry.pending_upload(repo, digest)
            await shield(self.registry.commit_upload(repo, session, digest, writer))
            return self._blob_created(request, repo, digest)
        session = await self.registry.start_upload(repo)
        if self.chunk_min_length:
            _set(request, OCI_Chunk_Min_Length=self.chunk_min_length)
        return self._upload_accepted(request, repo, session)

    async def _mount_source(self, request, source: str | None) -> tuple[bool, Repository | None]:
        """
        Whether a mount may look for its blob, and where (C{None}: anywhere in
        the caller's account). A C{from} the caller may not read (another
        account's, or a name of the spec's grammar that no account holds) is
        "unable to mount": the spec's answer is a new upload session (202),
        the same whether the blob is there or not, never a 403 that fails the
        push of containerd, buildkit and docker's containerd image store. A
        token short of the C{from}'s pull scope is still the 401 that makes the
        client fetch a wider one; a malformed C{from} is still 400 NAME_INVALID.
        """
        if not source:
            return True, None
        try:
            source_repo = Repository.parse(source)
        except OutsideNamespaces:
            return False, None
        try:
            await settled(self.guard.check(request, source_repo, PULL))
        except RegistryError as e:
            if e.code is not ErrorCode.DENIED:
                raise
            return False, None
        return True, source_repo

    async def upload_status(self, request, route):
        repo = route.repository
        session = await self.registry.upload(repo, route.argument)
        return self._upload_accepted(request, repo, session, 204)

    async def patch_upload(self, request, route):
        repo = route.repository
        body = self._body(request)
        if IBodySink.providedBy(body):
            await shield(self.registry.chunk_done(body))
            session = body.session
        else:
            session = await self.registry.upload(repo, route.argument)
        return self._upload_accepted(request, repo, session)

    async def put_upload(self, request, route):
        repo = route.repository
        body = self._body(request)
        digest_text = _arg(request, "digest")
        if digest_text is None:
            raise RegistryError(ErrorCode.DIGEST_INVALID, {"reason": "the digest query parameter is required"})
        digest = Digest.parse(digest_text)
        writer = body if IBodySink.providedBy(body) else None
        session = writer.session if writer else await self.registry.upload(repo, route.argument)
        await shield(self.registry.commit_upload(repo, session, digest, writer))
        return self._blob_created(request, repo, digest)

    async def cancel_upload(self, request, route):
        repo = route.repository
        await self.registry.cancel_upload(repo, route.argument)
        request.setResponseCode(204)
        return b""
