-- The counters, split into slots so that concurrent transactions stop queueing on them.
--
-- 0001 kept one row per (name, status) and one per concurrency key. Every batch of spawns and
-- outcomes changes the same few of them (a name's `pending`, `running` and `completed`), so it
-- held their row locks from its first statement to its commit, and every other batch, of this
-- process or another, waited behind that commit (its WAL flush) instead of sharing it.
--
-- Now each counter is spread over `llmjobs_counter_slot()` rows: a transaction changes only the
-- rows of its own slot, chosen by its backend, so transactions of different connections touch
-- different rows; reads sum the slots. A slot's `n` alone may be negative (a job counted in
-- while pending by one connection and out by another); the sum over slots is the count.
-- Limits stay exact: claims and local hand-offs under a limit already take their limit's
-- advisory lock before reading the sum, and the sum moves only when a transaction commits.

ALTER TABLE llmjobs_counts ADD COLUMN slot SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE llmjobs_counts DROP CONSTRAINT llmjobs_counts_pkey,
    ADD PRIMARY KEY (name, status, slot);
ALTER TABLE llmjobs_counts ALTER COLUMN slot DROP DEFAULT;

ALTER TABLE llmjobs_running_keys ADD COLUMN slot SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE llmjobs_running_keys DROP CONSTRAINT llmjobs_running_keys_pkey,
    ADD PRIMARY KEY (concurrency_key, slot);
ALTER TABLE llmjobs_running_keys ALTER COLUMN slot DROP DEFAULT;

-- The slot of the current connection: one backend runs one transaction at a time, so two
-- transactions share a slot only when their backends' process ids agree modulo 64 (the
-- connections of a process, forked one after another, mostly do not).
CREATE FUNCTION llmjobs_counter_slot() RETURNS SMALLINT LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT (pg_backend_pid() % 64)::smallint $$;

-- As in 0001, statement-level and in (name, status) order within the slot, so that two
-- statements that share a slot lock its rows in one order.
CREATE OR REPLACE FUNCTION llmjobs_count_jobs() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
DECLARE
    s SMALLINT := llmjobs_counter_slot();
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO llmjobs_counts AS c (name, status, slot, n)
            SELECT name, status, s, count(*) FROM new_rows GROUP BY name, status
            ORDER BY name, status
            ON CONFLICT (name, status, slot) DO UPDATE SET n = c.n + excluded.n;
        INSERT INTO llmjobs_running_keys AS k (concurrency_key, slot, n)
            SELECT concurrency_key, s, count(*) FROM new_rows
            WHERE status = 'running' AND concurrency_key IS NOT NULL
            GROUP BY concurrency_key ORDER BY concurrency_key
            ON CONFLICT (concurrency_key, slot) DO UPDATE SET n = k.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO llmjobs_counts AS c (name, status, slot, n)
            SELECT name, status, s, sum(d) FROM (
                SELECT name, status, -1 AS d FROM old_rows
                UNION ALL SELECT name, status, 1 FROM new_rows) changes
            GROUP BY name, status HAVING sum(d) <> 0 ORDER BY name, status
            ON CONFLICT (name, status, slot) DO UPDATE SET n = c.n + excluded.n;
        INSERT INTO llmjobs_running_keys AS k (concurrency_key, slot, n)
            SELECT concurrency_key, s, sum(d) FROM (
                SELECT concurrency_key, -1 AS d FROM old_rows
                    WHERE status = 'running' AND concurrency_key IS NOT NULL
                UNION ALL SELECT concurrency_key, 1 FROM new_rows
                    WHERE status = 'running' AND concurrency_key IS NOT NULL) changes
            GROUP BY concurrency_key HAVING sum(d) <> 0 ORDER BY concurrency_key
            ON CONFLICT (concurrency_key, slot) DO UPDATE SET n = k.n + excluded.n;
    ELSE
        -- A deletion counts out of this slot: the slot goes below zero if another counted in.
        INSERT INTO llmjobs_counts AS c (name, status, slot, n)
            SELECT name, status, s, -count(*) FROM old_rows GROUP BY name, status
            ORDER BY name, status
            ON CONFLICT (name, status, slot) DO UPDATE SET n = c.n + excluded.n;
        INSERT INTO llmjobs_running_keys AS k (concurrency_key, slot, n)
            SELECT concurrency_key, s, -count(*) FROM old_rows
            WHERE status = 'running' AND concurrency_key IS NOT NULL
            GROUP BY concurrency_key ORDER BY concurrency_key
            ON CONFLICT (concurrency_key, slot) DO UPDATE SET n = k.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;
