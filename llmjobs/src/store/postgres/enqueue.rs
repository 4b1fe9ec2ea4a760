//! Inserting jobs: all of a call's jobs in one multi-row INSERT over arrays (`UNNEST`), in one
//! transaction.
//!
//! Spawns that share an idempotency key take turns on its advisory lock, so the second sees
//! the first's job; local hand-offs under limits take the locks of their limits, so their
//! room is counted exactly across workers. All the locks of a call are taken up front, in one
//! order (see [`locks::lock_all`]).

use std::collections::HashMap;

use sqlx::PgConnection;
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;

use super::locks;
use crate::Result;
use crate::store::{Enqueued, KeyHolder, LocalClaim, NewJob};

/// Inserts `jobs`, together; for each, what it did. A job whose idempotency key another job
/// holds is not inserted: the reply names that job (an error if it was spawned with other
/// arguments). A local claim under limits goes in running if its limits have room at that
/// moment (counting the jobs before it in the call), else pending.
pub(super) async fn insert_jobs(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
    let mut keys = Vec::new();
    for job in jobs {
        if let Some(key) = &job.idempotency_key {
            keys.push(locks::idempotency_key(key));
        }
        if let Some(claim) = &job.claimed_by {
            keys.extend(limit_locks(job, claim));
        }
    }
    locks::lock_all(conn, &mut keys).await?;

    let mut room = Room::default();
    let mut held: HashMap<&str, &NewJob> = HashMap::new();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut rows = Rows::default();
    for job in jobs {
        if let Some(key) = &job.idempotency_key {
            // A job of this very call, or one committed before, may hold the key.
            let holder = match held.get(key.as_str()) {
                Some(earlier) => Some(KeyHolder::of(earlier)),
                None => holder(conn, key, job).await?,
            };
            if let Some(holder) = holder {
                replies.push(Enqueued::Existing(holder.check(key, job)?));
                continue;
            }
            held.insert(key, job);
        }
        let runs = match &job.claimed_by {
            None => false,
            Some(claim) => room.admit(conn, job, claim).await?,
        };
        replies.push(Enqueued::Inserted { running: runs });
        rows.push(job, runs);
    }
    rows.insert(conn).await?;
    super::usage::insert_budgets(conn, jobs).await?;
    Ok(replies)
}

/// The locks of the limits a local claim counts against.
pub(super) fn limit_locks(job: &NewJob, claim: &LocalClaim) -> Vec<i64> {
    let mut keys = Vec::new();
    if claim.global_limit.is_some() {
        keys.push(locks::global());
    }
    if claim.name_limit.is_some() {
        keys.push(locks::name(&job.name));
    }
    if let (Some(_), Some(key)) = (claim.key_limit, &job.concurrency_key) {
        keys.push(locks::concurrency_key(key));
    }
    keys
}

/// The committed job that holds `key` for `job`, if any. A job that ended longer ago than the
/// key's window holds it no more: its key is released (set to NULL) here, in the same
/// transaction as the insert that reuses it.
async fn holder(conn: &mut PgConnection, key: &str, job: &NewJob) -> Result<Option<KeyHolder>> {
    let found: Option<(String, String, String, Option<i64>)> = sqlx::query_as(
        "SELECT id::text, name, args, completed_at FROM llmjobs_jobs WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, name, args, ended)) = found else {
        return Ok(None);
    };
    let expired = matches!(
        (ended, job.idempotency_window),
        (Some(ended), Some(window)) if ended.saturating_add(window) <= job.created_at
    );
    if expired {
        sqlx::query("UPDATE llmjobs_jobs SET idempotency_key = NULL WHERE id = $1::uuid")
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        return Ok(None);
    }
    Ok(Some(KeyHolder { id, name, args }))
}

