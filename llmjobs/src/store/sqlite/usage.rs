//! Reads of the usage ledger and the completion cache.

use rusqlite::{Connection, OptionalExtension};

use super::query_all;
use crate::store::usage::{Dialect, Param, aggregate_sql, count};
use crate::usage::{UsageFilter, UsageGroup};
use crate::{JobId, Result};

const SQLITE: Dialect = Dialect {
    placeholder: |n| format!("?{n}"),
    day: "date(at / 1000, 'unixepoch')",
    sum: |expr| format!("SUM({expr})"),
    null_text: "NULL",
    job_id_is: |p| format!("job_id = {p}"),
};

/// The sums `filter` asks for. A database from before the ledger has none.
pub(super) fn aggregate(conn: &Connection, filter: &UsageFilter) -> Result<Vec<UsageGroup>> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'llmjobs_llm_usage'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let (sql, params) = aggregate_sql(filter, &SQLITE);
    let params: Vec<Box<dyn rusqlite::ToSql>> = params
        .into_iter()
        .map(|p| -> Box<dyn rusqlite::ToSql> {
            match p {
                Param::Int(n) => Box::new(n),
                Param::Text(s) => Box::new(s),
            }
        })
        .collect();
    let groups = query_all(
        conn,
        &sql,
        rusqlite::params_from_iter(params.iter()),
        |row| {
            Ok(UsageGroup {
                model: row.get(0)?,
                job_name: row.get(1)?,
                day: row.get(2)?,
                calls: count(row.get(3)?),
                jobs: count(row.get(4)?),
                errors: count(row.get(5)?),
                cache_hits: count(row.get(6)?),
                input_tokens: count(row.get(7)?),
                output_tokens: count(row.get(8)?),
                cache_read_tokens: count(row.get(9)?),
                cache_write_tokens: count(row.get(10)?),
                cost_usd: row.get::<_, Option<f64>>(11)?.unwrap_or(0.0),
                unpriced_calls: count(row.get(12)?),
                latency_ms: count(row.get(13)?),
            })
        },
    )?;
    Ok(groups.into_iter().filter(|g| g.calls > 0).collect())
}

/// The cached answer under `key`, unless it expired by `now`.
#[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
pub(super) fn cached(conn: &Connection, key: &str, now: i64) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT response FROM llmjobs_llm_cache WHERE key = ?1 AND expires_at > ?2",
        )?
        .query_row(rusqlite::params![key, now], |row| row.get(0))
        .optional()?)
}

/// The budget a call set on job `id`.
#[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
pub(super) fn job_budget(conn: &Connection, id: JobId) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT budget FROM llmjobs_job_budgets WHERE job_id = ?1")?
        .query_row([id.to_string()], |row| row.get(0))
        .optional()?)
}
