-- A job's stdout and stderr reach the agent through one pipe, in the order written: their
-- chunks are stored as stream 'output'. SQLite cannot change a CHECK constraint in place,
-- so the table is rebuilt with the same rows.
CREATE TABLE job_logs_0009 (
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt  INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    stream   TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'output')),
    data     BLOB NOT NULL,
    PRIMARY KEY (job_id, attempt, sequence)
);
INSERT INTO job_logs_0009 (job_id, attempt, sequence, stream, data)
    SELECT job_id, attempt, sequence, stream, data FROM job_logs;
DROP TABLE job_logs;
ALTER TABLE job_logs_0009 RENAME TO job_logs;
