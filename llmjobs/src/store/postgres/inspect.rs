//! Reads without a runtime (see [`crate::Inspector`]): plain `SELECT`s on a small pool of its
//! own, no migration, no advisory lock. Reads take no row lock, so they never wait for the
//! application's writers nor hold them up.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use super::read::{JOB_ROW_COLUMNS, job_row};
use super::{PgTarget, list, read};
use crate::inspect::{Reader, RowWithArgs, SchemaRow, StepRow};
use crate::status::JobFilter;
use crate::{Durability, Error, JobId, Result};

/// Connections an inspector keeps: it reads one thing at a time.
const CONNECTIONS: u32 = 2;

/// How long a read waits for a connection (a server that does not answer).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A read-only view of a PostgreSQL job database.
pub(crate) struct PgReader {
    pool: PgPool,
}

impl PgReader {
    /// Connects, checking that the server answers.
    pub(crate) async fn open(url: &str, target: &PgTarget) -> Result<PgReader> {
        let options = target.connect_options(Durability::Full)?;
        // One connection first: a server that refuses, or a wrong password, is reported as it
        // is, at once, rather than as a pool that timed out retrying.
        let first = PgConnection::connect_with(&options)
            .await
            .map_err(|e| Error::Open {
                url: url.to_string(),
                source: Box::new(e),
            })?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(PgReader { pool })
    }
}

#[async_trait::async_trait]
impl Reader for PgReader {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn supported(&self) -> i64 {
        super::migrate::newest_version()
    }

    async fn schema(&self) -> Result<SchemaRow> {
        // The search path is llmjobs' schema: an unqualified name resolves there.
        let (exists,): (bool,) =
            sqlx::query_as("SELECT to_regclass('llmjobs_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        if !exists {
            return Ok(SchemaRow {
                version: None,
                failed: false,
            });
        }
        let (version, failed): (Option<i64>, Option<bool>) =
            sqlx::query_as("SELECT max(version), bool_or(NOT success) FROM llmjobs_migrations")
                .fetch_one(&self.pool)
                .await?;
        Ok(SchemaRow {
            version,
            failed: failed.unwrap_or(false),
        })
    }

    async fn get(&self, id: JobId) -> Result<Option<RowWithArgs>> {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!("SELECT {JOB_ROW_COLUMNS}, args FROM llmjobs_jobs WHERE id = $1::text::uuid")
        });
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let args: String = sqlx::Row::try_get(&row, 20)?;
        Ok(Some(RowWithArgs {
            row: job_row(&row)?,
            args,
        }))
    }

    async fn list(&self, filter: JobFilter) -> Result<Vec<RowWithArgs>> {
        let rows = list::list(&self.pool, &filter).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // The listing's own statement, then the arguments of the rows it returned.
        let ids: Vec<String> = rows.iter().map(|row| row.id.clone()).collect();
        let args: Vec<(String, String)> = sqlx::query_as(
            "SELECT id::text, args FROM llmjobs_jobs WHERE id = ANY($1::text[]::uuid[])",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let args: std::collections::HashMap<String, String> = args.into_iter().collect();
        Ok(rows
            .into_iter()
            .map(|row| RowWithArgs {
                args: args.get(&row.id).cloned().unwrap_or_default(),
                row,
            })
            .collect())
    }

    async fn counts(&self) -> Result<Vec<(String, String, u64)>> {
        read::counts(&self.pool).await
    }

    async fn steps(&self, id: JobId) -> Result<Vec<StepRow>> {
        let rows: Vec<(i32, String, i32, i64)> = sqlx::query_as(
            "SELECT seq, name, octet_length(output), created_at FROM llmjobs_steps \
             WHERE job_id = $1::text::uuid ORDER BY seq",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, name, size, created_at)| StepRow {
                seq: u32::try_from(seq).unwrap_or(0),
                name,
                size: u64::try_from(size).unwrap_or(0),
                created_at,
            })
            .collect())
    }

    async fn prunable(&self, before: i64) -> Result<u64> {
        // The condition of the prune itself (prune.rs), on the index of finished jobs.
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM llmjobs_jobs WHERE completed_at <= $1 \
             AND status <> 'pending' AND status <> 'running'",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.unsigned_abs())
    }

    async fn finished_since(&self, since: i64, limit: u32) -> Result<Vec<RowWithArgs>> {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "SELECT {JOB_ROW_COLUMNS}, args FROM llmjobs_jobs \
                 WHERE completed_at >= $1 ORDER BY completed_at DESC LIMIT $2"
            )
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RowWithArgs {
                    args: sqlx::Row::try_get(row, 20)?,
                    row: job_row(row)?,
                })
            })
            .collect()
    }

    async fn usage(&self, filter: crate::UsageFilter) -> Result<Vec<crate::UsageGroup>> {
        super::usage::aggregate(&self.pool, &filter).await
    }
}
