-- Accounts, access keys, devices, audit and webhooks (izreg.auth.pgstore, izreg.storage.pgaudit,
-- izreg.storage.pgwebhooks): the PostgreSQL twins of the LMDB databases accounts, keys, devices,
-- audit, webhooks, webhook_queue and webhook_due. Times are POSIX seconds (double precision
-- round-trips a Python float exactly); text keys are COLLATE "C" (byte order, like LMDB).

CREATE TABLE accounts (
    account_id text COLLATE "C" PRIMARY KEY,
    name text NOT NULL,
    created double precision NOT NULL
);

-- secret_hash: keys.hash_secret (SHA-256 of key id and secret), never the secret
CREATE TABLE access_keys (
    key_id text COLLATE "C" PRIMARY KEY,
    account_id text COLLATE "C" NOT NULL,
    name text NOT NULL,
    secret_hash text NOT NULL,
    read_only boolean NOT NULL,
    created double precision NOT NULL,
    last_used double precision,
    revoked double precision
);
CREATE INDEX access_keys_by_account ON access_keys (account_id, created, key_id);

-- kind: 'serial' or 'fingerprint'; value normalized (lowercase hex)
CREATE TABLE device_revocations (
    kind text COLLATE "C" NOT NULL,
    value text COLLATE "C" NOT NULL,
    at double precision NOT NULL,
    note text NOT NULL,
    PRIMARY KEY (kind, value)
);

-- the last pull per device and manifest (several nodes flushing: the latest time wins)
CREATE TABLE device_pulls (
    account text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    repository text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    at double precision NOT NULL,
    PRIMARY KEY (account, device, repository, digest)
);
CREATE INDEX device_pulls_by_manifest ON device_pulls (repository, digest);

-- entry: the record's JSON (action, account, actor, target, address, detail), as LMDB keeps it
CREATE TABLE audit_log (
    seq bigserial PRIMARY KEY,
    at_us bigint NOT NULL,
    account text COLLATE "C",
    entry text NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (at_us, seq);

-- secret: sealed (Fernet, under the nodes' shared webhook.key), never in clear
CREATE TABLE webhooks (
    account text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    url text NOT NULL,
    events text NOT NULL,
    secret text NOT NULL,
    created double precision NOT NULL,
    PRIMARY KEY (account, id)
);
CREATE INDEX webhooks_by_id ON webhooks (id);

-- id: hex of 8 bytes of big-endian microseconds and 8 random bytes (time-ordered, as on LMDB);
-- record: the delivery's JSON; status, next_try and done repeat it for the queries. A node
-- claims due deliveries with FOR UPDATE SKIP LOCKED and a lease (next_try moved ahead).
CREATE TABLE webhook_deliveries (
    id text COLLATE "C" PRIMARY KEY,
    account text COLLATE "C" NOT NULL,
    hook text COLLATE "C" NOT NULL,
    status text NOT NULL,
    next_try double precision NOT NULL,
    done double precision,
    record text NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_try) WHERE status = 'pending';

-- secrets every node shares (the token signing key), sealed like webhook secrets
CREATE TABLE sealed_secrets (
    name text COLLATE "C" PRIMARY KEY,
    sealed text NOT NULL,
    created double precision NOT NULL
);
