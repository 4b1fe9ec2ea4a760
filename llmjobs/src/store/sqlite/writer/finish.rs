//! Recording how an attempt ended. Completions, the most frequent outcome, are applied together
//! for a whole batch; the other outcomes one at a time.

use rusqlite::Connection;

use super::{Reply, WriteOp, execute};
use crate::store::Finish;
use crate::{JobId, Result};

/// Marks a job completed if it is still its owner's running job. Binds, in order: the result,
/// the completion time, the unsaved progress (or NULL), the id and the owner.
const COMPLETE_SQL: &str = "UPDATE llmjobs_jobs SET status = 'completed', result = ?, error = NULL, \
     completed_at = ?, lease_until = NULL, progress = coalesce(?, progress) \
     WHERE id = ? AND status = 'running' AND owner = ?";

/// The parts of a successful `Finish` op.
pub(super) struct Completion<'a> {
    id: String,
    owner: &'a str,
    result: &'a str,
    progress: Option<&'a str>,
}

pub(super) fn completion<'a>(op: &&'a WriteOp) -> Option<Completion<'a>> {
    match op {
        WriteOp::Finish {
            id,
            owner,
            finish: Finish::Completed { result },
            progress,
        } => Some(Completion {
            id: id.to_string(),
            owner,
            result,
            progress: progress.as_deref(),
        }),
        _ => None,
    }
}

/// Marks jobs completed; each reply says whether that job's row was still its owner's running
/// job.
pub(super) fn complete_jobs(conn: &Connection, jobs: &[Completion<'_>]) -> Result<Vec<Reply>> {
    let now = crate::status::now_ms();
    let mut stmt = conn.prepare_cached(COMPLETE_SQL)?;
    jobs.iter()
        .map(|job| {
            let changed = stmt.execute(rusqlite::params![
                job.result,
                now,
                job.progress,
                job.id,
                job.owner
            ])?;
            Ok(Reply::Changed(changed == 1))
        })
        .collect()
}

/// Records how one attempt ended; `true` when the job's row was still its owner's running job.
pub(super) fn finish_job(
    conn: &Connection,
    id: JobId,
    owner: &str,
    finish: &Finish,
    progress: Option<&str>,
    now: i64,
) -> Result<bool> {
    let id = id.to_string();
    let changed = match finish {
        Finish::Completed { result } => execute(
            conn,
            COMPLETE_SQL,
            rusqlite::params![result, now, progress, id, owner],
        )?,
        Finish::Failed {
            error,
            needs_review,
        } => execute(
            conn,
            "UPDATE llmjobs_jobs SET status = 'failed', error = ?, completed_at = ?, \
                     lease_until = NULL, progress = coalesce(?, progress), needs_review = ? \
                     WHERE id = ? AND status = 'running' AND owner = ?",
            rusqlite::params![error, now, progress, needs_review, id, owner],
        )?,
        Finish::Retry { error, run_at } => execute(
            conn,
            "UPDATE llmjobs_jobs SET status = 'pending', error = ?, run_at = ?, \
                     owner = NULL, lease_until = NULL, progress = coalesce(?, progress) \
                     WHERE id = ? AND status = 'running' AND owner = ?",
            rusqlite::params![error, run_at, progress, id, owner],
        )?,
        Finish::Cancelled => execute(
            conn,
            "UPDATE llmjobs_jobs SET status = 'cancelled', completed_at = ?, \
                     lease_until = NULL, progress = coalesce(?, progress) \
                     WHERE id = ? AND status = 'running' AND owner = ?",
            rusqlite::params![now, progress, id, owner],
        )?,
    };
    Ok(changed == 1)
}
