-- The counters of migration 0002 are kept by the writer from now on, not by triggers.
--
-- A trigger ran two or three upserts for every row a statement changed, and made every such
-- statement keep a statement journal: callgrind put it at a quarter of the writer's work per
-- job. The writer now sums each transaction's changes in memory and writes them once, in the
-- same transaction, before it commits (llmjobs/src/store/sqlite/writer/tally.rs), so the
-- counters still cannot drift from the rows that llmjobs writes.
DROP TRIGGER llmjobs_jobs_count_insert;
DROP TRIGGER llmjobs_jobs_count_update;
DROP TRIGGER llmjobs_jobs_count_delete;

-- Counted afresh, in case anything wrote rows around the triggers.
DELETE FROM llmjobs_counts;
INSERT INTO llmjobs_counts (name, status, n)
    SELECT name, status, count(*) FROM llmjobs_jobs GROUP BY name, status;
DELETE FROM llmjobs_running_keys;
INSERT INTO llmjobs_running_keys (concurrency_key, n)
    SELECT concurrency_key, count(*) FROM llmjobs_jobs
    WHERE status = 'running' AND concurrency_key IS NOT NULL GROUP BY concurrency_key;
