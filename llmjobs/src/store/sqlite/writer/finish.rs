//! Recording how an attempt ended. Completions, the most frequent outcome, are applied together
//! for a whole batch; the other outcomes one at a time.
//!
//! Every outcome is fenced by the attempt: it changes the row only while it is still this
//! owner's running job *and* this attempt of it, so a worker whose job was taken over never
//! overwrites the new attempt's work, even if it claimed the job again itself. A cancel
//! requested meanwhile wins over whatever the attempt ended with: once `cancel` has returned,
//! the job ends `cancelled`.
//!
//! The row is found first (which also gives what the counters need), then changed by rowid.
//! No statement uses `RETURNING`: SQLite buffers a statement's returned rows in a temporary
//! b-tree that it opens, fills and frees for every statement, which measured (callgrind) as a
//! tenth of the writer's work per job.

use rusqlite::{Connection, OptionalExtension};

use super::tally::Tally;
use super::{Reply, WriteOp};
use crate::Result;
use crate::status::JobState;
use crate::store::Finish;

/// Finds the running row of an attempt. Binds ?1 the id, ?2 the owner, ?3 the attempt.
const FENCED_SQL: &str = "SELECT rowid, name, concurrency_key, cancel_requested \
     FROM llmjobs_jobs WHERE id = ?1 AND status = 'running' AND owner = ?2 AND attempts = ?3";

/// Binds: ?1 the result, ?2 now, ?3 the last progress report (or NULL), ?4 the rowid.
const COMPLETE_SQL: &str = "UPDATE llmjobs_jobs SET status = 'completed', result = ?1, \
     error = NULL, completed_at = ?2, lease_until = NULL, progress = coalesce(?3, progress) \
     WHERE rowid = ?4";

/// A completion whose job was asked to cancel: it ends cancelled, without a result. Binds as
/// [`COMPLETE_SQL`] (?1 unused).
const COMPLETE_CANCELLED_SQL: &str = "UPDATE llmjobs_jobs SET status = 'cancelled', \
     result = NULL, error = NULL, completed_at = ?2, lease_until = NULL, \
     progress = coalesce(?3, progress) WHERE rowid = ?4";

/// Binds as [`COMPLETE_SQL`], with ?1 the error, ?5 the state (failed, or cancelled when a
/// cancel was requested) and ?6 whether it needs review. The error joins the attempts' history.
const FAIL_SQL: &str = concat!(
    "UPDATE llmjobs_jobs SET status = ?5, error = ?1, completed_at = ?2, \
     lease_until = NULL, progress = coalesce(?3, progress), needs_review = ?6, attempt_errors = ",
    attempt_error_appended!("?1", "?2"),
    " WHERE rowid = ?4"
);

/// Binds as [`COMPLETE_SQL`], with ?1 the error, ?5 the state (pending, or cancelled when a
/// cancel was requested), ?6 when the next attempt is due, ?7 the completion time (NULL when
/// pending). A job going back to pending has no owner. The error joins the attempts' history.
const RETRY_SQL: &str = concat!(
    "UPDATE llmjobs_jobs SET status = ?5, error = ?1, run_at = ?6, \
     completed_at = ?7, owner = CASE ?5 WHEN 'pending' THEN NULL ELSE owner END, \
     lease_until = NULL, progress = coalesce(?3, progress), attempt_errors = ",
    attempt_error_appended!("?1", "?2"),
    " WHERE rowid = ?4"
);

/// Binds as [`COMPLETE_SQL`] (?1 unused).
const CANCEL_SQL: &str = "UPDATE llmjobs_jobs SET status = 'cancelled', completed_at = ?2, \
     lease_until = NULL, progress = coalesce(?3, progress) WHERE rowid = ?4";

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

/// The running row of an attempt, as the outcome needs it.
struct Fenced {
    rowid: i64,
    name: String,
    key: Option<String>,
    cancel_requested: bool,
}

