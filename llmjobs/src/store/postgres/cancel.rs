//! Cancelling a job: at once when pending, by request when running.

use sqlx::PgPool;

use crate::store::CancelEffect;
use crate::{Error, JobId, Result};

pub(super) async fn cancel(pool: &PgPool, id: JobId, now: i64) -> Result<CancelEffect> {
    let id = id.to_string();
    // One statement: a pending job is cancelled, a running one asked to stop; either way the
    // state it was found in comes back. A row that is neither is left as it is.
    let found: Option<(String,)> = sqlx::query_as(
        "WITH target AS (SELECT id, status FROM llmjobs_jobs WHERE id = $1::uuid FOR UPDATE), \
         changed AS (UPDATE llmjobs_jobs AS j SET \
             status = CASE WHEN t.status = 'pending' THEN 'cancelled' ELSE j.status END, \
             completed_at = CASE WHEN t.status = 'pending' THEN $2 ELSE j.completed_at END, \
             cancel_requested = j.cancel_requested OR t.status = 'running' \
             FROM target AS t WHERE j.id = t.id \
             AND (t.status = 'pending' OR t.status = 'running')) \
         SELECT status FROM target",
    )
    .bind(&id)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    match found {
        None => Ok(CancelEffect::NotFound),
        Some((status,)) if status == "pending" => Ok(CancelEffect::Cancelled),
        Some((status,)) if status == "running" => Ok(CancelEffect::Requested),
        Some((status,)) => status
            .parse()
            .map(CancelEffect::AlreadyFinal)
            .map_err(|reason| Error::CorruptRow { id, reason }),
    }
}
