-- Each attempt's error, not only the last one: a JSON array of {attempt, error, ended_at_ms},
-- oldest first, appended by the writer whenever an attempt ends in an error (it failed, will be
-- retried, or its worker died). A `retry` moves the array into the earlier run it records.
ALTER TABLE llmjobs_jobs ADD COLUMN attempt_errors TEXT;
