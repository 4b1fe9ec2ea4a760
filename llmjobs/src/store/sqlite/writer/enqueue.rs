//! Inserting jobs, as multi-row INSERTs built for a few bucket sizes.

use std::sync::OnceLock;

use rusqlite::{Connection, ToSql};

use crate::Result;
use crate::store::NewJob;

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

pub(super) fn insert_jobs(conn: &Connection, jobs: &[&NewJob]) -> Result<()> {
    let rows: Vec<InsertRow<'_>> = jobs
        .iter()
        .map(|job| {
            let claim = job.claimed_by.as_ref();
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
        })
        .collect();
    for chunk in buckets(&rows) {
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
