-- Twin of migrations/0012_retention_and_drains.sql: what a drained worker does once its job
-- is done ('terminate' or 'keep'; NULL reads as 'terminate'), and the indexes retention
-- walks oldest first.
ALTER TABLE workers ADD COLUMN drain_after TEXT NULL CHECK (drain_after IN ('terminate', 'keep'));

CREATE INDEX jobs_updated ON jobs (updated_at_ms);
CREATE INDEX workers_updated ON workers (updated_at_ms);
