//! Recording how an attempt ended.
//!
//! Every statement is fenced by the attempt: it changes the row only while it is still this
//! owner's running job *and* this attempt of it, so a worker whose job was taken over never
//! overwrites the new attempt's work, even if it claimed the job again itself. A cancel
//! requested meanwhile wins over whatever the attempt ended with.

use sqlx::PgPool;

use crate::status::JobState;
use crate::store::Finish;
use crate::{Error, JobId, Result};

/// Binds: $1 the result, $2 now, $3 the last progress report (or NULL), $4 the id, $5 the
/// owner, $6 the attempt.
const COMPLETE_SQL: &str = "UPDATE llmjobs_jobs SET \
     status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'completed' END, \
     result = CASE WHEN cancel_requested THEN NULL ELSE $1 END, error = NULL, \
     completed_at = $2, lease_until = NULL, progress = coalesce($3, progress) \
     WHERE id = $4::uuid AND status = 'running' AND owner = $5 AND attempts = $6 \
     RETURNING status";

/// Binds as [`COMPLETE_SQL`], with $1 the error and $7 whether it needs review.
const FAIL_SQL: &str = "UPDATE llmjobs_jobs SET \
     status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END, \
     error = $1, completed_at = $2, lease_until = NULL, progress = coalesce($3, progress), \
     needs_review = NOT cancel_requested AND $7 \
     WHERE id = $4::uuid AND status = 'running' AND owner = $5 AND attempts = $6 \
     RETURNING status";

/// Binds as [`COMPLETE_SQL`], with $1 the error and $7 when the next attempt is due.
const RETRY_SQL: &str = "UPDATE llmjobs_jobs SET \
     status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END, \
     error = $1, run_at = $7, \
     completed_at = CASE WHEN cancel_requested THEN $2 END, \
     owner = CASE WHEN cancel_requested THEN owner END, \
     lease_until = NULL, progress = coalesce($3, progress) \
     WHERE id = $4::uuid AND status = 'running' AND owner = $5 AND attempts = $6 \
     RETURNING status";

/// Binds as [`COMPLETE_SQL`], with $1 unused (NULL).
const CANCEL_SQL: &str = "UPDATE llmjobs_jobs SET status = 'cancelled', \
     completed_at = $2, lease_until = NULL, progress = coalesce($3, progress), \
     result = coalesce($1, result) \
     WHERE id = $4::uuid AND status = 'running' AND owner = $5 AND attempts = $6 \
     RETURNING status";

/// Which attempt of which job an outcome is for.
pub(super) struct Attempt<'a> {
    pub(super) id: JobId,
    pub(super) owner: &'a str,
    pub(super) attempt: u32,
}

/// Records how one attempt ended; the state the job is in now, or `None` when the row was no
/// longer that attempt's.
pub(super) async fn finish_job(
    pool: &PgPool,
    a: &Attempt<'_>,
    finish: &Finish,
    progress: Option<&str>,
    now: i64,
) -> Result<Option<JobState>> {
    let (sql, first, seventh): (&'static str, Option<&str>, Option<Extra>) = match finish {
        Finish::Completed { result } => (COMPLETE_SQL, Some(result), None),
        Finish::Failed {
            error,
            needs_review,
        } => (FAIL_SQL, Some(error), Some(Extra::Flag(*needs_review))),
        Finish::Retry { error, run_at } => (RETRY_SQL, Some(error), Some(Extra::Time(*run_at))),
        Finish::Cancelled => (CANCEL_SQL, None, None),
    };
    let attempt = i32::try_from(a.attempt).unwrap_or(i32::MAX);
    let mut query = sqlx::query_as::<_, (String,)>(sql)
        .bind(first)
        .bind(now)
        .bind(progress)
        .bind(a.id.to_string())
        .bind(a.owner)
        .bind(attempt);
    query = match seventh {
        Some(Extra::Flag(flag)) => query.bind(flag),
        Some(Extra::Time(time)) => query.bind(time),
        None => query,
    };
    let status = query.fetch_optional(pool).await?;
    status
        .map(|(status,)| {
            status.parse().map_err(|reason| Error::CorruptRow {
                id: a.id.to_string(),
                reason,
            })
        })
        .transpose()
}

/// The seventh bound value of an outcome's statement.
enum Extra {
    Flag(bool),
    Time(i64),
}
