//! Deleting old finished jobs and their journals, a bounded chunk per statement, so a prune of
//! a million jobs never holds many row locks at once nor a long transaction. (PostgreSQL gives
//! the space back by itself: autovacuum, tuned per table by the migrations.)

use sqlx::PgPool;

use crate::Result;

/// Jobs deleted per statement.
pub(super) const PRUNE_CHUNK: u32 = 500;

/// Deletes up to `limit` of the jobs that ended before `before`, oldest first, with their
/// steps; returns how many jobs. Rows another transaction holds are left for the next chunk.
pub(super) async fn prune_chunk(pool: &PgPool, before: i64, limit: u32) -> Result<u64> {
    let deleted = sqlx::query(
        "WITH doomed AS (SELECT id FROM llmjobs_jobs WHERE completed_at <= $1 \
             AND status <> 'pending' AND status <> 'running' \
             ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
         steps AS (DELETE FROM llmjobs_steps WHERE job_id IN (SELECT id FROM doomed)), \
         budgets AS (DELETE FROM llmjobs_job_budgets WHERE job_id IN (SELECT id FROM doomed)) \
         DELETE FROM llmjobs_jobs WHERE id IN (SELECT id FROM doomed)",
    )
    .bind(before)
    .bind(i64::from(limit))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(deleted)
}
