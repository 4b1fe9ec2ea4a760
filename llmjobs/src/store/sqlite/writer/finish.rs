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

use std::collections::HashSet;
use std::sync::OnceLock;

use rusqlite::{Connection, OptionalExtension, ToSql};

use super::buckets::{bucket_sql, buckets};
use super::tally::Tally;
use super::{Reply, WriteOp};
use crate::Result;
use crate::status::JobState;
use crate::store::Finish;

/// Finds the running row of an attempt. Binds ?1 the id, ?2 the owner, ?3 the attempt.
const FENCED_SQL: &str = "SELECT rowid, name, concurrency_key, cancel_requested \
     FROM llmjobs_jobs WHERE id = ?1 AND status = 'running' AND owner = ?2 AND attempts = ?3";

/// Finds the running rows of many attempts, as [`FENCED_SQL`] does for one; each row found is
/// tagged with the attempt's position. The attempts drive the join (`CROSS JOIN` keeps them
/// the outer loop), each a lookup by id.
fn fenced_many_sql(rows: usize) -> &'static str {
    static CACHE: OnceLock<Vec<String>> = OnceLock::new();
    bucket_sql(&CACHE, rows, |n| {
        let values = vec!["(?, ?, ?, ?)"; n].join(", ");
        format!(
            "SELECT a.column1, j.rowid, j.name, j.concurrency_key, j.cancel_requested \
             FROM (VALUES {values}) AS a CROSS JOIN llmjobs_jobs AS j \
             WHERE j.id = a.column2 AND j.status = 'running' AND j.owner = a.column3 \
             AND j.attempts = a.column4"
        )
    })
}

/// Binds: ?1 the result, ?2 now, ?3 the last progress report (or NULL), ?4 the rowid.
const COMPLETE_SQL: &str = "UPDATE llmjobs_jobs SET status = 'completed', result = ?1, \
     error = NULL, completed_at = ?2, lease_until = NULL, progress = coalesce(?3, progress) \
     WHERE rowid = ?4";

