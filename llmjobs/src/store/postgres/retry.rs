//! Putting a failed or cancelled job back to work.

use sqlx::PgConnection;

use crate::status::JobState;
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
    // The row is locked before it is judged: an outcome landing meanwhile waits for this
    // transaction, so the state that decides is the state that is changed (or reported).
    let found: Option<(String,)> =
        sqlx::query_as("SELECT status FROM llmjobs_jobs WHERE id = $1::uuid FOR UPDATE")
            .bind(&id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((status,)) = found else {
        return Ok(RetryEffect::NotFound);
    };
    let state: JobState = status.parse().map_err(|reason| Error::CorruptRow {
        id: id.clone(),
        reason,
    })?;
    if !matches!(state, JobState::Failed | JobState::Cancelled) {
        return Ok(RetryEffect::NotRetryable(state));
    }
    sqlx::query(
        "UPDATE llmjobs_jobs SET \
         earlier_runs = coalesce(earlier_runs, '[]'::jsonb) || jsonb_build_array( \
             jsonb_build_object('state', status, 'attempts', attempts, 'error', error, \
             'needs_review', needs_review, 'ended_at_ms', completed_at, \
             'attempt_errors', coalesce(attempt_errors, '[]'::jsonb))), \
         attempt_errors = NULL, status = 'pending', attempts = 0, error = NULL, result = NULL, needs_review = false, \
         cancel_requested = false, owner = NULL, lease_until = NULL, completed_at = NULL, \
         run_at = $2 \
         WHERE id = $1::uuid",
    )
    .bind(&id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if clear_journal {
        sqlx::query("DELETE FROM llmjobs_steps WHERE job_id = $1::uuid")
            .bind(&id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(RetryEffect::Retried)
}
