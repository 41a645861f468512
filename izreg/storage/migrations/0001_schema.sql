-- The versions applied to this database (izreg.storage.pg): one row per migration file.
CREATE TABLE izreg_schema (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied timestamptz NOT NULL
);
