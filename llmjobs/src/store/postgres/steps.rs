//! Appending to a job's journal of steps, and saving its latest progress: both fenced by the
//! attempt, so a late write never lands on a later attempt or a finished job.

use sqlx::PgPool;

use crate::store::StepRecord;
use crate::{JobId, Result};

/// Records a step of attempt `attempt` of a job that `owner` still runs; `false` when the job
/// is not that attempt's any more or the step is recorded already.
pub(super) async fn append_step(
    pool: &PgPool,
    id: JobId,
    owner: &str,
    attempt: u32,
    step: &StepRecord,
    now: i64,
) -> Result<bool> {
    let changed = sqlx::query(
        "INSERT INTO llmjobs_steps (job_id, seq, name, output, created_at) \
         SELECT $1::uuid, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM llmjobs_jobs \
         WHERE id = $1::uuid AND status = 'running' AND owner = $6 AND attempts = $7) \
         ON CONFLICT (job_id, seq) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(i32::try_from(step.seq).unwrap_or(i32::MAX))
    .bind(&step.name)
    .bind(&step.output)
    .bind(now)
    .bind(owner)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Stores `progress` on the job while attempt `attempt` of `owner` runs it.
pub(super) async fn save_progress(
    pool: &PgPool,
    id: JobId,
    owner: &str,
    attempt: u32,
    progress: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE llmjobs_jobs SET progress = $1 \
         WHERE id = $2::uuid AND status = 'running' AND owner = $3 AND attempts = $4",
    )
    .bind(progress)
    .bind(id.to_string())
    .bind(owner)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .execute(pool)
    .await?;
    Ok(())
}
