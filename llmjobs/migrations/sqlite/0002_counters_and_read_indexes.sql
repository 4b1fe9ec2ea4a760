-- Reads and limits that cost the same whatever the size of the history.
--
-- Counters are kept by triggers, in the same transaction as every change of a job's state, so
-- they cannot drift from the rows: `counts` reads a few counter rows instead of counting the
-- table, and a claim under limits reads the running counts of the names and keys it meets
-- instead of counting every running job.

-- Jobs per name and state.
CREATE TABLE llmjobs_counts (
    name   TEXT    NOT NULL,
    status TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (name, status)
) WITHOUT ROWID;

-- Running jobs per concurrency key.
CREATE TABLE llmjobs_running_keys (
    concurrency_key TEXT    PRIMARY KEY NOT NULL,
    n               INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO llmjobs_counts (name, status, n)
    SELECT name, status, count(*) FROM llmjobs_jobs GROUP BY name, status;
INSERT INTO llmjobs_running_keys (concurrency_key, n)
    SELECT concurrency_key, count(*) FROM llmjobs_jobs
    WHERE status = 'running' AND concurrency_key IS NOT NULL GROUP BY concurrency_key;

CREATE TRIGGER llmjobs_jobs_count_insert AFTER INSERT ON llmjobs_jobs BEGIN
    INSERT INTO llmjobs_counts (name, status, n) VALUES (NEW.name, NEW.status, 1)
        ON CONFLICT (name, status) DO UPDATE SET n = n + 1;
    INSERT INTO llmjobs_running_keys (concurrency_key, n)
        SELECT NEW.concurrency_key, 1
        WHERE NEW.status = 'running' AND NEW.concurrency_key IS NOT NULL
        ON CONFLICT (concurrency_key) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER llmjobs_jobs_count_update AFTER UPDATE OF status ON llmjobs_jobs
WHEN OLD.status <> NEW.status BEGIN
    UPDATE llmjobs_counts SET n = n - 1 WHERE name = OLD.name AND status = OLD.status;
    INSERT INTO llmjobs_counts (name, status, n) VALUES (NEW.name, NEW.status, 1)
        ON CONFLICT (name, status) DO UPDATE SET n = n + 1;
    UPDATE llmjobs_running_keys SET n = n - 1
        WHERE OLD.status = 'running' AND concurrency_key = OLD.concurrency_key;
    INSERT INTO llmjobs_running_keys (concurrency_key, n)
        SELECT NEW.concurrency_key, 1
        WHERE NEW.status = 'running' AND NEW.concurrency_key IS NOT NULL
        ON CONFLICT (concurrency_key) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER llmjobs_jobs_count_delete AFTER DELETE ON llmjobs_jobs BEGIN
    UPDATE llmjobs_counts SET n = n - 1 WHERE name = OLD.name AND status = OLD.status;
    UPDATE llmjobs_running_keys SET n = n - 1
        WHERE OLD.status = 'running' AND concurrency_key = OLD.concurrency_key;
END;

-- Running jobs per key are counted above now.
DROP INDEX llmjobs_jobs_running_keys;

-- Listing, newest first (ids are UUIDv7: they sort by creation time), pages by keyset: by
-- state, and by name (and state). Without a filter the primary key serves.
CREATE INDEX llmjobs_jobs_by_status ON llmjobs_jobs (status, id);
CREATE INDEX llmjobs_jobs_by_name ON llmjobs_jobs (name, status, id);
