-- izreg: no-transaction
-- A refused blob delete names the first manifests (by digest) of the repository that name the blob
-- (izreg.storage.pgindex.NAMING): with only (repo, blob) and the primary key (repo, manifest, blob),
-- the primary key was walked in manifest order past every manifest that does not name it (0.15-0.45 s
-- for a repository of 400,000 manifests, at will). This index gives them at once, and serves every
-- lookup by (repo, blob) manifest_blobs_by_repo served; that one goes (no query names an index: the
-- older nodes keep working).
-- Built concurrently, outside a transaction (izreg.storage.pg, NO_TRANSACTION): manifest pushes and
-- deletes go on while it builds (in a transaction the build held them, as long as it took). A database
-- that applied this version before (in a transaction, the same index and name) is not touched again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS manifest_blobs_by_repo_blob ON manifest_blobs (repo, blob, manifest);
DROP INDEX CONCURRENTLY IF EXISTS manifest_blobs_by_repo;
