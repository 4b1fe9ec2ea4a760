-- The jobs, their journals and the counters, in llmjobs' own schema (the connection's
-- search_path names it). Times are Unix milliseconds (UTC), as in the SQLite backend.

-- One row per job.
CREATE TABLE llmjobs_jobs (
    id               UUID     PRIMARY KEY,
    name             TEXT     NOT NULL,
    status           TEXT     NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    args             TEXT     NOT NULL,
    result           TEXT,
    error            TEXT,
    progress         TEXT,
    priority         INTEGER  NOT NULL DEFAULT 0,
    concurrency_key  TEXT,
    key_limit        INTEGER,
    attempts         INTEGER  NOT NULL DEFAULT 0,
    max_attempts     INTEGER  NOT NULL DEFAULT 1,
    owner            TEXT,
    lease_until      BIGINT,
    cancel_requested BOOLEAN  NOT NULL DEFAULT false,
    needs_review     BOOLEAN  NOT NULL DEFAULT false,
    run_at           BIGINT   NOT NULL,
    created_at       BIGINT   NOT NULL,
    started_at       BIGINT,
    completed_at     BIGINT,
    -- A spawn whose key an existing job holds returns that job; released (set to NULL) once
    -- its job has ended and its window has passed.
    idempotency_key  TEXT,
    -- Earlier runs of a job put back by `retry`: a JSON array of {state, attempts, error, ...}.
    earlier_runs     JSONB
)
-- Rows are updated a few times each (claim, progress, outcome): room on the page lets those
-- updates stay on it (HOT) instead of touching every index. A queue table churns: vacuum it
-- long before the default 20% of dead rows.
WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
      autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05);

-- Claiming scans due pending jobs in priority order.
CREATE INDEX llmjobs_jobs_pending ON llmjobs_jobs (priority DESC, run_at, id)
    WHERE status = 'pending';
-- Recovery and heartbeats find the running jobs of an owner.
CREATE INDEX llmjobs_jobs_running ON llmjobs_jobs (owner) WHERE status = 'running';
-- Retention deletes old terminal jobs (only terminal jobs have a completion time).
CREATE INDEX llmjobs_jobs_finished ON llmjobs_jobs (completed_at)
    WHERE completed_at IS NOT NULL;
-- Listing, newest first (ids are UUIDv7: they sort by creation time), pages by keyset.
CREATE INDEX llmjobs_jobs_by_status ON llmjobs_jobs (status, id);
CREATE INDEX llmjobs_jobs_by_name ON llmjobs_jobs (name, status, id);
CREATE UNIQUE INDEX llmjobs_jobs_idempotency ON llmjobs_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The step journal: the stored result of each completed `ctx.step`, by call order. Narrow and
-- apart from the jobs, so job rows stay small.
CREATE TABLE llmjobs_steps (
    job_id     UUID     NOT NULL,
    seq        INTEGER  NOT NULL,
    name       TEXT     NOT NULL,
    output     TEXT     NOT NULL,
    created_at BIGINT   NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05);

-- Jobs per name and state, and running jobs per concurrency key: kept by the triggers below in
-- the same transaction as every change of a job's state, so they cannot drift from the rows.
-- `counts` reads a few rows instead of counting the table, and a claim under limits reads the
-- running counts of the names and keys it meets.
CREATE TABLE llmjobs_counts (
    name   TEXT   NOT NULL,
    status TEXT   NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (name, status)
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0,
        autovacuum_vacuum_threshold = 1000);

CREATE TABLE llmjobs_running_keys (
    concurrency_key TEXT   PRIMARY KEY,
    n               BIGINT NOT NULL
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0,
        autovacuum_vacuum_threshold = 1000);

-- Statement-level: a statement that changes a thousand jobs (a batch insert, a claim, a
-- release) changes each counter it touches once, in (name, status) order, so that concurrent
-- statements lock counter rows in the same order.
CREATE FUNCTION llmjobs_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO llmjobs_counts AS c (name, status, n)
            SELECT name, status, count(*) FROM new_rows GROUP BY name, status
            ORDER BY name, status
            ON CONFLICT (name, status) DO UPDATE SET n = c.n + excluded.n;
        INSERT INTO llmjobs_running_keys AS k (concurrency_key, n)
            SELECT concurrency_key, count(*) FROM new_rows
            WHERE status = 'running' AND concurrency_key IS NOT NULL
            GROUP BY concurrency_key ORDER BY concurrency_key
            ON CONFLICT (concurrency_key) DO UPDATE SET n = k.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO llmjobs_counts AS c (name, status, n)
            SELECT name, status, sum(d) FROM (
                SELECT name, status, -1 AS d FROM old_rows
                UNION ALL SELECT name, status, 1 FROM new_rows) changes
            GROUP BY name, status HAVING sum(d) <> 0 ORDER BY name, status
            ON CONFLICT (name, status) DO UPDATE SET n = c.n + excluded.n;
        INSERT INTO llmjobs_running_keys AS k (concurrency_key, n)
            SELECT concurrency_key, sum(d) FROM (
                SELECT concurrency_key, -1 AS d FROM old_rows
                    WHERE status = 'running' AND concurrency_key IS NOT NULL
                UNION ALL SELECT concurrency_key, 1 FROM new_rows
                    WHERE status = 'running' AND concurrency_key IS NOT NULL) changes
            GROUP BY concurrency_key HAVING sum(d) <> 0 ORDER BY concurrency_key
            ON CONFLICT (concurrency_key) DO UPDATE SET n = k.n + excluded.n;
    ELSE
        UPDATE llmjobs_counts AS c SET n = c.n - gone.n FROM (
            SELECT name, status, count(*) AS n FROM old_rows GROUP BY name, status
            ORDER BY name, status) gone
            WHERE c.name = gone.name AND c.status = gone.status;
        UPDATE llmjobs_running_keys AS k SET n = k.n - gone.n FROM (
            SELECT concurrency_key, count(*) AS n FROM old_rows
            WHERE status = 'running' AND concurrency_key IS NOT NULL
            GROUP BY concurrency_key ORDER BY concurrency_key) gone
            WHERE k.concurrency_key = gone.concurrency_key;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER llmjobs_jobs_count_insert AFTER INSERT ON llmjobs_jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llmjobs_count_jobs();
CREATE TRIGGER llmjobs_jobs_count_update AFTER UPDATE ON llmjobs_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llmjobs_count_jobs();
CREATE TRIGGER llmjobs_jobs_count_delete AFTER DELETE ON llmjobs_jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION llmjobs_count_jobs();
