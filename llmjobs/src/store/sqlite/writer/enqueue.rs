//! Inserting jobs, as multi-row INSERTs.

use std::collections::HashMap;
use std::sync::OnceLock;

use rusqlite::{Connection, OptionalExtension, ToSql};

use super::buckets::{bucket_sql, buckets};
use super::claim::{running_by_name, running_with_key};
use super::tally::Tally;
use crate::Result;
use crate::status::JobState;
use crate::store::{Enqueued, KeyHolder, LocalClaim, NewJob};

fn insert_sql(rows: usize) -> &'static str {
    static CACHE: OnceLock<Vec<String>> = OnceLock::new();
    bucket_sql(&CACHE, rows, |n| {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ");
        format!(
            "INSERT INTO llmjobs_jobs (id, name, status, args, priority, \
             concurrency_key, key_limit, max_attempts, run_at, created_at, \
             owner, attempts, started_at, lease_until, idempotency_key) \
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

/// Inserts `jobs`, together, as multi-row INSERTs; for each, what it did. A job whose
/// idempotency key another job holds is not inserted: the reply names that job (an error if it
/// was spawned with other arguments). A local claim under limits goes in running if its limits
/// have room at that moment (counting the jobs before it in the batch), else pending.
pub(super) fn insert_jobs(
    conn: &Connection,
    jobs: &[&NewJob],
    tally: &mut Tally,
) -> Result<Vec<Enqueued>> {
    let mut room = Room::new(conn);
    let mut keys: HashMap<&str, &NewJob> = HashMap::new();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut rows = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Some(key) = &job.idempotency_key {
            // A job of this very batch, or one committed before, may hold the key.
            let holder = match keys.get(key.as_str()) {
                Some(earlier) => Some(KeyHolder::of(earlier)),
                None => holder(conn, key, job)?,
            };
            if let Some(holder) = holder {
                replies.push(Enqueued::Existing(holder.check(key, job)?));
                continue;
            }
            keys.insert(key, job);
        }
        let runs = match &job.claimed_by {
            None => false,
            Some(claim) => room.admit(job, claim)?,
        };
        replies.push(Enqueued::Inserted { running: runs });
        rows.push(InsertRow::of(job, runs));
    }
    insert_rows(conn, &rows)?;
    super::ledger::insert_budgets(conn, rows.iter().map(|row| row.job))?;
    for row in &rows {
        let state = if row.owner.is_some() {
            JobState::Running
        } else {
            JobState::Pending
        };
        tally.moved(
            &row.job.name,
            row.job.concurrency_key.as_deref(),
            None,
            Some(state),
        );
    }
    Ok(replies)
}

/// The committed job that holds `key` for `job`, if any. A job that ended longer ago than the
/// key's window holds it no more: its key is released (set to NULL) here, in the same
/// transaction as the insert that reuses it.
fn holder(conn: &Connection, key: &str, job: &NewJob) -> Result<Option<KeyHolder>> {
    let found = conn
        .prepare_cached(
            "SELECT rowid, id, name, args, completed_at FROM llmjobs_jobs \
             WHERE idempotency_key = ?",
        )?
        .query_row([key], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                KeyHolder {
                    id: row.get(1)?,
                    name: row.get(2)?,
                    args: row.get(3)?,
                },
                row.get::<_, Option<i64>>(4)?,
            ))
        })
        .optional()?;
    let Some((rowid, holder, ended)) = found else {
        return Ok(None);
    };
    let expired = matches!(
        (ended, job.idempotency_window),
        (Some(ended), Some(window)) if ended.saturating_add(window) <= job.created_at
    );
    if expired {
        conn.prepare_cached("UPDATE llmjobs_jobs SET idempotency_key = NULL WHERE rowid = ?")?
            .execute([rowid])?;
        return Ok(None);
    }
    Ok(Some(holder))
}

/// The room under the limits of a batch's local claims: the counters as committed, read once
/// per batch at the first claim that needs them, plus the batch's own rows decided so far
/// (inserted together at the end).
struct Room<'c> {
    conn: &'c Connection,
    global_running: Option<i64>,
    by_name: Option<HashMap<String, u32>>,
    by_key: HashMap<String, u32>,
    /// Jobs of this batch that go in running: in all, per name, per key.
    added: i64,
    added_by_name: HashMap<String, u32>,
    added_by_key: HashMap<String, u32>,
    /// The highest priority of the due jobs waiting (pending), if any: a new job of no higher
    /// priority must not overtake them.
    top_waiting: Option<Option<i32>>,
}

