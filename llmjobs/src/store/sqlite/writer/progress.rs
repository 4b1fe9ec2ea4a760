//! Saving a running job's latest progress report.

use rusqlite::Connection;

use super::execute;
use crate::{JobId, Result};

/// Stores `progress` on the job while attempt `attempt` of `owner` runs it; `false` when it
/// does not any more (a late write never lands on a later attempt or a finished job).
pub(super) fn save_progress(
    conn: &Connection,
    id: JobId,
    owner: &str,
    attempt: u32,
    progress: &str,
) -> Result<bool> {
    let changed = execute(
        conn,
        "UPDATE llmjobs_jobs SET progress = ? \
         WHERE id = ? AND status = 'running' AND owner = ? AND attempts = ?",
        rusqlite::params![progress, id.to_string(), owner, attempt],
    )?;
    Ok(changed == 1)
}
