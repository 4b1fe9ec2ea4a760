-- Rate limits shared by every process of the database (LlmClientBuilder::shared_limits).
-- Times are Unix milliseconds (UTC).

-- One row per budget scope ('provider:openai', 'model:openai/gpt-4o'). Each *_tat is the
-- moment that budget will have earned back everything spent (the generic cell rate
-- algorithm); each *_ms is the budget one unit costs, kept so a settled call's correction is
-- computed where the row is.
CREATE TABLE llmjobs_rate_buckets (
    scope        TEXT    PRIMARY KEY NOT NULL,
    requests_tat REAL    NOT NULL DEFAULT 0,
    tokens_tat   REAL    NOT NULL DEFAULT 0,
    input_tat    REAL    NOT NULL DEFAULT 0,
    output_tat   REAL    NOT NULL DEFAULT 0,
    request_ms   REAL    NOT NULL DEFAULT 0,
    token_ms     REAL    NOT NULL DEFAULT 0,
    input_ms     REAL    NOT NULL DEFAULT 0,
    output_ms    REAL    NOT NULL DEFAULT 0,
    -- After a 429: no call in the scope starts before this.
    paused_until BIGINT  NOT NULL DEFAULT 0
);

-- Calls holding a place, one row per scope: counted for concurrency while unexpired. A call
-- renews its lease while it runs; a dead process's leases expire.
CREATE TABLE llmjobs_rate_leases (
    lease         TEXT   NOT NULL,
    scope         TEXT   NOT NULL,
    input_tokens  BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (lease, scope)
);

CREATE INDEX llmjobs_rate_leases_by_scope ON llmjobs_rate_leases (scope, expires_at);
