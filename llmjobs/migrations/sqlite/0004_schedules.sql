-- Cron schedules, and the ticks they fired. Times are Unix milliseconds (UTC).

CREATE TABLE llmjobs_schedules (
    name         TEXT    PRIMARY KEY NOT NULL,
    expression   TEXT    NOT NULL,
    -- An IANA time zone name: the expression's fields are read in it.
    timezone     TEXT    NOT NULL,
    job_name     TEXT    NOT NULL,
    -- The call each tick spawns (a serialized JobCall).
    call         TEXT    NOT NULL,
    -- After downtime: 'skip' the missed ticks, fire the latest 'once', or 'all' of them (at
    -- most catch_up_max).
    catch_up     TEXT    NOT NULL,
    catch_up_max INTEGER NOT NULL DEFAULT 0,
    -- 1: declared by #[llm_job(cron = ...)], removed when the code no longer declares it.
    declared     INTEGER NOT NULL DEFAULT 0,
    -- Ticks at or before this never fire: when the expression or time zone was set.
    since        INTEGER NOT NULL,
    -- Bumped by every change of the definition; a tick fires only under the one it was
    -- computed from.
    revision     INTEGER NOT NULL DEFAULT 1,
    last_tick    INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per fired tick: the primary key is what makes a tick fire once across processes,
-- inserted in the same transaction as the job it spawns. Old rows are pruned as ticks fire.
CREATE TABLE llmjobs_schedule_ticks (
    schedule TEXT    NOT NULL,
    tick     INTEGER NOT NULL,
    job_id   TEXT    NOT NULL,
    fired_at INTEGER NOT NULL,
    PRIMARY KEY (schedule, tick)
) WITHOUT ROWID;
