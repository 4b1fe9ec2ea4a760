//! Shared rate limits on SQLite: every process on the machine that opens the file takes turns on
//! its write lock for one short transaction per reservation.
//!
//! They run on a connection of their own, not through the writer thread: a reservation must not
//! wait behind a group commit's fsync, and losing the last moments of rate-limit state to a power
//! cut costs nothing (leases expire, budgets refill), so these commits are not synced.

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::SqliteTarget;
use crate::status::now_ms;
use crate::store::rate::{
    Bucket, RateDecision, RateDemand, RateSpent, RateStore, correction, decide,
};
use crate::{Durability, Error, Result};

/// The rate-limit connection of one process.
pub(crate) struct SqliteRates {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteRates {
    /// Opens the connection (the database is already migrated).
    pub(crate) fn open(target: &SqliteTarget) -> Result<SqliteRates> {
        let conn = target.connect(Durability::Relaxed, false)?;
        Ok(SqliteRates {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `work` in an immediate transaction on the blocking pool.
    async fn transaction<R: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = work(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|_| Error::Shutdown)?
    }
}

fn reserve(tx: &rusqlite::Transaction<'_>, demand: &RateDemand) -> rusqlite::Result<RateDecision> {
    let now = now_ms();
    let mut buckets = Vec::with_capacity(demand.scopes.len());
    for scope in &demand.scopes {
        tx.execute(
            "DELETE FROM llmjobs_rate_leases WHERE scope = ?1 AND expires_at <= ?2",
            params![scope.key, now],
        )?;
        let row = tx
            .query_row(
                "SELECT requests_tat, tokens_tat, input_tat, output_tat, paused_until,
                    (SELECT count(*) FROM llmjobs_rate_leases WHERE scope = ?1)
                 FROM llmjobs_rate_buckets WHERE scope = ?1",
                [&scope.key],
                |r| {
                    Ok(Bucket {
                        tats: [r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?],
                        paused_until: r.get(4)?,
                        in_flight: r.get::<_, i64>(5)? as u64,
                    })
                },
            )
            .optional()?;
        buckets.push(row.unwrap_or_default());
    }
    let start = match decide(demand, &mut buckets, now as f64) {
        Ok(start) => start,
        Err(wait) => {
            return Ok(RateDecision::Wait {
                ms: wait.ceil() as i64,
            });
        }
    };
    let lease = uuid::Uuid::new_v4().to_string();
    for (scope, bucket) in demand.scopes.iter().zip(&buckets) {
        let i = scope.intervals;
        tx.execute(
            "INSERT INTO llmjobs_rate_buckets (scope, requests_tat, tokens_tat, input_tat,
                output_tat, request_ms, token_ms, input_ms, output_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (scope) DO UPDATE SET requests_tat = excluded.requests_tat,
                tokens_tat = excluded.tokens_tat, input_tat = excluded.input_tat,
                output_tat = excluded.output_tat, request_ms = excluded.request_ms,
                token_ms = excluded.token_ms, input_ms = excluded.input_ms,
                output_ms = excluded.output_ms",
            params![
                scope.key,
                bucket.tats[0],
                bucket.tats[1],
                bucket.tats[2],
                bucket.tats[3],
                i.request,
                i.token,
                i.input,
                i.output
            ],
        )?;
        tx.execute(
            "INSERT INTO llmjobs_rate_leases (lease, scope, input_tokens, output_tokens,
                expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                lease,
                scope.key,
                demand.input_tokens as i64,
                demand.output_tokens as i64,
                now + demand.lease_ms
            ],
        )?;
    }
    Ok(RateDecision::Granted {
        lease,
        start_in_ms: start.ceil() as i64,
    })
}

fn settle(tx: &rusqlite::Transaction<'_>, lease: &str, spent: RateSpent) -> rusqlite::Result<()> {
    let rows: Vec<(String, i64, i64)> = tx
        .prepare(
            "SELECT scope, input_tokens, output_tokens FROM llmjobs_rate_leases WHERE lease = ?1",
        )?
        .query_map([lease], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (scope, input, output) in rows {
        let d = correction((input as u64, output as u64), spent);
        tx.execute(
            "UPDATE llmjobs_rate_buckets SET requests_tat = requests_tat + ?2 * request_ms,
                tokens_tat = tokens_tat + ?3 * token_ms, input_tat = input_tat + ?4 * input_ms,
                output_tat = output_tat + ?5 * output_ms
             WHERE scope = ?1",
            params![scope, d[0], d[1], d[2], d[3]],
        )?;
    }
    tx.execute("DELETE FROM llmjobs_rate_leases WHERE lease = ?1", [lease])?;
    Ok(())
}

#[async_trait::async_trait]
impl RateStore for SqliteRates {
    async fn reserve(&self, demand: RateDemand) -> Result<RateDecision> {
        self.transaction(move |tx| reserve(tx, &demand)).await
    }

    async fn check_in(&self, lease: String, lease_ms: i64) -> Result<i64> {
        self.transaction(move |tx| {
            let now = now_ms();
            tx.execute(
                "UPDATE llmjobs_rate_leases SET expires_at = ?2 WHERE lease = ?1",
                params![lease, now + lease_ms],
            )?;
            let paused: Option<i64> = tx.query_row(
                "SELECT max(b.paused_until) FROM llmjobs_rate_buckets b
                 JOIN llmjobs_rate_leases l ON l.scope = b.scope WHERE l.lease = ?1",
                [&lease],
                |r| r.get(0),
            )?;
            Ok((paused.unwrap_or(0) - now).max(0))
        })
        .await
    }

    async fn settle(&self, lease: String, spent: RateSpent) -> Result<()> {
        self.transaction(move |tx| settle(tx, &lease, spent)).await
    }

    async fn pause(&self, scope: String, ms: i64) -> Result<()> {
        self.transaction(move |tx| {
            tx.execute(
                "INSERT INTO llmjobs_rate_buckets (scope, paused_until) VALUES (?1, ?2)
                 ON CONFLICT (scope) DO UPDATE
                 SET paused_until = max(paused_until, excluded.paused_until)",
                params![scope, now_ms() + ms],
            )
        })
        .await
        .map(drop)
    }
}
