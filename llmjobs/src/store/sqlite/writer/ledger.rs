//! Writes of the usage ledger and the completion cache.

use rusqlite::Connection;

use super::{Reply, budget, execute};
use crate::Result;
use crate::store::budget::BudgetClaim;
use crate::store::usage::{LEDGER_COLUMNS, int};
use crate::store::{CacheEntry, LedgerEntry, NewJob};

/// A write to the ledger or the cache.
#[derive(Debug)]
#[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
pub(in crate::store::sqlite) enum LlmWrite {
    /// Rows of the usage ledger.
    Record(Vec<LedgerEntry>),
    /// An answer for the completion cache (replacing any under its key); expired answers are
    /// removed on the way.
    Cache(CacheEntry),
    /// A call's budget reservation, if it fits.
    Reserve(BudgetClaim),
    /// A budget reservation's lease, extended.
    Renew { id: String, lease_ms: i64 },
    /// A budget reservation, replaced by the ledger rows of what was spent.
    Settle {
        id: String,
        entries: Vec<LedgerEntry>,
    },
}

pub(super) fn apply(conn: &Connection, write: &LlmWrite, now: i64) -> Result<Reply> {
    match write {
        LlmWrite::Record(entries) => record(conn, entries)?,
        LlmWrite::Reserve(claim) => return budget::reserve(conn, claim, now).map(Reply::Budget),
        LlmWrite::Renew { id, lease_ms } => budget::renew(conn, id, now + lease_ms)?,
        LlmWrite::Settle { id, entries } => {
            budget::release(conn, id)?;
            record(conn, entries)?;
        }
        LlmWrite::Cache(entry) => {
            execute(
                conn,
                "DELETE FROM llmjobs_llm_cache WHERE expires_at <= ?1",
                [now],
            )?;
            execute(
                conn,
                "INSERT OR REPLACE INTO llmjobs_llm_cache \
                 (key, model, response, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    entry.key,
                    entry.model,
                    entry.response,
                    now,
                    entry.expires_at
                ],
            )?;
        }
    }
    Ok(Reply::Done)
}

fn record(conn: &Connection, entries: &[LedgerEntry]) -> Result<()> {
    let sql = format!(
        "INSERT INTO llmjobs_llm_usage ({LEDGER_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    );
    let mut insert = conn.prepare_cached(&sql)?;
    for e in entries {
        insert.execute(rusqlite::params![
            e.job_id.to_string(),
            e.job_name,
            e.model,
            e.provider,
            int(e.input_tokens),
            int(e.output_tokens),
            int(e.cache_read_tokens),
            int(e.cache_write_tokens),
            e.cost_usd,
            int(e.latency_ms),
            e.outcome.as_str(),
            e.error_kind,
            e.at,
        ])?;
    }
    Ok(())
}

/// Keeps the budgets that calls set on `jobs` beside them (in the transaction that inserts
/// them).
pub(super) fn insert_budgets<'a>(
    conn: &Connection,
    jobs: impl Iterator<Item = &'a NewJob>,
) -> Result<()> {
    for job in jobs {
        if let Some(budget) = &job.budget {
            execute(
                conn,
                "INSERT INTO llmjobs_job_budgets (job_id, budget) VALUES (?1, ?2)",
                rusqlite::params![job.id.to_string(), budget],
            )?;
        }
    }
    Ok(())
}
