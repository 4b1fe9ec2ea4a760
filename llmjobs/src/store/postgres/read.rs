//! Reads: one job, counts, the owners of running jobs, cancel requests, a journal.

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::store::{JobRow, StepRecord};
use crate::{JobId, Result};

/// The columns [`job_row`] reads, in its order.
pub(super) const JOB_ROW_COLUMNS: &str = "id::text, name, status, result, error, progress, \
     priority, concurrency_key, attempts, max_attempts, owner, cancel_requested, needs_review, \
     run_at, created_at, started_at, completed_at, idempotency_key, earlier_runs::text, \
     attempt_errors::text";

/// Reads a row selected with [`JOB_ROW_COLUMNS`]. PostgreSQL enforces the column types, so a
/// row cannot hold a value of the wrong type as a SQLite row can.
pub(super) fn job_row(row: &PgRow) -> Result<JobRow> {
    Ok(JobRow {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        status: row.try_get(2)?,
        result: row.try_get(3)?,
        error: row.try_get(4)?,
        progress: row.try_get(5)?,
        priority: i64::from(row.try_get::<i32, _>(6)?),
        concurrency_key: row.try_get(7)?,
        attempts: i64::from(row.try_get::<i32, _>(8)?),
        max_attempts: i64::from(row.try_get::<i32, _>(9)?),
        owner: row.try_get(10)?,
        cancel_requested: i64::from(row.try_get::<bool, _>(11)?),
        needs_review: i64::from(row.try_get::<bool, _>(12)?),
        run_at: row.try_get(13)?,
        created_at: row.try_get(14)?,
        started_at: row.try_get(15)?,
        completed_at: row.try_get(16)?,
        idempotency_key: row.try_get(17)?,
        earlier_runs: row.try_get(18)?,
        attempt_errors: row.try_get(19)?,
        problems: Vec::new(),
    })
}

pub(super) async fn get(pool: &PgPool, id: JobId) -> Result<Option<JobRow>> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!("SELECT {JOB_ROW_COLUMNS} FROM llmjobs_jobs WHERE id = $1::text::uuid")
    });
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(job_row).transpose()
}

pub(super) async fn counts(pool: &PgPool) -> Result<Vec<(String, String, u64)>> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT name, status, sum(n)::int8 FROM llmjobs_counts GROUP BY name, status \
             HAVING sum(n) <> 0",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, status, n)| (name, status, n.unsigned_abs()))
        .collect())
}

pub(super) async fn running_owners(pool: &PgPool, except: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT owner FROM llmjobs_jobs \
         WHERE status = 'running' AND owner IS NOT NULL AND owner <> $1",
    )
    .bind(except)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(owner,)| owner).collect())
}

pub(super) async fn cancel_requests(pool: &PgPool, owner: &str) -> Result<Vec<JobId>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id::text FROM llmjobs_jobs \
         WHERE status = 'running' AND owner = $1 AND cancel_requested",
    )
    .bind(owner)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().filter_map(|(id,)| id.parse().ok()).collect())
}

pub(super) async fn load_steps(pool: &PgPool, id: JobId) -> Result<Vec<StepRecord>> {
    let rows: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT seq, name, output FROM llmjobs_steps WHERE job_id = $1::text::uuid ORDER BY seq",
    )
    .bind(id.to_string())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, name, output)| StepRecord {
            seq: u32::try_from(seq).unwrap_or(0),
            name,
            output,
        })
        .collect())
}