/// Completes many rows as [`COMPLETE_SQL`] does one. Binds now, then per row its rowid, its
/// result and its last progress report (or NULL).
fn complete_many_sql(rows: usize) -> &'static str {
    static CACHE: OnceLock<Vec<String>> = OnceLock::new();
    bucket_sql(&CACHE, rows, |n| {
        let values = vec!["(?, ?, ?)"; n].join(", ");
        format!(
            "UPDATE llmjobs_jobs SET status = 'completed', result = c.column2, error = NULL, \
             completed_at = ?, lease_until = NULL, progress = coalesce(c.column3, progress) \
             FROM (VALUES {values}) AS c WHERE llmjobs_jobs.rowid = c.column1"
        )
    })
}

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
/// longer that attempt's. Their rows are found together and changed together (a job whose
/// cancel was requested, which ends cancelled, alone).
pub(super) fn complete_jobs(
    conn: &Connection,
    jobs: &[Completion<'_>],
    tally: &mut Tally,
) -> Result<Vec<Reply>> {
    let now = crate::status::now_ms();
    let rows = fenced_all(conn, jobs)?;
    let mut replies = Vec::with_capacity(jobs.len());
    let mut completed: Vec<(i64, &str, Option<&str>)> = Vec::with_capacity(jobs.len());
    for (job, row) in jobs.iter().zip(rows) {
        let state = match row {
            None => None,
            Some(row) if row.cancel_requested => Some(finish_fenced(
                conn,
                row,
                Outcome::Completed(job.result),
                job.progress,
                now,
                tally,
            )?),
            Some(row) => {
                tally.moved(
                    &row.name,
                    row.key.as_deref(),
                    Some(JobState::Running),
                    Some(JobState::Completed),
                );
                completed.push((row.rowid, job.result, job.progress));
                Some(JobState::Completed)
            }
        };
        replies.push(Reply::Finished(state));
    }
    for chunk in buckets(&completed) {
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(1 + 3 * chunk.len());
        params.push(&now);
        for (rowid, result, progress) in chunk {
            params.extend([rowid as &dyn ToSql, result, progress]);
        }
        conn.prepare_cached(complete_many_sql(chunk.len()))?
            .execute(params.as_slice())?;
    }
    Ok(replies)
}

/// The running row of each completion's attempt, if it still is. Two completions of one row
/// in a batch find it once: the first changes it, so the second would have found it no longer
/// running.
fn fenced_all(conn: &Connection, jobs: &[Completion<'_>]) -> Result<Vec<Option<Fenced>>> {
    let mut found: Vec<Option<Fenced>> = (0..jobs.len()).map(|_| None).collect();
    let mut first = 0;
    for chunk in buckets(jobs) {
        let positions: Vec<i64> = (first..first + chunk.len()).map(|i| i as i64).collect();
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(4 * chunk.len());
        for (job, position) in chunk.iter().zip(&positions) {
            params.extend([
                position as &dyn ToSql,
                &job.attempt.id,
                &job.attempt.owner,
                &job.attempt.attempt,
            ]);
        }
        let mut stmt = conn.prepare_cached(fenced_many_sql(chunk.len()))?;
        let mut rows = stmt.query(params.as_slice())?;
        while let Some(row) = rows.next()? {
            let position = usize::try_from(row.get::<_, i64>(0)?).expect("a position");
            found[position] = Some(Fenced {
                rowid: row.get(1)?,
                name: row.get(2)?,
                key: row.get(3)?,
                cancel_requested: row.get::<_, i64>(4)? != 0,
            });
        }
        first += chunk.len();
    }
    let mut seen = HashSet::new();
    for row in &mut found {
        if row.as_ref().is_some_and(|row| !seen.insert(row.rowid)) {
            *row = None;
        }
    }
    Ok(found)
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

/// Finds the attempt's running row and records `outcome` in it.
fn finish_row(
    conn: &Connection,
    a: &Attempt<'_>,
    outcome: Outcome<'_>,
    progress: Option<&str>,
    now: i64,
    tally: &mut Tally,
) -> Result<Option<JobState>> {
    match fenced(conn, a)? {
        Some(row) => Ok(Some(finish_fenced(
            conn, row, outcome, progress, now, tally,
        )?)),
        None => Ok(None),
    }
}

/// Records `outcome` in the attempt's running `row` (cancelled instead, if a cancel was
/// requested), counting the change; the state the job is in now.
fn finish_fenced(
    conn: &Connection,
    row: Fenced,
    outcome: Outcome<'_>,
    progress: Option<&str>,
    now: i64,
    tally: &mut Tally,
) -> Result<JobState> {
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
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql`, on an empty database of the real schema.
    fn plan(sql: &str) -> String {
        let conn = Connection::open_in_memory().unwrap();
        super::super::super::migrate::run(&conn).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        stmt.query_map(rusqlite::params_from_iter(nulls), |row| {
            row.get::<_, String>(3)
        })
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap()
        .join("\n")
    }

    /// A batch's completions find their rows by id, one index lookup each, whatever the number
    /// of jobs in the table.
    #[test]
    fn the_rows_of_a_batch_of_completions_are_found_by_id() {
        let plan = plan(fenced_many_sql(4));
        assert!(
            plan.contains("SEARCH j USING INDEX") && plan.contains("id=?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN j"), "{plan}");
    }

    /// A batch's completions change their rows by rowid, one lookup each.
    #[test]
    fn the_rows_of_a_batch_of_completions_are_changed_by_rowid() {
        let plan = plan(complete_many_sql(4));
        assert!(
            plan.contains("SEARCH llmjobs_jobs USING INTEGER PRIMARY KEY (rowid=?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN llmjobs_jobs"), "{plan}");
    }
}
