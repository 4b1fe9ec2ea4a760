//! Saving a running job's latest progress report.

use rusqlite::Connection;

use super::execute;
use crate::{JobId, Result};

/// Stores `progress` on the job if it is running; `false` when it is not.
pub(super) fn save_progress(conn: &Connection, id: JobId, progress: &str) -> Result<bool> {
    let changed = execute(
        conn,
        "UPDATE llmjobs_jobs SET progress = ? WHERE id = ? AND status = 'running'",
        rusqlite::params![progress, id.to_string()],
    )?;
    Ok(changed == 1)
}