/// The room under the limits of a call's local claims: the counters as committed (read under
/// the limits' locks, once per call), plus the call's own rows decided so far.
#[derive(Default)]
struct Room {
    global_running: Option<i64>,
    by_name: HashMap<String, i64>,
    by_key: HashMap<String, i64>,
    /// Jobs of this call that go in running: in all, per name, per key.
    added: i64,
    added_by_name: HashMap<String, i64>,
    added_by_key: HashMap<String, i64>,
    /// The highest priority of the due jobs waiting (pending), if any: a new job of no higher
    /// priority must not overtake them.
    top_waiting: Option<Option<i32>>,
}

impl Room {
    /// Whether `job` may start now, here, under `claim`: no due job of its priority or higher
    /// waits (it would be overtaken) and its limits have room. Counts it if so; otherwise it
    /// waits too, and so do the jobs after it of no higher priority.
    async fn admit(
        &mut self,
        conn: &mut PgConnection,
        job: &NewJob,
        claim: &LocalClaim,
    ) -> Result<bool> {
        let admitted = self.has_room(conn, job, claim).await?;
        if admitted {
            self.added += 1;
            *self.added_by_name.entry(job.name.clone()).or_insert(0) += 1;
            if let Some(key) = &job.concurrency_key {
                *self.added_by_key.entry(key.clone()).or_insert(0) += 1;
            }
        } else {
            let top = self.top_waiting(conn, job.run_at).await?;
            self.top_waiting = Some(Some(top.map_or(job.priority, |p| p.max(job.priority))));
        }
        Ok(admitted)
    }

    async fn has_room(
        &mut self,
        conn: &mut PgConnection,
        job: &NewJob,
        claim: &LocalClaim,
    ) -> Result<bool> {
        if self
            .top_waiting(conn, job.run_at)
            .await?
            .is_some_and(|top| top >= job.priority)
        {
            return Ok(false);
        }
        if let Some(limit) = claim.global_limit
            && self.global_running(conn).await? >= i64::from(limit)
        {
            return Ok(false);
        }
        if let Some(limit) = claim.name_limit
            && self.name_running(conn, &job.name).await? >= i64::from(limit)
        {
            return Ok(false);
        }
        if let (Some(limit), Some(key)) = (claim.key_limit, &job.concurrency_key)
            && self.key_running(conn, key).await? >= i64::from(limit)
        {
            return Ok(false);
        }
        Ok(true)
    }

    async fn global_running(&mut self, conn: &mut PgConnection) -> Result<i64> {
        let committed = match self.global_running {
            Some(n) => n,
            None => {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT coalesce(sum(n), 0)::int8 FROM llmjobs_counts \
                     WHERE status = 'running'",
                )
                .fetch_one(conn)
                .await?;
                *self.global_running.insert(n)
            }
        };
        Ok(committed + self.added)
    }

    async fn name_running(&mut self, conn: &mut PgConnection, name: &str) -> Result<i64> {
        let committed = match self.by_name.get(name) {
            Some(n) => *n,
            None => {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT coalesce(sum(n), 0)::int8 FROM llmjobs_counts \
                     WHERE name = $1 AND status = 'running'",
                )
                .bind(name)
                .fetch_one(conn)
                .await?;
                self.by_name.insert(name.to_string(), n);
                n
            }
        };
        Ok(committed + self.added_by_name.get(name).copied().unwrap_or(0))
    }

    async fn key_running(&mut self, conn: &mut PgConnection, key: &str) -> Result<i64> {
        let committed = match self.by_key.get(key) {
            Some(n) => *n,
            None => {
                let n = running_with_key(conn, key).await?;
                self.by_key.insert(key.to_string(), n);
                n
            }
        };
        Ok(committed + self.added_by_key.get(key).copied().unwrap_or(0))
    }

    async fn top_waiting(&mut self, conn: &mut PgConnection, now: i64) -> Result<Option<i32>> {
        if let Some(top) = self.top_waiting {
            return Ok(top);
        }
        // The pending index is in claim order: its first due row has the highest priority.
        let top: Option<(i32,)> = sqlx::query_as(
            "SELECT priority FROM llmjobs_jobs WHERE status = 'pending' AND run_at <= $1 \
             ORDER BY priority DESC, run_at, id LIMIT 1",
        )
        .bind(now)
        .fetch_optional(conn)
        .await?;
        Ok(*self.top_waiting.insert(top.map(|(p,)| p)))
    }
}

