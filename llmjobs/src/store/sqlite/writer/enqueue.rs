//! Inserting jobs, as multi-row INSERTs built for a few bucket sizes.

use std::sync::OnceLock;

use rusqlite::{Connection, OptionalExtension, ToSql};

use super::claim::{running_by_name, running_with_key};
use crate::Result;
use crate::store::{LocalClaim, NewJob};

/// Multi-row statements are built for these row counts, so a handful of prepared statements
/// serve every batch size.
const ROW_BUCKETS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// The statement for each bucket size, built once.
fn bucket_sql(
    cache: &'static OnceLock<Vec<String>>,
    rows: usize,
    build: fn(usize) -> String,
) -> &'static str {
    let cache = cache.get_or_init(|| ROW_BUCKETS.iter().map(|&n| build(n)).collect());
    let index = ROW_BUCKETS
        .iter()
        .position(|&n| n == rows)
        .expect("a bucket size");
    &cache[index]
}

/// Splits `items` into chunks whose sizes are bucket sizes, largest first.
fn buckets<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = *ROW_BUCKETS.iter().find(|&&n| n <= items.len())?;
        let (chunk, tail) = items.split_at(n);
        items = tail;
        Some(chunk)
    })
}

fn insert_sql(rows: usize) -> &'static str {
    static CACHE: OnceLock<Vec<String>> = OnceLock::new();
    bucket_sql(&CACHE, rows, |n| {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ");
        format!(
            "INSERT INTO llmjobs_jobs (id, name, status, args, priority, \
             concurrency_key, key_limit, max_attempts, run_at, created_at, \
             owner, attempts, started_at, lease_until) \
             VALUES {values}"
        )
    })
}

/// The values of one inserted row, in `insert_sql`'s column order.
struct InsertRow<'a> {
    id: String,
    job: &'a NewJob,
    status: &'static str,
    key_limit: Option<i64>,
    max_attempts: i64,
    owner: Option<&'a str>,
    attempts: i64,
    started_at: Option<i64>,
    lease_until: Option<i64>,
}

/// Inserts `jobs`; for each, whether it went in running under its claim. Jobs without limits
/// to check go in together, as multi-row INSERTs; a local claim under limits goes in alone
/// after them, running if its limits have room at that moment (the counters include every job
/// inserted before it in the transaction), else pending.
pub(super) fn insert_jobs(conn: &Connection, jobs: &[&NewJob]) -> Result<Vec<bool>> {
    let mut running: Vec<bool> = Vec::with_capacity(jobs.len());
    let mut rows: Vec<InsertRow<'_>> = Vec::with_capacity(jobs.len());
    let mut limited = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        match &job.claimed_by {
            Some(claim) if claim.is_limited() => {
                running.push(false);
                limited.push(i);
            }
            claim => {
                running.push(claim.is_some());
                rows.push(InsertRow::of(job, claim.is_some()));
            }
        }
    }
    insert_rows(conn, &rows)?;
    for i in limited {
        let job = jobs[i];
        let room = job
            .claimed_by
            .as_ref()
            .map_or(Ok(false), |claim| has_room(conn, job, claim))?;
        insert_rows(conn, &[InsertRow::of(job, room)])?;
        running[i] = room;
    }
    Ok(running)
}

/// Whether a job under these limits may start now: its limits have room, and no job queued
/// before it under the same limits would be overtaken.
fn has_room(conn: &Connection, job: &NewJob, claim: &LocalClaim) -> Result<bool> {
    let waiting: Option<i64> = if claim.global_limit.is_some() {
        conn.prepare_cached(
            "SELECT 1 FROM llmjobs_jobs WHERE status = 'pending' AND run_at <= ? LIMIT 1",
        )?
        .query_row([job.run_at], |row| row.get(0))
        .optional()?
    } else {
        conn.prepare_cached(
            "SELECT 1 FROM llmjobs_jobs WHERE name = ? AND status = 'pending' AND run_at <= ? \
             LIMIT 1",
        )?
        .query_row(rusqlite::params![job.name, job.run_at], |row| row.get(0))
        .optional()?
    };
    if waiting.is_some() {
        return Ok(false);
    }
    if let Some(limit) = claim.global_limit {
        let running: i64 = conn
            .prepare_cached(
                "SELECT coalesce(sum(n), 0) FROM llmjobs_counts WHERE status = 'running'",
            )?
            .query_row([], |row| row.get(0))?;
        if running >= i64::from(limit) {
            return Ok(false);
        }
    }
    if let Some(limit) = claim.name_limit {
        let running = running_by_name(conn)?.get(&job.name).copied().unwrap_or(0);
        if running >= limit {
            return Ok(false);
        }
    }
    if let (Some(limit), Some(key)) = (claim.key_limit, &job.concurrency_key)
        && running_with_key(conn, key)? >= limit
    {
        return Ok(false);
    }
    Ok(true)
}

impl<'a> InsertRow<'a> {
    /// The row of `job`, inserted running under its claim or pending.
    fn of(job: &'a NewJob, running: bool) -> Self {
        let claim = job.claimed_by.as_ref().filter(|_| running);
        InsertRow {
            id: job.id.to_string(),
            job,
            status: if claim.is_some() {
                "running"
            } else {
                "pending"
            },
            key_limit: job.key_limit.map(i64::from),
            max_attempts: i64::from(job.max_attempts),
            owner: claim.map(|c| &*c.owner),
            attempts: i64::from(claim.is_some()),
            started_at: claim.map(|_| job.created_at),
            lease_until: claim.map(|c| c.lease_until),
        }
    }
}

fn insert_rows(conn: &Connection, rows: &[InsertRow<'_>]) -> Result<()> {
    for chunk in buckets(rows) {
        let mut stmt = conn.prepare_cached(insert_sql(chunk.len()))?;
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(14 * chunk.len());
        for row in chunk {
            params.extend([
                &row.id as &dyn ToSql,
                &row.job.name,
                &row.status,
                &row.job.args,
                &row.job.priority,
                &row.job.concurrency_key,
                &row.key_limit,
                &row.max_attempts,
                &row.job.run_at,
                &row.job.created_at,
                &row.owner,
                &row.attempts,
                &row.started_at,
                &row.lease_until,
            ]);
        }
        stmt.execute(params.as_slice())?;
    }
    Ok(())
}
