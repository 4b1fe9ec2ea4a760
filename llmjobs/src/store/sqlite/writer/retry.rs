//! Putting a failed or cancelled job back to work.

use rusqlite::{Connection, OptionalExtension};

use super::execute;
use super::tally::recount_row;
use crate::status::JobState;
use crate::store::RetryEffect;
use crate::{Error, JobId, Result};

/// Makes a failed or cancelled job pending again, due now, with a fresh attempt budget; the
/// run that ended is appended to its `earlier_runs`. Its journal is kept (a retry replays the
/// steps already paid for) unless `clear_journal`.
pub(super) fn retry(
    conn: &Connection,
    id: JobId,
    clear_journal: bool,
    now: i64,
) -> Result<RetryEffect> {
    let id = id.to_string();
    let retryable: Option<i64> = conn
        .prepare_cached(
            "SELECT rowid FROM llmjobs_jobs \
             WHERE id = ? AND (status = 'failed' OR status = 'cancelled')",
        )?
        .query_row([&id], |row| row.get(0))
        .optional()?;
    if let Some(rowid) = retryable {
        recount_row(conn, rowid, JobState::Pending)?;
    }
    let changed = execute(
        conn,
        "UPDATE llmjobs_jobs SET \
         earlier_runs = json_insert(coalesce(earlier_runs, '[]'), '$[#]', json_object(\
             'state', status, 'attempts', attempts, 'error', error, \
             'needs_review', json(CASE needs_review WHEN 0 THEN 'false' ELSE 'true' END), \
             'ended_at_ms', completed_at, \
             'attempt_errors', json(CASE WHEN json_valid(attempt_errors) THEN attempt_errors \
                 ELSE '[]' END))), \
         attempt_errors = NULL, status = 'pending', attempts = 0, error = NULL, result = NULL, needs_review = 0, \
         cancel_requested = 0, owner = NULL, lease_until = NULL, completed_at = NULL, \
         run_at = ?2 \
         WHERE id = ?1 AND (status = 'failed' OR status = 'cancelled')",
        rusqlite::params![id, now],
    )?;
    if changed == 1 {
        if clear_journal {
            execute(conn, "DELETE FROM llmjobs_steps WHERE job_id = ?", [&id])?;
        }
        return Ok(RetryEffect::Retried);
    }
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM llmjobs_jobs WHERE id = ?")?
        .query_row([&id], |row| row.get(0))
        .optional()?;
    match status {
        None => Ok(RetryEffect::NotFound),
        Some(status) => status
            .parse()
            .map(RetryEffect::NotRetryable)
            .map_err(|reason| Error::CorruptRow { id, reason }),
    }
}
