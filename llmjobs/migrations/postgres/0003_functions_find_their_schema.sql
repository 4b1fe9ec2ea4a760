-- Functions find llmjobs' tables whatever the search_path of the session that fires them.
-- 0001 named the tables unqualified inside `llmjobs_count_jobs`, which runs as a trigger in the
-- session that changes a job: a session whose search_path lacks llmjobs' schema (an
-- application writing in its own transaction, a DBA in psql) failed with "relation
-- llmjobs_counts does not exist". `FROM CURRENT` pins the function to the search_path this
-- migration runs with: llmjobs' schema, whatever it is named.
ALTER FUNCTION llmjobs_count_jobs() SET search_path FROM CURRENT;
