-- Cron schedules, and the ticks they fired. Times are Unix milliseconds (UTC).

CREATE TABLE llmjobs_schedules (
    name         TEXT     PRIMARY KEY,
    expression   TEXT     NOT NULL,
    -- An IANA time zone name: the expression's fields are read in it.
    timezone     TEXT     NOT NULL,
    job_name     TEXT     NOT NULL,
    -- The call each tick spawns (a serialized JobCall).
    call         TEXT     NOT NULL,
    -- After downtime: 'skip' the missed ticks, fire the latest 'once', or 'all' of them (at
    -- most catch_up_max).
    catch_up     TEXT     NOT NULL,
    catch_up_max BIGINT   NOT NULL DEFAULT 0,
    -- Declared by #[llm_job(cron = ...)]: removed when the code no longer declares it.
    declared     BOOLEAN  NOT NULL DEFAULT false,
    -- Ticks at or before this never fire: when the expression or time zone was set.
    since        BIGINT   NOT NULL,
    -- Bumped by every change of the definition; a tick fires only under the one it was
    -- computed from.
    revision     BIGINT   NOT NULL DEFAULT 1,
    last_tick    BIGINT,
    created_at   BIGINT   NOT NULL,
    updated_at   BIGINT   NOT NULL
);

-- One row per fired tick: the primary key is what makes a tick fire once across processes,
-- inserted in the same transaction as the job it spawns. Old rows are pruned as ticks fire.
CREATE TABLE llmjobs_schedule_ticks (
    schedule TEXT   NOT NULL,
    tick     BIGINT NOT NULL,
    job_id   UUID   NOT NULL,
    fired_at BIGINT NOT NULL,
    PRIMARY KEY (schedule, tick)
);
