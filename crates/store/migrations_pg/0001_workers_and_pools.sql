-- PostgreSQL twin of migrations/0001_workers_and_pools.sql: the same tables and columns, in
-- PostgreSQL types. Keys are `COLLATE "C"` so that `ORDER BY` compares bytes, as SQLite's
-- BINARY collation and `WorkerId`'s `Ord` do, whatever the cluster's default locale.

CREATE TABLE workers (
    id            TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    pool          TEXT COLLATE "C" NULL,
    state         TEXT NOT NULL,
    registered    BOOLEAN NOT NULL DEFAULT FALSE,
    worker_json   TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE INDEX workers_pool ON workers (pool);
CREATE INDEX workers_state ON workers (state);

CREATE TABLE pools (
    name          TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    spec_json     TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
