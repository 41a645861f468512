"""
A tiny OCI distribution client on top of ``requests``, for raw protocol steps
the real clients do not expose (resumable uploads, mounts, byte-exact
manifests). Every method returns the C{requests.Response}; the C{expect}
helper fails with the method, URL, status, headers and body.
"""

from __future__ import annotations

import hashlib
import urllib.parse

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ALL_MANIFESTS = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

TIMEOUT = 30


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class UnexpectedResponse(AssertionError):
    pass


def describe(resp: requests.Response) -> str:
    req = resp.request
    body = resp.content[:2000] if resp.content is not None else b""
    return (f"{req.method} {req.url} -> {resp.status_code}\n"
            f"request headers: {dict(req.headers)}\n"
            f"response headers: {dict(resp.headers)}\nbody: {body!r}")


def expect(resp: requests.Response, *statuses: int) -> requests.Response:
    if resp.status_code not in statuses:
        raise UnexpectedResponse(f"expected {statuses}, got\n{describe(resp)}")
    return resp


class OCIClient:
    def __init__(self, base_url: str, auth=None, session: requests.Session | None = None,
                 timeout: float = TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.auth = auth
        self.timeout = timeout

    # -- plumbing -------------------------------------------------------------------

    def url(self, path_or_url: str) -> str:
        """An absolute URL for a path (``/v2/...``) or a relative/absolute Location."""
        return urllib.parse.urljoin(self.base_url + "/", path_or_url)

    def request(self, method: str, path_or_url: str, **kw) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        kw.setdefault("allow_redirects", False)
        return self.session.request(method, self.url(path_or_url), **kw)

    def location(self, resp: requests.Response) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise UnexpectedResponse(f"no Location header\n{describe(resp)}")
        return self.url(loc)

    @staticmethod
    def with_query(url: str, **params) -> str:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query += list(params.items())
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    # -- blobs ------------------------------------------------------------------------

    def start_upload(self, repo: str, **params) -> requests.Response:
        url = self.with_query(f"/v2/{repo}/blobs/uploads/", **params)
        return self.request("POST", url, headers={"Content-Length": "0"})

    def push_blob_monolithic(self, repo: str, data: bytes) -> requests.Response:
        """``POST /blobs/uploads/?digest=`` with the body (falls back to PUT on 202)."""
        digest = sha256_digest(data)
        url = self.with_query(f"/v2/{repo}/blobs/uploads/", digest=digest)
        resp = self.request("POST", url, data=data,
                            headers={"Content-Type": "application/octet-stream"})
        if resp.status_code == 202:
            return self.request("PUT", self.with_query(self.location(resp), digest=digest), data=data,
                                headers={"Content-Type": "application/octet-stream"})
        return resp

    def push_blob_post_put(self, repo: str, data: bytes) -> requests.Response:
        """POST an upload, then one PUT ``?digest=`` with the whole body (containerd, oras)."""
        resp = expect(self.start_upload(repo), 202)
        return self.request("PUT", self.with_query(self.location(resp), digest=sha256_digest(data)),
                            data=data, headers={"Content-Type": "application/octet-stream"})

    def patch_chunk(self, upload_url: str, data: bytes, start: int) -> requests.Response:
        return self.request("PATCH", upload_url, data=data, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
            "Content-Length": str(len(data)),
        })

    def push_blob_chunked(self, repo: str, data: bytes, chunk_size: int) -> requests.Response:
        """POST, PATCH chunks with ``Content-Range``, then PUT ``?digest=`` with no body."""
        resp = expect(self.start_upload(repo), 202)
        url = self.location(resp)
        for start in range(0, len(data), chunk_size):
            resp = expect(self.patch_chunk(url, data[start:start + chunk_size], start), 202)
            url = self.location(resp)
        return self.request("PUT", self.with_query(url, digest=sha256_digest(data)),
                            headers={"Content-Length": "0"})

    def get_blob(self, repo: str, digest: str, **kw) -> requests.Response:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", **kw)

    def head_blob(self, repo: str, digest: str) -> requests.Response:
        return self.request("HEAD", f"/v2/{repo}/blobs/{digest}")

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> requests.Response:
        url = self.with_query(f"/v2/{repo}/blobs/uploads/", mount=digest, **{"from": from_repo})
        return self.request("POST", url, headers={"Content-Length": "0"})

    # -- manifests, tags, catalog ----------------------------------------------------------

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str = OCI_MANIFEST) -> requests.Response:
        return self.request("PUT", f"/v2/{repo}/manifests/{ref}", data=body,
                            headers={"Content-Type": media_type})

    def get_manifest(self, repo: str, ref: str, accept: str = ALL_MANIFESTS) -> requests.Response:
        return self.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})

    def head_manifest(self, repo: str, ref: str, accept: str = ALL_MANIFESTS) -> requests.Response:
        return self.request("HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})

    def tags(self, repo: str) -> list[str]:
        """Every tag of C{repo}, following ``Link: <...>; rel="next"``."""
        return self._paginate(f"/v2/{repo}/tags/list", "tags")

    def catalog(self) -> list[str]:
        return self._paginate("/v2/_catalog", "repositories")

    def _paginate(self, url: str, key: str) -> list[str]:
        out: list[str] = []
        seen = set()
        while url:
            if url in seen:
                raise UnexpectedResponse(f"pagination loop at {url}")
            seen.add(url)
            resp = expect(self.request("GET", url), 200)
            out.extend(resp.json().get(key) or [])
            url = resp.links.get("next", {}).get("url")
        return out
