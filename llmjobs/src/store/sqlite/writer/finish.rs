//! Recording how an attempt ended. Completions, the most frequent outcome, are applied together
//! for a whole batch; the other outcomes one at a time.
//!
//! Every statement is fenced by the attempt: it changes the row only while it is still this
//! owner's running job *and* this attempt of it, so a worker whose job was taken over never
//! overwrites the new attempt's work, even if it claimed the job again itself. A cancel
//! requested meanwhile wins over whatever the attempt ended with: once `cancel` has returned,
//! the job ends `cancelled`.

use rusqlite::{Connection, OptionalExtension, Params};

use super::{Reply, WriteOp};
use crate::status::JobState;
use crate::store::Finish;
use crate::{Error, Result};

/// Binds: ?1 the result, ?2 now, ?3 the last progress report (or NULL), ?4 the id, ?5 the
/// owner, ?6 the attempt. Changes the row only if no cancel was requested.
///
/// Completions are the hot path, so they do without `RETURNING`: SQLite buffers a statement's
/// returned rows in a temporary b-tree that it opens, fills and frees for every statement, which
/// measured (callgrind) as a quarter of the writer's work per job. Whether the row changed says
/// all that the reply needs.
const COMPLETE_SQL: &str = "UPDATE llmjobs_jobs SET status = 'completed', result = ?1, \
     error = NULL, completed_at = ?2, lease_until = NULL, progress = coalesce(?3, progress) \
     WHERE id = ?4 AND status = 'running' AND owner = ?5 AND attempts = ?6 \
     AND cancel_requested = 0";

/// [`COMPLETE_SQL`] for a job whose cancel was requested: it ends cancelled, without a result
/// (?1 is not used).
const COMPLETE_CANCELLED_SQL: &str = "UPDATE llmjobs_jobs SET status = 'cancelled', \
     result = NULL, error = NULL, completed_at = ?2, lease_until = NULL, \
     progress = coalesce(?3, progress) \
     WHERE id = ?4 AND status = 'running' AND owner = ?5 AND attempts = ?6 \
     AND cancel_requested <> 0";

/// Binds as [`COMPLETE_SQL`], with ?1 the error and ?7 whether it needs review.
const FAIL_SQL: &str = "UPDATE llmjobs_jobs SET \
     status = CASE cancel_requested WHEN 0 THEN 'failed' ELSE 'cancelled' END, \
     error = ?1, completed_at = ?2, lease_until = NULL, progress = coalesce(?3, progress), \
     needs_review = CASE cancel_requested WHEN 0 THEN ?7 ELSE 0 END \
     WHERE id = ?4 AND status = 'running' AND owner = ?5 AND attempts = ?6 \
     RETURNING status";

/// Binds as [`COMPLETE_SQL`], with ?1 the error and ?7 when the next attempt is due.
const RETRY_SQL: &str = "UPDATE llmjobs_jobs SET \
     status = CASE cancel_requested WHEN 0 THEN 'pending' ELSE 'cancelled' END, \
     error = ?1, run_at = ?7, \
     completed_at = CASE cancel_requested WHEN 0 THEN NULL ELSE ?2 END, \
     owner = CASE cancel_requested WHEN 0 THEN NULL ELSE owner END, \
     lease_until = NULL, progress = coalesce(?3, progress) \
     WHERE id = ?4 AND status = 'running' AND owner = ?5 AND attempts = ?6 \
     RETURNING status";

/// Binds as [`COMPLETE_SQL`], with ?1 unused (NULL).
const CANCEL_SQL: &str = "UPDATE llmjobs_jobs SET status = 'cancelled', \
     completed_at = ?2, lease_until = NULL, progress = coalesce(?3, progress), \
     result = coalesce(?1, result) \
     WHERE id = ?4 AND status = 'running' AND owner = ?5 AND attempts = ?6 \
     RETURNING status";

/// Which attempt of which job an outcome is for.
pub(super) struct Attempt<'a> {
    pub(super) id: String,
    pub(super) owner: &'a str,
    pub(super) attempt: u32,
}

/// The parts of a successful `Finish` op.
pub(super) struct Completion<'a> {
    attempt: Attempt<'a>,
    result: &'a str,
    progress: Option<&'a str>,
}

pub(super) fn completion<'a>(op: &&'a WriteOp) -> Option<Completion<'a>> {
    match op {
        WriteOp::Finish {
            id,
            owner,
            attempt,
            finish: Finish::Completed { result },
            progress,
        } => Some(Completion {
            attempt: Attempt {
                id: id.to_string(),
                owner,
                attempt: *attempt,
            },
            result,
            progress: progress.as_deref(),
        }),
        _ => None,
    }
}

/// Marks jobs completed; each reply says the state each job is in now, or that the row was no
/// longer that attempt's.
pub(super) fn complete_jobs(conn: &Connection, jobs: &[Completion<'_>]) -> Result<Vec<Reply>> {
    let now = crate::status::now_ms();
    let mut stmt = conn.prepare_cached(COMPLETE_SQL)?;
    jobs.iter()
        .map(|job| {
            let a = &job.attempt;
            let params = rusqlite::params![job.result, now, job.progress, a.id, a.owner, a.attempt];
            let state = if stmt.execute(params)? == 1 {
                Some(JobState::Completed)
            } else {
                complete_cancelled(conn, params)?
            };
            Ok(Reply::Finished(state))
        })
        .collect()
}

/// The completion of an attempt whose job was asked to cancel (or is no longer this attempt's):
/// the job ends cancelled, or `None` if the row is not this attempt's.
fn complete_cancelled(conn: &Connection, params: impl Params) -> Result<Option<JobState>> {
    let changed = conn
        .prepare_cached(COMPLETE_CANCELLED_SQL)?
        .execute(params)?;
    Ok((changed == 1).then_some(JobState::Cancelled))
}

/// Records how one attempt ended; the state the job is in now, or `None` when the row was no
/// longer that attempt's.
pub(super) fn finish_job(
    conn: &Connection,
    a: &Attempt<'_>,
    finish: &Finish,
    progress: Option<&str>,
    now: i64,
) -> Result<Option<JobState>> {
    let (id, owner, attempt) = (&a.id, a.owner, a.attempt);
    match finish {
        Finish::Completed { result } => {
            let params = rusqlite::params![result, now, progress, id, owner, attempt];
            if conn.prepare_cached(COMPLETE_SQL)?.execute(params)? == 1 {
                Ok(Some(JobState::Completed))
            } else {
                complete_cancelled(conn, params)
            }
        }
        Finish::Failed {
            error,
            needs_review,
        } => state_after(
            &mut conn.prepare_cached(FAIL_SQL)?,
            rusqlite::params![error, now, progress, id, owner, attempt, needs_review],
        ),
        Finish::Retry { error, run_at } => state_after(
            &mut conn.prepare_cached(RETRY_SQL)?,
            rusqlite::params![error, now, progress, id, owner, attempt, run_at],
        ),
        Finish::Cancelled => state_after(
            &mut conn.prepare_cached(CANCEL_SQL)?,
            rusqlite::params![None::<String>, now, progress, id, owner, attempt],
        ),
    }
}

/// Runs an outcome's UPDATE ... RETURNING status.
fn state_after(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl Params,
) -> Result<Option<JobState>> {
    let status: Option<String> = stmt.query_row(params, |row| row.get(0)).optional()?;
    status
        .map(|status| {
            status.parse().map_err(|reason| Error::CorruptRow {
                id: "(finished job)".into(),
                reason,
            })
        })
        .transpose()
}
