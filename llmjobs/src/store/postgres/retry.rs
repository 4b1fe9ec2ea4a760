//! Putting a failed or cancelled job back to work.

use sqlx::PgConnection;

use crate::store::RetryEffect;
use crate::{Error, JobId, Result};

/// Makes a failed or cancelled job pending again, due now, with a fresh attempt budget; the
/// run that ended is appended to its `earlier_runs`. Its journal is kept (a retry replays the
/// steps already paid for) unless `clear_journal`.
pub(super) async fn retry(
    conn: &mut PgConnection,
    id: JobId,
    clear_journal: bool,
    now: i64,
) -> Result<RetryEffect> {
    let id = id.to_string();
    let changed = sqlx::query(
        "UPDATE llmjobs_jobs SET \
         earlier_runs = coalesce(earlier_runs, '[]'::jsonb) || jsonb_build_array( \
             jsonb_build_object('state', status, 'attempts', attempts, 'error', error, \
             'needs_review', needs_review, 'ended_at_ms', completed_at)), \
         status = 'pending', attempts = 0, error = NULL, result = NULL, needs_review = false, \
         cancel_requested = false, owner = NULL, lease_until = NULL, completed_at = NULL, \
         run_at = $2 \
         WHERE id = $1::uuid AND (status = 'failed' OR status = 'cancelled')",
    )
    .bind(&id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 1 {
        if clear_journal {
            sqlx::query("DELETE FROM llmjobs_steps WHERE job_id = $1::uuid")
                .bind(&id)
                .execute(&mut *conn)
                .await?;
        }
        return Ok(RetryEffect::Retried);
    }
    let status: Option<(String,)> =
        sqlx::query_as("SELECT status FROM llmjobs_jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_optional(&mut *conn)
            .await?;
    match status {
        None => Ok(RetryEffect::NotFound),
        Some((status,)) => status
            .parse()
            .map(RetryEffect::NotRetryable)
            .map_err(|reason| Error::CorruptRow { id, reason }),
    }
}
