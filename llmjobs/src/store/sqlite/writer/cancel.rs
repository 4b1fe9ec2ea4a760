//! Cancelling a job: at once when pending, by request when running.

use rusqlite::{Connection, OptionalExtension};

use super::execute;
use super::tally::recount_row;
use crate::status::JobState;
use crate::store::CancelEffect;
use crate::{Error, JobId, Result};

pub(super) fn cancel(conn: &Connection, id: JobId, now: i64) -> Result<CancelEffect> {
    let id = id.to_string();
    let pending: Option<i64> = conn
        .prepare_cached("SELECT rowid FROM llmjobs_jobs WHERE id = ? AND status = 'pending'")?
        .query_row([&id], |row| row.get(0))
        .optional()?;
    if let Some(rowid) = pending {
        recount_row(conn, rowid, JobState::Cancelled)?;
        execute(
            conn,
            "UPDATE llmjobs_jobs SET status = 'cancelled', completed_at = ? WHERE rowid = ?",
            rusqlite::params![now, rowid],
        )?;
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
