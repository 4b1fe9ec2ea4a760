-- One row per job. Times are Unix milliseconds (UTC).
-- Conditions on status are written as `=` and `OR`, never `IN (...)`: SQLite evaluates an IN
-- list in a CHECK constraint or a partial index's WHERE by building a temporary b-tree on every
-- write, which more than doubled the cost of each insert and update.
CREATE TABLE llmjobs_jobs (
    id               TEXT    PRIMARY KEY NOT NULL,
    name             TEXT    NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status = 'pending' OR status = 'running' OR status = 'completed'
            OR status = 'failed' OR status = 'cancelled'),
    args             TEXT    NOT NULL,
    result           TEXT,
    error            TEXT,
    progress         TEXT,
    priority         INTEGER NOT NULL DEFAULT 0,
    concurrency_key  TEXT,
    key_limit        INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL DEFAULT 1,
    owner            TEXT,
    lease_until      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    needs_review     INTEGER NOT NULL DEFAULT 0,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    completed_at     INTEGER
);

-- Claiming scans pending jobs in priority order.
CREATE INDEX llmjobs_jobs_pending ON llmjobs_jobs (priority DESC, run_at, id)
    WHERE status = 'pending';
-- Limits count running jobs per name; recovery finds running jobs per owner.
CREATE INDEX llmjobs_jobs_running ON llmjobs_jobs (owner, name)
    WHERE status = 'running';
-- Per-key limits count running jobs per key.
CREATE INDEX llmjobs_jobs_running_keys ON llmjobs_jobs (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
-- Retention deletes old terminal jobs (only terminal jobs have a completion time).
CREATE INDEX llmjobs_jobs_finished ON llmjobs_jobs (completed_at)
    WHERE completed_at IS NOT NULL;

-- The step journal: the stored result of each completed `ctx.step`, by call order.
CREATE TABLE llmjobs_steps (
    job_id     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    output     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
