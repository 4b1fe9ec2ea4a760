-- Budget reservations: what a call (or a provider batch) could cost at most, held against the
-- budgets it counts against from before it is sent until its usage-ledger rows replace it.
-- Reservations are never spend in usage reports. A call renews its lease while it runs; a dead
-- process's reservations expire and give their room back. Times are the
-- database clock's Unix milliseconds.
CREATE TABLE llmjobs_budget_reservations (
    id TEXT PRIMARY KEY,
    job_id UUID NOT NULL,
    provider TEXT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    tokens BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX llmjobs_budget_reservations_job ON llmjobs_budget_reservations (job_id);
CREATE INDEX llmjobs_budget_reservations_provider ON llmjobs_budget_reservations (provider);
CREATE INDEX llmjobs_budget_reservations_expires ON llmjobs_budget_reservations (expires_at);
-- A key budget sums the ledger rows of one provider over a window.
CREATE INDEX llmjobs_llm_usage_provider ON llmjobs_llm_usage (provider, at);
