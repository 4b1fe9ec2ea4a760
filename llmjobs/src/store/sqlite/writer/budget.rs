//! Budget reservations on SQLite. They go through the writer: its transactions hold the
//! database's write lock (`BEGIN IMMEDIATE`), so every reservation, of this process or another
//! on the file, reads the spend and inserts its row while no other can, and a reservation is
//! as durable as the ledger row that replaces it.

use rusqlite::{Connection, params};

use super::execute;
use crate::Result;
use crate::store::budget::{BudgetClaim, BudgetDecision, Spender, Spent, decide};
use crate::store::usage::{count, int};

pub(super) fn reserve(conn: &Connection, claim: &BudgetClaim, now: i64) -> Result<BudgetDecision> {
    execute(
        conn,
        "DELETE FROM llmjobs_budget_reservations WHERE expires_at <= ?1",
        [now],
    )?;
    let spent = claim
        .budgets
        .iter()
        .map(|(spender, _)| spent(conn, spender))
        .collect::<Result<Vec<_>>>()?;
    let decision = decide(claim, &spent);
    if let BudgetDecision::Reserved(id) = &decision {
        execute(
            conn,
            "INSERT INTO llmjobs_budget_reservations \
             (id, job_id, provider, cost_usd, tokens, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                claim.job_id.to_string(),
                claim.provider,
                claim.cost_usd,
                int(claim.tokens),
                now + claim.lease_ms
            ],
        )?;
    }
    Ok(decision)
}

/// What the ledger and the (unexpired: the expired ones were just deleted) reservations hold
/// for `spender`.
fn spent(conn: &Connection, spender: &Spender) -> Result<Spent> {
    let sums = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<(f64, u64)> {
        let (usd, tokens): (Option<f64>, Option<i64>) = conn
            .prepare_cached(sql)?
            .query_row(params, |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((usd.unwrap_or(0.0), count(tokens)))
    };
    let ((cost_usd, tokens), (held_usd, held_tokens)) = match spender {
        Spender::Job(id) => {
            let id = id.to_string();
            (
                sums(
                    "SELECT SUM(cost_usd), SUM(input_tokens + output_tokens) \
                     FROM llmjobs_llm_usage WHERE job_id = ?1",
                    &[&id],
                )?,
                sums(
                    "SELECT SUM(cost_usd), SUM(tokens) \
                     FROM llmjobs_budget_reservations WHERE job_id = ?1",
                    &[&id],
                )?,
            )
        }
        Spender::Provider { name, since } => (
            sums(
                "SELECT SUM(cost_usd), SUM(input_tokens + output_tokens) \
                 FROM llmjobs_llm_usage WHERE provider = ?1 AND at >= ?2",
                &[name, since],
            )?,
            sums(
                "SELECT SUM(cost_usd), SUM(tokens) \
                 FROM llmjobs_budget_reservations WHERE provider = ?1",
                &[name],
            )?,
        ),
    };
    Ok(Spent {
        cost_usd,
        tokens,
        held_usd,
        held_tokens,
    })
}

pub(super) fn renew(conn: &Connection, id: &str, expires_at: i64) -> Result<()> {
    execute(
        conn,
        "UPDATE llmjobs_budget_reservations SET expires_at = ?2 WHERE id = ?1",
        params![id, expires_at],
    )?;
    Ok(())
}

pub(super) fn release(conn: &Connection, id: &str) -> Result<()> {
    execute(
        conn,
        "DELETE FROM llmjobs_budget_reservations WHERE id = ?1",
        [id],
    )?;
    Ok(())
}
