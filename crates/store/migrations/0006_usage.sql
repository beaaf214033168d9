-- Usage and cost (hodei report cost). Kept apart from the jobs and pools they describe so
-- that totals survive a removed pool and need no change to the job JSON.
--
-- One row per ended attempt: the worker-seconds it held and what they cost at its pool's
-- price then. The primary key makes the same row written twice count once; it includes the
-- worker and the end so that two attempts that share a number (an assignment that never
-- reached its agent costs no attempt) are both kept.
CREATE TABLE attempt_usage (
    job_id         TEXT NOT NULL,
    attempt        INTEGER NOT NULL,
    tenant         TEXT NOT NULL,
    queue          TEXT NOT NULL,
    pool           TEXT NOT NULL,
    worker_id      TEXT NOT NULL,
    ended_at_ms    INTEGER NOT NULL,
    worker_seconds REAL NOT NULL,
    cost           REAL NOT NULL,
    PRIMARY KEY (job_id, attempt, worker_id, ended_at_ms)
);
CREATE INDEX attempt_usage_ended ON attempt_usage (ended_at_ms);

-- Worker time each pool held, in hourly buckets that every pool-manager pass adds to.
CREATE TABLE pool_usage (
    pool                   TEXT NOT NULL,
    hour_start_ms          INTEGER NOT NULL,
    worker_seconds         REAL NOT NULL,
    busy_seconds           REAL NOT NULL,
    cost                   REAL NOT NULL,
    at_max_waiting_seconds REAL NOT NULL,
    PRIMARY KEY (pool, hour_start_ms)
);
