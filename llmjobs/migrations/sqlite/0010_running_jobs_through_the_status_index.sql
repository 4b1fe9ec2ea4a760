-- Running jobs are found through llmjobs_jobs_by_status's 'running' range from now on.
--
-- The running index (owner, name) of migration 0001 served counting running jobs per name,
-- which the counters of migration 0002 do now, and finding one owner's running jobs (heartbeat,
-- release, cancel requests), which the 'running' range of the status index serves as well for
-- a single process: there every running job is that owner's. Each job entered and left it, two
-- of the eleven b-tree writes of a job that is spawned and completes.
DROP INDEX llmjobs_jobs_running;
