//! Shared rate limits on PostgreSQL: exact across machines. A reservation is one short
//! transaction that locks its scopes' rows (in key order, so two reservations never deadlock)
//! and reads the database's clock, so workers whose clocks disagree still share one timeline.
//! Five round trips per reservation (`BEGIN` and `COMMIT` included), one per check-in, settle
//! or pause.

use std::time::Duration;

use sqlx::{PgPool, Row};

use crate::store::rate::{Bucket, RateDecision, RateDemand, RateSpent, RateStore, decide};
use crate::{Error, Result};

/// The database's clock in Unix milliseconds, spliced into the statements with `concat!`.
macro_rules! db_now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)"
    };
}

/// How often a reservation that loses a deadlock race runs again.
const CONFLICT_RETRIES: u32 = 5;

/// The shared rate limits of one process, on the store's pool.
pub(crate) struct PgRates {
    pool: PgPool,
}

impl PgRates {
    pub(crate) fn new(pool: PgPool) -> PgRates {
        PgRates { pool }
    }

    async fn try_reserve(&self, demand: &RateDemand) -> Result<RateDecision> {
        let mut keys: Vec<String> = demand.scopes.iter().map(|s| s.key.clone()).collect();
        keys.sort();
        keys.dedup();
        let mut tx = self.pool.begin().await?;
        sqlx::query(concat!(
            "WITH expired AS (DELETE FROM llmjobs_rate_leases
                WHERE scope = ANY($1) AND expires_at <= ",
            db_now_ms!(),
            ")
             INSERT INTO llmjobs_rate_buckets (scope) SELECT unnest($1::text[])
             ON CONFLICT (scope) DO NOTHING"
        ))
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(concat!(
            "SELECT scope, requests_tat, tokens_tat, input_tat, output_tat, paused_until,
                (SELECT count(*) FROM llmjobs_rate_leases l WHERE l.scope = b.scope) AS in_flight,
                ",
            db_now_ms!(),
            "::float8 AS now
             FROM llmjobs_rate_buckets b WHERE scope = ANY($1) ORDER BY scope FOR UPDATE"
        ))
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        let mut now = 0.0;
        let mut buckets = Vec::with_capacity(demand.scopes.len());
        for scope in &demand.scopes {
            let row = rows
                .iter()
                .find(|r| r.get::<&str, _>("scope") == scope.key)
                .ok_or_else(|| Error::Database(format!("no rate row for {}", scope.key).into()))?;
            now = row.try_get::<f64, _>("now")?;
            buckets.push(Bucket {
                tats: [
                    row.try_get("requests_tat")?,
                    row.try_get("tokens_tat")?,
                    row.try_get("input_tat")?,
                    row.try_get("output_tat")?,
                ],
                paused_until: row.try_get("paused_until")?,
                in_flight: row.try_get::<i64, _>("in_flight")? as u64,
            });
        }
        let start = match decide(demand, &mut buckets, now) {
            Ok(start) => start,
            Err(wait) => {
                tx.rollback().await?;
                return Ok(RateDecision::Wait {
                    ms: wait.ceil() as i64,
                });
            }
        };
        let lease = uuid::Uuid::new_v4().to_string();
        let column = |i: usize| buckets.iter().map(|b| b.tats[i]).collect::<Vec<f64>>();
        let interval = |f: fn(&crate::store::rate::Intervals) -> f64| {
            demand
                .scopes
                .iter()
                .map(|s| f(&s.intervals))
                .collect::<Vec<f64>>()
        };
        let scopes: Vec<&str> = demand.scopes.iter().map(|s| s.key.as_str()).collect();
        sqlx::query(
            "WITH updated AS (UPDATE llmjobs_rate_buckets b SET requests_tat = u.r,
                tokens_tat = u.t, input_tat = u.i, output_tat = u.o, request_ms = u.rm,
                token_ms = u.tm, input_ms = u.im, output_ms = u.om
             FROM unnest($1::text[], $2::float8[], $3::float8[], $4::float8[], $5::float8[],
                $6::float8[], $7::float8[], $8::float8[], $9::float8[])
                AS u(scope, r, t, i, o, rm, tm, im, om)
             WHERE b.scope = u.scope)
             INSERT INTO llmjobs_rate_leases (lease, scope, input_tokens, output_tokens, expires_at)
             SELECT $10, s, $11, $12, $13::float8::bigint + $14 FROM unnest($1::text[]) AS s",
        )
        .bind(&scopes)
        .bind(column(0))
        .bind(column(1))
        .bind(column(2))
        .bind(column(3))
        .bind(interval(|i| i.request))
        .bind(interval(|i| i.token))
        .bind(interval(|i| i.input))
        .bind(interval(|i| i.output))
        .bind(&lease)
        .bind(demand.input_tokens as i64)
        .bind(demand.output_tokens as i64)
        .bind(now)
        .bind(demand.lease_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RateDecision::Granted {
            lease,
            start_in_ms: start.ceil() as i64,
        })
    }
}

#[async_trait::async_trait]
impl RateStore for PgRates {
    async fn reserve(&self, demand: RateDemand) -> Result<RateDecision> {
        let mut tries = 0;
        loop {
            match self.try_reserve(&demand).await {
                Err(e) if super::is_conflict(&e) && tries < CONFLICT_RETRIES => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5)).await;
                }
                other => return other,
            }
        }
    }

    async fn check_in(&self, lease: String, lease_ms: i64) -> Result<i64> {
        let paused: i64 = sqlx::query_scalar(concat!(
            "WITH renewed AS (UPDATE llmjobs_rate_leases SET expires_at = ",
            db_now_ms!(),
            "::bigint + $2
                WHERE lease = $1 RETURNING scope)
             SELECT (coalesce(max(b.paused_until), 0) - ",
            db_now_ms!(),
            ")::bigint
             FROM llmjobs_rate_buckets b JOIN renewed r ON r.scope = b.scope"
        ))
        .bind(&lease)
        .bind(lease_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(paused.max(0))
    }

    async fn settle(&self, lease: String, spent: RateSpent) -> Result<()> {
        let (requests, input, output) = if spent.sent {
            (0.0, spent.input_tokens as i64, spent.output_tokens as i64)
        } else {
            (-1.0, 0, 0)
        };
        // The lease rows go first, as in a reservation, so the two lock in the same order.
        sqlx::query(
            "WITH gone AS (DELETE FROM llmjobs_rate_leases WHERE lease = $1
                RETURNING scope, input_tokens, output_tokens)
             UPDATE llmjobs_rate_buckets b SET
                requests_tat = requests_tat + $2 * request_ms,
                tokens_tat = tokens_tat + (($3 + $4) - (g.input_tokens + g.output_tokens)) * token_ms,
                input_tat = input_tat + ($3 - g.input_tokens) * input_ms,
                output_tat = output_tat + ($4 - g.output_tokens) * output_ms
             FROM gone g WHERE b.scope = g.scope",
        )
        .bind(&lease)
        .bind(requests)
        .bind(input)
        .bind(output)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn pause(&self, scope: String, ms: i64) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO llmjobs_rate_buckets (scope, paused_until)
             VALUES ($1, ",
            db_now_ms!(),
            "::bigint + $2)
             ON CONFLICT (scope) DO UPDATE
             SET paused_until = greatest(llmjobs_rate_buckets.paused_until, excluded.paused_until)"
        ))
        .bind(&scope)
        .bind(ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
