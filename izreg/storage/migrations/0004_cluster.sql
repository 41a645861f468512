-- Cross-node state of several izreg nodes over one database (izreg.storage.cluster).
-- Failed authentications, one row each, per brake (client address, key id or "*"):
-- every node counts the others' failures (izreg.auth.clusterlimit). Rows older
-- than the window are deleted as new ones come.
CREATE TABLE auth_failures (
    address text COLLATE "C" NOT NULL,
    key_id text COLLATE "C" NOT NULL,
    at double precision NOT NULL
);
CREATE INDEX auth_failures_brake ON auth_failures (address, key_id, at);
CREATE INDEX auth_failures_at ON auth_failures (at);

