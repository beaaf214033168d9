-- Workers and pools. The worker itself is kept as JSON so that new fields need no migration;
-- the columns beside it are what queries filter on, and `state` is the authority on the state.

CREATE TABLE workers (
    id            TEXT PRIMARY KEY NOT NULL,
    pool          TEXT NULL,
    state         TEXT NOT NULL,
    registered    INTEGER NOT NULL DEFAULT 0 CHECK (registered IN (0, 1)),
    worker_json   TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE INDEX workers_pool ON workers (pool);
CREATE INDEX workers_state ON workers (state);

CREATE TABLE pools (
    name          TEXT PRIMARY KEY NOT NULL,
    spec_json     TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
