-- PostgreSQL twin of migrations/0003_credentials.sql: the same table and columns, in
-- PostgreSQL types. Only the SHA-256 of each secret is stored; the id is public. Keys are
-- `COLLATE "C"` so that `ORDER BY` compares bytes, as SQLite's BINARY collation does.
CREATE TABLE credentials (
    id            TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'agent', 'worker', 'tenant')),
    worker_id     TEXT COLLATE "C" NULL,
    origin        TEXT NULL CHECK (origin IN ('provisioned', 'enrolled')),
    tenant        TEXT COLLATE "C" NULL,
    description   TEXT NOT NULL DEFAULT '',
    issued_by     TEXT COLLATE "C" NULL,
    secret_sha256 TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT NULL
);

CREATE INDEX credentials_worker ON credentials (worker_id);
CREATE INDEX credentials_issued_by ON credentials (issued_by);
