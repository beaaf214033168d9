-- PostgreSQL twin of migrations/0002_jobs.sql. `sequence` is an identity column: PostgreSQL
-- never hands out a number twice (a rolled-back insert leaves a gap, which the contract
-- allows: sequences only have to increase). The job itself is JSON in TEXT, not JSONB, so it
-- reads back byte for byte and may hold any escaped character.

CREATE TABLE jobs (
    sequence      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            TEXT COLLATE "C" NOT NULL UNIQUE,
    state         TEXT NOT NULL,
    tenant        TEXT COLLATE "C" NOT NULL,
    queue         TEXT COLLATE "C" NOT NULL,
    worker_id     TEXT COLLATE "C" NULL,
    job_json      TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Unlike SQLite's rowid, PostgreSQL indexes do not end in the key, so each carries `sequence`
-- to list in submission order without a sort.
CREATE INDEX jobs_state ON jobs (state, sequence);
CREATE INDEX jobs_tenant ON jobs (tenant, sequence);
CREATE INDEX jobs_queue ON jobs (queue, sequence);
CREATE INDEX jobs_worker_id ON jobs (worker_id, sequence) WHERE worker_id IS NOT NULL;

-- One row per chunk of output; the primary key is what makes a re-sent chunk a no-op.
CREATE TABLE job_logs (
    job_id   TEXT COLLATE "C" NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt  BIGINT NOT NULL,
    sequence BIGINT NOT NULL,
    stream   TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    data     BYTEA NOT NULL,
    PRIMARY KEY (job_id, attempt, sequence)
);
