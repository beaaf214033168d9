-- PostgreSQL twin of migrations/0006_usage.sql (usage and cost, hodei report cost), in
-- PostgreSQL types: SQLite's REAL is an 8-byte float, DOUBLE PRECISION here. Text keys are
-- `COLLATE "C"` so that totals are ordered by bytes, as in SQLite.
--
-- One row per ended attempt: the worker-seconds it held and what they cost at its pool's
-- price then. The primary key makes the same row written twice count once; it includes the
-- worker and the end so that two attempts that share a number are both kept.
CREATE TABLE attempt_usage (
    job_id         TEXT COLLATE "C" NOT NULL,
    attempt        BIGINT NOT NULL,
    tenant         TEXT COLLATE "C" NOT NULL,
    queue          TEXT COLLATE "C" NOT NULL,
    pool           TEXT COLLATE "C" NOT NULL,
    worker_id      TEXT COLLATE "C" NOT NULL,
    ended_at_ms    BIGINT NOT NULL,
    worker_seconds DOUBLE PRECISION NOT NULL,
    cost           DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, attempt, worker_id, ended_at_ms)
);
CREATE INDEX attempt_usage_ended ON attempt_usage (ended_at_ms);

-- Worker time each pool held, in hourly buckets that every pool-manager pass adds to.
CREATE TABLE pool_usage (
    pool                   TEXT COLLATE "C" NOT NULL,
    hour_start_ms          BIGINT NOT NULL,
    worker_seconds         DOUBLE PRECISION NOT NULL,
    busy_seconds           DOUBLE PRECISION NOT NULL,
    cost                   DOUBLE PRECISION NOT NULL,
    at_max_waiting_seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (pool, hour_start_ms)
);
