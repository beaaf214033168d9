-- Jobs and their output. As with workers, the job itself is kept as JSON so that new fields
-- need no migration, and the columns beside it are what queries filter on. `state` is the
-- authority on the state (compare-and-set updates test it) and `sequence` on the submission
-- order; the copies inside `job_json` are not read.
--
-- `sequence` is the rowid with AUTOINCREMENT, so SQLite never hands out a number twice, not
-- even after the newest job is deleted or the database is reopened. AUTOINCREMENT works only on
-- an INTEGER PRIMARY KEY, so the id is a UNIQUE column rather than the primary key.

CREATE TABLE jobs (
    sequence      INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    state         TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    queue         TEXT NOT NULL,
    worker_id     TEXT NULL,
    job_json      TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- Every index below ends, implicitly, in the rowid, so a filtered list comes out in sequence
-- order without a sort.
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_tenant ON jobs (tenant);
CREATE INDEX jobs_queue ON jobs (queue);
CREATE INDEX jobs_worker_id ON jobs (worker_id) WHERE worker_id IS NOT NULL;

-- One row per chunk of output; the primary key is what makes a re-sent chunk a no-op.
CREATE TABLE job_logs (
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt  INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    stream   TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    data     BLOB NOT NULL,
    PRIMARY KEY (job_id, attempt, sequence)
);
