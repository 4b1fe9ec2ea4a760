//! The usage ledger and the completion cache.

use sqlx::{PgConnection, PgPool, Row};

use crate::JobId;
use crate::Result;
use crate::store::usage::{Dialect, LEDGER_COLUMNS, Param, aggregate_sql, count, int};
use crate::store::{CacheEntry, LedgerEntry, NewJob};
use crate::usage::{UsageFilter, UsageGroup};

const POSTGRES: Dialect = Dialect {
    placeholder: |n| format!("${n}"),
    day: "to_char(to_timestamp(at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    sum: |expr| format!("SUM({expr})::BIGINT"),
    null_text: "NULL::TEXT",
    job_id_is: |p| format!("job_id = {p}::text::uuid"),
};

/// Appends rows to the ledger, in one statement.
pub(super) async fn record<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    entries: &[LedgerEntry],
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut builder =
        sqlx::QueryBuilder::new(format!("INSERT INTO llmjobs_llm_usage ({LEDGER_COLUMNS}) "));
    builder.push_values(entries, |mut row, e| {
        row.push_bind(e.job_id.to_string())
            .push_unseparated("::uuid")
            .push_bind(&e.job_name)
            .push_bind(&e.model)
            .push_bind(&e.provider)
            .push_bind(int(e.input_tokens))
            .push_bind(int(e.output_tokens))
            .push_bind(int(e.cache_read_tokens))
            .push_bind(int(e.cache_write_tokens))
            .push_bind(e.cost_usd)
            .push_bind(int(e.latency_ms))
            .push_bind(e.outcome.as_str())
            .push_bind(&e.error_kind)
            .push_bind(e.at);
    });
    builder.build().execute(executor).await?;
    Ok(())
}

/// The sums `filter` asks for. A schema from before the ledger has none.
pub(crate) async fn aggregate(pool: &PgPool, filter: &UsageFilter) -> Result<Vec<UsageGroup>> {
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('llmjobs_llm_usage')::text")
            .fetch_one(pool)
            .await?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let (sql, params) = aggregate_sql(filter, &POSTGRES);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for p in params {
        query = match p {
            Param::Int(n) => query.bind(n),
            Param::Text(s) => query.bind(s),
        };
    }
    let rows = query.fetch_all(pool).await?;
    let mut groups = Vec::with_capacity(rows.len());
    for row in &rows {
        let n = |i: usize| row.try_get::<Option<i64>, _>(i).map(count);
        let group = UsageGroup {
            model: row.try_get(0)?,
            job_name: row.try_get(1)?,
            day: row.try_get(2)?,
            calls: n(3)?,
            jobs: n(4)?,
            errors: n(5)?,
            cache_hits: n(6)?,
            input_tokens: n(7)?,
            output_tokens: n(8)?,
            cache_read_tokens: n(9)?,
            cache_write_tokens: n(10)?,
            cost_usd: row.try_get::<Option<f64>, _>(11)?.unwrap_or(0.0),
            unpriced_calls: n(12)?,
            latency_ms: n(13)?,
        };
        if group.calls > 0 {
            groups.push(group);
        }
    }
    Ok(groups)
}

/// The cached answer under `key`, unless it expired by `now`.
pub(super) async fn cached(pool: &PgPool, key: &str, now: i64) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT response FROM llmjobs_llm_cache WHERE key = $1 AND expires_at > $2",
    )
    .bind(key)
    .bind(now)
    .fetch_optional(pool)
    .await?)
}

/// Puts an answer in the cache (replacing any under its key), removing expired ones.
pub(super) async fn cache(pool: &PgPool, entry: &CacheEntry, now: i64) -> Result<()> {
    sqlx::query("DELETE FROM llmjobs_llm_cache WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO llmjobs_llm_cache (key, model, response, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO UPDATE SET model = EXCLUDED.model, \
         response = EXCLUDED.response, created_at = EXCLUDED.created_at, \
         expires_at = EXCLUDED.expires_at",
    )
    .bind(&entry.key)
    .bind(&entry.model)
    .bind(&entry.response)
    .bind(now)
    .bind(entry.expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Keeps the budgets that calls set on `jobs` beside them (in the transaction that inserts
/// them). A job not inserted (its idempotency key was held) has no row to keep one for.
pub(super) async fn insert_budgets(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<()> {
    for job in jobs {
        if let Some(budget) = &job.budget {
            sqlx::query(
                "INSERT INTO llmjobs_job_budgets (job_id, budget) \
                 SELECT $1::text::uuid, $2 WHERE EXISTS \
                 (SELECT 1 FROM llmjobs_jobs WHERE id = $1::text::uuid)",
            )
            .bind(job.id.to_string())
            .bind(budget)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// The budget a call set on job `id`.
pub(super) async fn job_budget(pool: &PgPool, id: JobId) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT budget FROM llmjobs_job_budgets WHERE job_id = $1::text::uuid")
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?,
    )
}
