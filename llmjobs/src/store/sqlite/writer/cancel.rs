//! Cancelling a job: at once when pending, by request when running.

use rusqlite::{Connection, OptionalExtension};

use super::execute;
use crate::store::CancelEffect;
use crate::{Error, JobId, Result};

pub(super) fn cancel(conn: &Connection, id: JobId, now: i64) -> Result<CancelEffect> {
    let id = id.to_string();
    let pending = execute(
        conn,
        "UPDATE llmjobs_jobs SET status = 'cancelled', completed_at = ? \
         WHERE id = ? AND status = 'pending'",
        rusqlite::params![now, id],
    )?;
    if pending == 1 {
        return Ok(CancelEffect::Cancelled);
    }
    let running = execute(
        conn,
        "UPDATE llmjobs_jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
        [&id],
    )?;
    if running == 1 {
        return Ok(CancelEffect::Requested);
    }
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM llmjobs_jobs WHERE id = ?")?
        .query_row([&id], |row| row.get(0))
        .optional()?;
    match status {
        None => Ok(CancelEffect::NotFound),
        Some(status) => status
            .parse()
            .map(CancelEffect::AlreadyFinal)
            .map_err(|reason| Error::CorruptRow { id, reason }),
    }
}
