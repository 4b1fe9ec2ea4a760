//! A batch in one statement, committed on its own: one round trip for the lot.
//!
//! Most batches need no decision between statements: their jobs have no idempotency key to look
//! up, no limit to count under its lock, no budget to record. Such a batch goes out as one
//! statement outside any transaction block, so PostgreSQL commits it as it ends (a commit as
//! durable as any, `synchronous_commit` as the server has it): no `BEGIN`, no `COMMIT`, one
//! round trip instead of five. The statement decides what a transaction would have decided
//! between its statements: a job handed off to this worker goes in running unless a due job of
//! its priority or higher waits (it would overtake it), as in [`enqueue::insert_jobs`]; and the
//! counter rows a batch of inserts and outcomes changes are locked first, in one order, as
//! `lock_counters` does.

use std::sync::LazyLock;

use sqlx::{PgPool, Row as _};

use super::super::enqueue::{self, Rows};
use super::super::finish::{self, Columns, Outcome};
use super::Write;
use crate::status::JobState;
use crate::store::{Enqueued, NewJob};
use crate::{Error, Result};

/// Whether every write of `batch` can go out in one statement.
pub(super) fn is_plain(batch: &[Write]) -> bool {
    batch.iter().all(|write| match write {
        Write::Enqueue { jobs, .. } => jobs.iter().all(is_plain_job),
        Write::Finish { .. } => true,
    })
}

/// A job whose insert needs no decision made in Rust: no idempotency key, no limit its
/// hand-off counts against, no budget.
fn is_plain_job(job: &NewJob) -> bool {
    job.idempotency_key.is_none()
        && job.budget.is_none()
        && job
            .claimed_by
            .as_ref()
            .is_none_or(|claim| enqueue::limit_locks(job, claim).is_empty())
}

/// The insert's parameters: [`Rows`]' 15 columns, then `now`; the outcomes' come after them.
const INSERT_PARAMS: usize = 16;

/// The highest priority of the due jobs waiting, if any (`$16`: now).
const TOP_WAITING: &str = "top AS (SELECT priority FROM llmjobs_jobs \
     WHERE status = 'pending' AND run_at <= $16 ORDER BY priority DESC, run_at, id LIMIT 1)";

/// Inserts [`Rows`] pushed as running when handed off: each goes in running unless a due job of
/// its priority or higher waits (`top`), else pending with no owner.
const INSERT: &str = "inserted AS (INSERT INTO llmjobs_jobs (id, name, status, args, priority, \
     concurrency_key, key_limit, max_attempts, run_at, created_at, owner, attempts, started_at, \
     lease_until, idempotency_key) \
     SELECT id, name, CASE WHEN runs THEN 'running' ELSE 'pending' END, args, priority, \
         concurrency_key, key_limit, max_attempts, run_at, created_at, \
         CASE WHEN runs THEN owner END, CASE WHEN runs THEN attempts ELSE 0 END, \
         CASE WHEN runs THEN started_at END, CASE WHEN runs THEN lease_until END, \
         idempotency_key \
     FROM (SELECT u.*, u.status = 'running' \
             AND NOT coalesce((SELECT priority FROM top) >= u.priority, false) AS runs \
         FROM unnest($1::text[]::uuid[], $2::text[], $3::text[], $4::text[], $5::int4[], \
             $6::text[], $7::int4[], $8::int4[], $9::int8[], $10::int8[], $11::text[], \
             $12::int4[], $13::int8[], $14::int8[], $15::text[]) \
         AS u(id, name, status, args, priority, concurrency_key, key_limit, max_attempts, \
             run_at, created_at, owner, attempts, started_at, lease_until, idempotency_key)) \
         AS u \
     RETURNING id::text, status)";

/// A batch of inserts only: `('i', id, status)` per job.
static INSERT_SQL: LazyLock<String> =
    LazyLock::new(|| format!("WITH {TOP_WAITING}, {INSERT} SELECT 'i', id, status FROM inserted"));