impl<'c> Room<'c> {
    fn new(conn: &'c Connection) -> Self {
        Room {
            conn,
            global_running: None,
            by_name: None,
            by_key: HashMap::new(),
            added: 0,
            added_by_name: HashMap::new(),
            added_by_key: HashMap::new(),
            top_waiting: None,
        }
    }

    /// Whether `job` may start now, here, under `claim`: no due job of its priority or higher
    /// waits (it would be overtaken) and its limits have room. Counts it if so; otherwise it
    /// waits too, and so do the jobs after it of no higher priority.
    fn admit(&mut self, job: &NewJob, claim: &LocalClaim) -> Result<bool> {
        let admitted = self.has_room(job, claim)?;
        if admitted {
            self.count(job);
        } else {
            let top = self.top_waiting(job.run_at)?;
            self.top_waiting = Some(Some(top.map_or(job.priority, |p| p.max(job.priority))));
        }
        Ok(admitted)
    }

    fn has_room(&mut self, job: &NewJob, claim: &LocalClaim) -> Result<bool> {
        if self
            .top_waiting(job.run_at)?
            .is_some_and(|top| top >= job.priority)
        {
            return Ok(false);
        }
        if let Some(limit) = claim.global_limit
            && self.global_running()? >= i64::from(limit)
        {
            return Ok(false);
        }
        if let Some(limit) = claim.name_limit
            && self.name_running(&job.name)? >= limit
        {
            return Ok(false);
        }
        if let (Some(limit), Some(key)) = (claim.key_limit, &job.concurrency_key)
            && self.key_running(key)? >= limit
        {
            return Ok(false);
        }
        Ok(true)
    }

    /// Counts `job`, inserted running, against the limits of the jobs after it.
    fn count(&mut self, job: &NewJob) {
        self.added += 1;
        *self.added_by_name.entry(job.name.clone()).or_insert(0) += 1;
        if let Some(key) = &job.concurrency_key {
            *self.added_by_key.entry(key.clone()).or_insert(0) += 1;
        }
    }

    fn global_running(&mut self) -> Result<i64> {
        if let Some(n) = self.global_running {
            return Ok(n + self.added);
        }
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT coalesce(sum(n), 0) FROM llmjobs_counts WHERE status = 'running'",
            )?
            .query_row([], |row| row.get(0))?;
        Ok(*self.global_running.insert(n) + self.added)
    }

    fn name_running(&mut self, name: &str) -> Result<u32> {
        let by_name = match &mut self.by_name {
            Some(by_name) => by_name,
            None => self.by_name.insert(running_by_name(self.conn)?),
        };
        let added = self.added_by_name.get(name).copied().unwrap_or(0);
        Ok(by_name.get(name).copied().unwrap_or(0) + added)
    }

    fn key_running(&mut self, key: &str) -> Result<u32> {
        let committed = match self.by_key.get(key) {
            Some(n) => *n,
            None => {
                let n = running_with_key(self.conn, key)?;
                self.by_key.insert(key.to_string(), n);
                n
            }
        };
        Ok(committed + self.added_by_key.get(key).copied().unwrap_or(0))
    }

    fn top_waiting(&mut self, now: i64) -> Result<Option<i32>> {
        if let Some(top) = self.top_waiting {
            return Ok(top);
        }
        // The pending index is in claim order: its first due row has the highest priority.
        let top: Option<i32> = self
            .conn
            .prepare_cached(
                "SELECT priority FROM llmjobs_jobs WHERE status = 'pending' AND run_at <= ? \
                 ORDER BY priority DESC, run_at, id LIMIT 1",
            )?
            .query_row([now], |row| row.get(0))
            .optional()?;
        Ok(*self.top_waiting.insert(top))
    }
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
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(15 * chunk.len());
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
                &row.job.idempotency_key,
            ]);
        }
        stmt.execute(params.as_slice())?;
    }
    Ok(())
}
