-- The metadata index (izreg.storage.pgindex): the PostgreSQL twin of the LMDB index.
-- Text keys are COLLATE "C" (byte order, like LMDB's keys): _catalog, tags lists and
-- the browse API page exactly as on LMDB. JSON documents are kept as text (they may
-- hold \u0000, which jsonb refuses). Repository counters are computed by queries over
-- these tables, so nothing derived is stored and nothing can fall out of step.

-- a repository exists while it has a manifest, a tag or a blob link
CREATE TABLE repos (
    name text COLLATE "C" PRIMARY KEY,
    created double precision NOT NULL,
    pushed double precision
);

-- a blob in place in the blob store (derived from the files; the record of its size)
CREATE TABLE blobs (
    digest text COLLATE "C" PRIMARY KEY,
    size bigint,
    created double precision,
    touched double precision
);

-- the repository may read the blob; linked: the link's time (garbage collection's grace)
CREATE TABLE links (
    repo text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    linked double precision NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX links_by_digest ON links (digest, repo);

CREATE TABLE uploads (
    id text COLLATE "C" PRIMARY KEY,
    record text NOT NULL
);

CREATE TABLE manifests (
    repo text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    meta text NOT NULL,
    data bytea NOT NULL,
    created double precision,
    subject text COLLATE "C",
    PRIMARY KEY (repo, digest)
);

-- the distinct stored blobs a manifest names (config and layers): reference counts are counts here
CREATE TABLE manifest_blobs (
    repo text COLLATE "C" NOT NULL,
    manifest text COLLATE "C" NOT NULL,
    blob text COLLATE "C" NOT NULL,
    size bigint NOT NULL,
    PRIMARY KEY (repo, manifest, blob),
    FOREIGN KEY (repo, manifest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_blobs_by_repo ON manifest_blobs (repo, blob);
CREATE INDEX manifest_blobs_by_blob ON manifest_blobs (blob, repo);

-- the child manifests an index names
CREATE TABLE manifest_children (
    repo text COLLATE "C" NOT NULL,
    manifest text COLLATE "C" NOT NULL,
    child text COLLATE "C" NOT NULL,
    PRIMARY KEY (repo, manifest, child),
    FOREIGN KEY (repo, manifest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_children_by_child ON manifest_children (repo, child);

CREATE TABLE tags (
    repo text COLLATE "C" NOT NULL,
    tag text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    PRIMARY KEY (repo, tag)
);
CREATE INDEX tags_by_digest ON tags (repo, digest, tag);

CREATE TABLE referrers (
    repo text COLLATE "C" NOT NULL,
    subject text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    descriptor text NOT NULL,
    PRIMARY KEY (repo, subject, digest)
);
