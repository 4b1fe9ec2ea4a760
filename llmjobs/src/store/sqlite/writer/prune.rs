//! Deleting old finished jobs and their journals.

use rusqlite::Connection;

use super::execute;
use crate::Result;

/// Deletes the jobs that ended before `before`, with their steps; returns how many jobs.
pub(super) fn prune(conn: &Connection, before: i64) -> Result<u64> {
    execute(
        conn,
        "DELETE FROM llmjobs_steps WHERE job_id IN (SELECT id FROM llmjobs_jobs \
         WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < ?)",
        [before],
    )?;
    Ok(execute(
        conn,
        "DELETE FROM llmjobs_jobs \
         WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < ?",
        [before],
    )? as u64)
}
