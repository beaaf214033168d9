-- Twin of migrations/0009_everyday.sql: a job's stdout and stderr reach the agent through
-- one pipe, in the order written; their chunks are stored as stream 'output'.
ALTER TABLE job_logs DROP CONSTRAINT job_logs_stream_check;
ALTER TABLE job_logs ADD CONSTRAINT job_logs_stream_check
    CHECK (stream IN ('stdout', 'stderr', 'output'));
