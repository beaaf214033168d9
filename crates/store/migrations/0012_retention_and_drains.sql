-- Retention and drains that survive a restart.
--
-- `drain_after` is what a drained worker (state 'draining') does once its job is done:
-- 'terminate' or 'keep'; NULL when it is not drained (or was drained before this column
-- existed, which reads as 'terminate', the default of a drain).
ALTER TABLE workers ADD COLUMN drain_after TEXT NULL CHECK (drain_after IN ('terminate', 'keep'));

-- Retention deletes the oldest finished jobs and terminated workers first, in batches.
CREATE INDEX jobs_updated ON jobs (updated_at_ms);
CREATE INDEX workers_updated ON workers (updated_at_ms);
