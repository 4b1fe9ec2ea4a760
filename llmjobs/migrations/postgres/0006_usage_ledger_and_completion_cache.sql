-- The usage ledger: one row per provider call that a job made (answers, failed tries, agent
-- checks, completion-cache hits), so that cost by model, job name and day is a query. Rows
-- outlive the jobs they name: pruning jobs keeps what was spent.
CREATE TABLE llmjobs_llm_usage (
    id BIGSERIAL PRIMARY KEY,
    job_id UUID NOT NULL,
    job_name TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    -- NULL when no price was known for the model.
    cost_usd DOUBLE PRECISION,
    latency_ms BIGINT NOT NULL,
    -- 'ok', 'cache_hit' or 'error'; error_kind says which error.
    outcome TEXT NOT NULL,
    error_kind TEXT,
    -- When the call ended, in milliseconds since the epoch.
    at BIGINT NOT NULL
);
CREATE INDEX llmjobs_llm_usage_at ON llmjobs_llm_usage (at);
CREATE INDEX llmjobs_llm_usage_job ON llmjobs_llm_usage (job_id);

-- The completion cache (opt-in): answers keyed by a hash of the normalised request, shared by
-- every process on the database until they expire.
CREATE TABLE llmjobs_llm_cache (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX llmjobs_llm_cache_expires ON llmjobs_llm_cache (expires_at);

-- The budget a call set on its job (JobCall::budget), as JSON ({"max_usd": …, "max_tokens": …});
-- written with the job, deleted with it. Jobs without one (most) have no row.
CREATE TABLE llmjobs_job_budgets (
    job_id UUID PRIMARY KEY,
    budget TEXT NOT NULL
);