/// A batch of inserts and outcomes: `('i', id, status)` per job and `('f', id, status)` per
/// changed outcome. The counter rows either may change are locked first, counts then keys,
/// each in order: the statement's two triggers would otherwise take them in two passes, and
/// two batches (or a batch and a claim) could each hold a row the other needs next. The
/// outcomes' condition on `locked` is evaluated once, before any row changes, and the triggers
/// run after the whole statement.
static INSERT_AND_FINISH_SQL: LazyLock<String> = LazyLock::new(|| {
    let ended = INSERT_PARAMS + 1;
    let finish = shift_params(finish::FINISH_MANY_SQL, INSERT_PARAMS).replacen(
        "WHERE j.id = f.id",
        "WHERE (SELECT n FROM locked) >= 0 AND j.id = f.id",
        1,
    );
    format!(
        "WITH {TOP_WAITING}, \
         ended AS (SELECT name, concurrency_key FROM llmjobs_jobs \
             WHERE id = ANY(${ended}::text[]::uuid[])), \
         counts AS (SELECT 1 FROM llmjobs_counts WHERE slot = llmjobs_counter_slot() \
             AND (name = ANY($2::text[]) OR name IN (SELECT name FROM ended)) \
             ORDER BY name, status FOR UPDATE), \
         keys AS (SELECT 1 FROM llmjobs_running_keys WHERE slot = llmjobs_counter_slot() \
             AND (concurrency_key = ANY($6::text[]) \
                 OR concurrency_key IN (SELECT concurrency_key FROM ended)) \
             ORDER BY concurrency_key FOR UPDATE), \
         locked AS (SELECT (SELECT count(*) FROM counts) + (SELECT count(*) FROM keys) AS n), \
         {INSERT}, \
         finished AS ({finish}) \
         SELECT 'i', id, status FROM inserted UNION ALL SELECT 'f', id, status FROM finished"
    )
});

/// `sql` with every parameter `$n` renamed `$(n + by)`.
fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

/// Writes `batch` (plain, see [`is_plain`]) in one statement on a connection of `pool`, which
/// commits it: what each job's insert did, in the order of the batch's jobs, and each
/// outcome's state, in the order of its outcomes.
pub(super) async fn write(
    pool: &PgPool,
    batch: &[Write],
    now: i64,
) -> Result<(Vec<Enqueued>, Vec<Option<JobState>>)> {
    let mut rows = Rows::default();
    let mut ids = Vec::new();
    let mut outcomes: Vec<&Outcome> = Vec::new();
    for write in batch {
        match write {
            Write::Enqueue { jobs, .. } => {
                for job in jobs {
                    rows.push(job, job.claimed_by.is_some());
                    ids.push(job.id);
                }
            }
            Write::Finish { outcome, .. } => outcomes.push(outcome),
        }
    }
    if rows.is_empty() {
        if outcomes.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let returned = Columns::of(&outcomes)
            .bind(sqlx::query(finish::FINISH_MANY_SQL), now)
            .fetch_all(pool)
            .await?;
        let changed = returned
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<(String, String)>>>()?;
        return Ok((Vec::new(), finish::states(&outcomes, changed)?));
    }
    let query = if outcomes.is_empty() {
        rows.bind(sqlx::query(INSERT_SQL.as_str())).bind(now)
    } else {
        let query = rows
            .bind(sqlx::query(INSERT_AND_FINISH_SQL.as_str()))
            .bind(now);
        Columns::of(&outcomes).bind(query, now)
    };
    let returned = query.fetch_all(pool).await?;
    let mut running = std::collections::HashMap::with_capacity(ids.len());
    let mut changed = Vec::with_capacity(outcomes.len());
    for row in &returned {
        let kind: String = row.try_get(0)?;
        let id: String = row.try_get(1)?;
        let status: String = row.try_get(2)?;
        if kind == "i" {
            running.insert(id, status == "running");
        } else {
            changed.push((id, status));
        }
    }
    let enqueued = ids
        .iter()
        .map(|id| match running.get(&id.to_string()) {
            Some(&running) => Ok(Enqueued::Inserted { running }),
            None => Err(Error::Database(
                format!("job {id} was not inserted, and no error said why").into(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((enqueued, finish::states(&outcomes, changed)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcomes_parameters_follow_the_inserts() {
        assert_eq!(
            shift_params("a = $1 AND b = ANY($10::text[]) AND c = '$'", 16),
            "a = $17 AND b = ANY($26::text[]) AND c = '$'"
        );
        let sql = INSERT_AND_FINISH_SQL.as_str();
        assert!(sql.contains("$16 ORDER BY") && sql.contains("$26"), "{sql}");
        assert!(!sql.contains("$27"), "{sql}");
        assert!(sql.contains("WHERE (SELECT n FROM locked) >= 0 AND j.id = f.id"));
    }
}
