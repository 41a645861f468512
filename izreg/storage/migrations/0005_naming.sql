-- A refused blob delete names the first manifests (by digest) of the repository that name the blob
-- (izreg.storage.pgindex.NAMING): with only (repo, blob) and the primary key (repo, manifest, blob),
-- the primary key was walked in manifest order past every manifest that does not name it (0.15-0.45 s
-- for a repository of 400,000 manifests, at will). This index gives them at once, and serves every
-- lookup by (repo, blob) manifest_blobs_by_repo served; that one goes (no query names an index: the
-- older nodes keep working).
CREATE INDEX manifest_blobs_by_repo_blob ON manifest_blobs (repo, blob, manifest);
DROP INDEX manifest_blobs_by_repo;
