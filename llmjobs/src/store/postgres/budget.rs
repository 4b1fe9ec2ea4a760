//! Budget reservations on PostgreSQL: exact across machines. A reservation's transaction first
//! takes the advisory lock of each budget it counts against (a job's, a provider's), so the
//! reservations of one budget take turns, each reading the spend after the previous one
//! committed. Expiry runs on the database's clock, which every worker shares.

use sqlx::{PgConnection, Row};

use super::{locks, usage};
use crate::Result;
use crate::store::LedgerEntry;
use crate::store::budget::{BudgetClaim, BudgetDecision, Spender, Spent, decide};
use crate::store::usage::{count, int};

/// The database's clock in Unix milliseconds.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

pub(super) async fn reserve(
    conn: &mut PgConnection,
    claim: &BudgetClaim,
) -> Result<BudgetDecision> {
    let mut keys = claim
        .budgets
        .iter()
        .map(|(spender, _)| locks::budget(spender))
        .collect();
    locks::lock_all(conn, &mut keys).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM llmjobs_budget_reservations WHERE expires_at <= {DB_NOW_MS}"
    )))
    .execute(&mut *conn)
    .await?;
    let mut spent = Vec::with_capacity(claim.budgets.len());
    for (spender, _) in &claim.budgets {
        spent.push(spent_by(conn, spender).await?);
    }
    let decision = decide(claim, &spent);
    if let BudgetDecision::Reserved(id) = &decision {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO llmjobs_budget_reservations \
             (id, job_id, provider, cost_usd, tokens, expires_at) \
             VALUES ($1, $2::text::uuid, $3, $4, $5, {DB_NOW_MS} + $6)"
        )))
        .bind(id)
        .bind(claim.job_id.to_string())
        .bind(&claim.provider)
        .bind(claim.cost_usd)
        .bind(int(claim.tokens))
        .bind(claim.lease_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(decision)
}

/// What the ledger and the (unexpired: the expired ones were just deleted) reservations hold
/// for `spender`, in one statement.
async fn spent_by(conn: &mut PgConnection, spender: &Spender) -> Result<Spent> {
    let (spent, held) = match spender {
        Spender::Job(_) => ("job_id = $1::text::uuid", "job_id = $1::text::uuid"),
        Spender::Provider { .. } => ("provider = $1 AND at >= $2", "provider = $1"),
    };
    let sql = format!(
        "SELECT s.usd, s.tokens, h.usd, h.tokens FROM \
         (SELECT SUM(cost_usd)::float8 AS usd, SUM(input_tokens + output_tokens)::bigint AS tokens \
          FROM llmjobs_llm_usage WHERE {spent}) s, \
         (SELECT SUM(cost_usd)::float8 AS usd, SUM(tokens)::bigint AS tokens \
          FROM llmjobs_budget_reservations WHERE {held}) h"
    );
    let query = sqlx::query(sqlx::AssertSqlSafe(sql));
    let query = match spender {
        Spender::Job(id) => query.bind(id.to_string()),
        Spender::Provider { name, since } => query.bind(name).bind(*since),
    };
    let row = query.fetch_one(&mut *conn).await?;
    let usd = |i: usize| -> Result<f64> { Ok(row.try_get::<Option<f64>, _>(i)?.unwrap_or(0.0)) };
    Ok(Spent {
        cost_usd: usd(0)?,
        tokens: count(row.try_get(1)?),
        held_usd: usd(2)?,
        held_tokens: count(row.try_get(3)?),
    })
}

pub(super) async fn renew(conn: &mut PgConnection, id: &str, lease_ms: i64) -> Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE llmjobs_budget_reservations SET expires_at = {DB_NOW_MS} + $2 WHERE id = $1"
    )))
    .bind(id)
    .bind(lease_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn settle(
    conn: &mut PgConnection,
    id: &str,
    entries: &[LedgerEntry],
) -> Result<()> {
    sqlx::query("DELETE FROM llmjobs_budget_reservations WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    usage::record(&mut *conn, entries).await
}
