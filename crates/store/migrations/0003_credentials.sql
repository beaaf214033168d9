-- Credentials (issue 12). Only the SHA-256 of each secret is stored; the id is public.
CREATE TABLE credentials (
    id            TEXT PRIMARY KEY NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'agent', 'worker', 'tenant')),
    worker_id     TEXT NULL,
    origin        TEXT NULL CHECK (origin IN ('provisioned', 'enrolled')),
    tenant        TEXT NULL,
    description   TEXT NOT NULL DEFAULT '',
    issued_by     TEXT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER NULL
);

CREATE INDEX credentials_worker ON credentials (worker_id);
CREATE INDEX credentials_issued_by ON credentials (issued_by);