/// How many jobs run now under `key`, from the maintained counters (summed over their slots).
pub(super) async fn running_with_key(conn: &mut PgConnection, key: &str) -> Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT coalesce(sum(n), 0)::int8 FROM llmjobs_running_keys WHERE concurrency_key = $1",
    )
    .bind(key)
    .fetch_one(conn)
    .await?;
    Ok(n)
}

/// Inserts the rows of [`Rows`], bound as arrays `$1` to `$15` in the order of its fields.
pub(super) const INSERT_SQL: &str = "INSERT INTO llmjobs_jobs (id, name, status, args, priority, \
     concurrency_key, key_limit, max_attempts, run_at, created_at, owner, attempts, started_at, \
     lease_until, idempotency_key) \
     SELECT * FROM unnest($1::text[]::uuid[], $2::text[], $3::text[], $4::text[], \
     $5::int4[], $6::text[], $7::int4[], $8::int4[], $9::int8[], $10::int8[], \
     $11::text[], $12::int4[], $13::int8[], $14::int8[], $15::text[])";

/// The rows of one INSERT, column by column.
#[derive(Default)]
pub(super) struct Rows {
    id: Vec<String>,
    name: Vec<String>,
    status: Vec<&'static str>,
    args: Vec<String>,
    priority: Vec<i32>,
    concurrency_key: Vec<Option<String>>,
    key_limit: Vec<Option<i32>>,
    max_attempts: Vec<i32>,
    run_at: Vec<i64>,
    created_at: Vec<i64>,
    owner: Vec<Option<String>>,
    attempts: Vec<i32>,
    started_at: Vec<Option<i64>>,
    lease_until: Vec<Option<i64>>,
    idempotency_key: Vec<Option<String>>,
}

impl Rows {
    /// Adds `job`, running under its claim or pending.
    pub(super) fn push(&mut self, job: &NewJob, running: bool) {
        let claim = job.claimed_by.as_ref().filter(|_| running);
        self.id.push(job.id.to_string());
        self.name.push(job.name.clone());
        self.status.push(if claim.is_some() {
            "running"
        } else {
            "pending"
        });
        self.args.push(job.args.clone());
        self.priority.push(job.priority);
        self.concurrency_key.push(job.concurrency_key.clone());
        self.key_limit
            .push(job.key_limit.map(|n| i32::try_from(n).unwrap_or(i32::MAX)));
        self.max_attempts
            .push(i32::try_from(job.max_attempts).unwrap_or(i32::MAX));
        self.run_at.push(job.run_at);
        self.created_at.push(job.created_at);
        self.owner.push(claim.map(|c| c.owner.to_string()));
        self.attempts.push(i32::from(claim.is_some()));
        self.started_at.push(claim.map(|_| job.created_at));
        self.lease_until.push(claim.map(|c| c.lease_until));
        self.idempotency_key.push(job.idempotency_key.clone());
    }

    pub(super) fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// Binds the columns as [`INSERT_SQL`]'s `$1` to `$15`.
    pub(super) fn bind<'q>(
        self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(self.id)
            .bind(self.name)
            .bind(self.status)
            .bind(self.args)
            .bind(self.priority)
            .bind(self.concurrency_key)
            .bind(self.key_limit)
            .bind(self.max_attempts)
            .bind(self.run_at)
            .bind(self.created_at)
            .bind(self.owner)
            .bind(self.attempts)
            .bind(self.started_at)
            .bind(self.lease_until)
            .bind(self.idempotency_key)
    }

    async fn insert(self, conn: &mut PgConnection) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        self.bind(sqlx::query(INSERT_SQL)).execute(conn).await?;
        Ok(())
    }
}
