-- Idempotency keys: a spawn whose key an existing job holds returns that job. The unique index
-- is what makes it race-free across processes; a key is released (set to NULL on its old job)
-- only once that job has ended and its window has passed.
ALTER TABLE llmjobs_jobs ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX llmjobs_jobs_idempotency ON llmjobs_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Earlier runs of a job put back by `retry`: a JSON array of {state, attempts, error, at}.
ALTER TABLE llmjobs_jobs ADD COLUMN earlier_runs TEXT;