/// The row of `a` while it is still that attempt's running job.
fn fenced(conn: &Connection, a: &Attempt<'_>) -> Result<Option<Fenced>> {
    Ok(conn
        .prepare_cached(FENCED_SQL)?
        .query_row(rusqlite::params![a.id, a.owner, a.attempt], |row| {
            Ok(Fenced {
                rowid: row.get(0)?,
                name: row.get(1)?,
                key: row.get(2)?,
                cancel_requested: row.get::<_, i64>(3)? != 0,
            })
        })
        .optional()?)
}

/// Marks jobs completed; each reply says the state each job is in now, or that the row was no
/// longer that attempt's.
pub(super) fn complete_jobs(
    conn: &Connection,
    jobs: &[Completion<'_>],
    tally: &mut Tally,
) -> Result<Vec<Reply>> {
    let now = crate::status::now_ms();
    jobs.iter()
        .map(|job| {
            let finish = Outcome::Completed(job.result);
            let state = finish_row(conn, &job.attempt, finish, job.progress, now, tally)?;
            Ok(Reply::Finished(state))
        })
        .collect()
}

/// Records how one attempt ended; the state the job is in now, or `None` when the row was no
/// longer that attempt's.
pub(super) fn finish_job(
    conn: &Connection,
    a: &Attempt<'_>,
    finish: &Finish,
    progress: Option<&str>,
    now: i64,
    tally: &mut Tally,
) -> Result<Option<JobState>> {
    let outcome = match finish {
        Finish::Completed { result } => Outcome::Completed(result),
        Finish::Failed {
            error,
            needs_review,
        } => Outcome::Failed(error, *needs_review),
        Finish::Retry { error, run_at } => Outcome::Retry(error, *run_at),
        Finish::Cancelled => Outcome::Cancelled,
    };
    finish_row(conn, a, outcome, progress, now, tally)
}

/// A [`Finish`] by reference.
enum Outcome<'a> {
    Completed(&'a str),
    Failed(&'a str, bool),
    Retry(&'a str, i64),
    Cancelled,
}

/// Finds the attempt's running row and records `outcome` in it (cancelled instead, if a cancel
/// was requested), counting the change.
fn finish_row(
    conn: &Connection,
    a: &Attempt<'_>,
    outcome: Outcome<'_>,
    progress: Option<&str>,
    now: i64,
    tally: &mut Tally,
) -> Result<Option<JobState>> {
    let Some(row) = fenced(conn, a)? else {
        return Ok(None);
    };
    let (rowid, cancelled) = (row.rowid, row.cancel_requested);
    let state = match outcome {
        Outcome::Completed(result) => {
            let (sql, state) = if cancelled {
                (COMPLETE_CANCELLED_SQL, JobState::Cancelled)
            } else {
                (COMPLETE_SQL, JobState::Completed)
            };
            conn.prepare_cached(sql)?
                .execute(rusqlite::params![result, now, progress, rowid])?;
            state
        }
        Outcome::Failed(error, needs_review) => {
            let state = if cancelled {
                JobState::Cancelled
            } else {
                JobState::Failed
            };
            conn.prepare_cached(FAIL_SQL)?.execute(rusqlite::params![
                error,
                now,
                progress,
                rowid,
                state.as_str(),
                needs_review && !cancelled
            ])?;
            state
        }
        Outcome::Retry(error, run_at) => {
            let (state, completed_at) = if cancelled {
                (JobState::Cancelled, Some(now))
            } else {
                (JobState::Pending, None)
            };
            conn.prepare_cached(RETRY_SQL)?.execute(rusqlite::params![
                error,
                now,
                progress,
                rowid,
                state.as_str(),
                run_at,
                completed_at
            ])?;
            state
        }
        Outcome::Cancelled => {
            conn.prepare_cached(CANCEL_SQL)?.execute(rusqlite::params![
                None::<String>,
                now,
                progress,
                rowid
            ])?;
            JobState::Cancelled
        }
    };
    tally.moved(
        &row.name,
        row.key.as_deref(),
        Some(JobState::Running),
        Some(state),
    );
    Ok(Some(state))
}
