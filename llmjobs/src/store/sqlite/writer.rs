//! The one writer connection, on a thread of its own. Every write of the process goes through
//! it; whatever is waiting when it becomes free is committed together in one transaction (group
//! commit), so one fsync serves many spawns and completions, and inserts and completions go in
//! as multi-row statements.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, ToSql};
use tokio::sync::{mpsc, oneshot};

use super::is_busy;
use crate::store::{CancelEffect, ClaimRequest, ClaimedJob, Finish, NewJob, StepRecord};
use crate::{Error, JobId, Result};

/// At most this many operations share one transaction.
const MAX_BATCH: usize = 1024;

/// Multi-row statements are built for these row counts, so a handful of prepared statements
/// serve every batch size.
const ROW_BUCKETS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// How long a transaction waits, in all, for another process's write lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(120);

pub(super) struct Request {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<Reply>>,
}

/// A read to run on the writer's connection (an in-memory database has no other).
pub(super) struct ReadFn(pub(super) Box<dyn FnOnce(&Connection) + Send>);

impl std::fmt::Debug for ReadFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadFn")
    }
}

#[derive(Debug)]
pub(super) enum WriteOp {
    Enqueue(NewJob),
    Claim(ClaimRequest),
    Finish {
        id: JobId,
        owner: Arc<str>,
        finish: Finish,
        progress: Option<String>,
    },
    Cancel {
        id: JobId,
    },
    Heartbeat {
        owner: Arc<str>,
        lease_until: i64,
    },
    ReleaseOwner {
        owner: String,
    },
    ReleaseExpired {
        now: i64,
    },
    AppendStep {
        id: JobId,
        owner: Arc<str>,
        step: StepRecord,
    },
    SaveProgress {
        id: JobId,
        progress: String,
    },
    Prune {
        before: i64,
    },
    Read(ReadFn),
    Flush,
}

#[derive(Debug)]
pub(super) enum Reply {
    Done,
    Changed(bool),
    Count(u64),
    Claimed(Vec<ClaimedJob>),
    Cancel(CancelEffect),
}

/// Runs until every sender is gone, then closes the connection.
pub(super) fn run(conn: Connection, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut received = Vec::with_capacity(MAX_BATCH);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut received, MAX_BATCH) > 0 {
        for Request { op, reply } in received.drain(..) {
            match op {
                // Reads change nothing; they run at once, outside the transaction.
                WriteOp::Read(read) => {
                    (read.0)(&conn);
                    let _ = reply.send(Ok(Reply::Done));
                }
                op => batch.push(Request { op, reply }),
            }
        }
        if !batch.is_empty() {
            tracing::trace!(ops = batch.len(), "committing a batch");
            commit_batch(&conn, &mut batch);
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the job database writer failed");
    }
}

/// Executes `batch` in one transaction and answers every request. When the shared transaction
/// fails, each request is retried in a transaction of its own, so one bad write cannot fail the
/// others.
fn commit_batch(conn: &Connection, batch: &mut Vec<Request>) {
    let ops: Vec<&WriteOp> = batch.iter().map(|r| &r.op).collect();
    match transaction(conn, &ops) {
        Ok(replies) => {
            for (request, reply) in batch.drain(..).zip(replies) {
                let _ = request.reply.send(Ok(reply));
            }
        }
        Err(e) if batch.len() == 1 => {
            let request = batch.pop().expect("one request");
            let _ = request.reply.send(Err(e));
        }
        Err(_) => {
            for request in batch.drain(..) {
                let result = transaction(conn, &[&request.op])
                    .map(|mut replies| replies.pop().expect("one reply"));
                let _ = request.reply.send(result);
            }
        }
    }
}

fn transaction(conn: &Connection, ops: &[&WriteOp]) -> Result<Vec<Reply>> {
    begin_immediate(conn)?;
    match apply_all(conn, ops) {
        Ok(replies) => match conn.prepare_cached("COMMIT")?.execute([]) {
            Ok(_) => Ok(replies),
            Err(e) => {
                rollback(conn);
                Err(e.into())
            }
        },
        Err(e) => {
            rollback(conn);
            Err(e)
        }
    }
}

fn rollback(conn: &Connection) {
    if let Err(e) = conn.execute_batch("ROLLBACK") {
        tracing::warn!(error = %e, "rolling back a failed write transaction failed");
    }
}

/// `BEGIN IMMEDIATE` takes the database's write lock up front, so a transaction never fails
/// half-way because another process wrote first. The connection's busy timeout waits for the
/// lock; a writer that holds it longer still is waited for again rather than surfacing
/// "database is locked".
fn begin_immediate(conn: &Connection) -> Result<()> {
    let mut delay = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    loop {
        match conn.prepare_cached("BEGIN IMMEDIATE")?.execute([]) {
            Ok(_) => return Ok(()),
            Err(e) if is_busy(&e) && waited < LOCK_PATIENCE => {
                tracing::debug!("job database is busy; waiting for the write lock");
                std::thread::sleep(delay);
                waited += delay;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Applies a batch. Inserts all go into multi-row INSERTs and completions into multi-row
/// UPDATEs, whatever their place in the batch, in this order: inserts (so that a claim in the
/// same batch sees the new jobs), journal appends (a job sends its steps before its outcome and
/// need not wait for them in between), completions, then everything else in arrival order.
/// Ops of different callers do not depend on each other, so any such order is one in which
/// they could have arrived.
fn apply_all(conn: &Connection, ops: &[&WriteOp]) -> Result<Vec<Reply>> {
    let mut replies: Vec<Option<Reply>> = (0..ops.len()).map(|_| None).collect();
    let mut inserts = Vec::new();
    let mut steps = Vec::new();
    let mut completions = Vec::new();
    let mut others = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            WriteOp::Enqueue(job) => inserts.push((i, job)),
            WriteOp::AppendStep { .. } => steps.push(i),
            _ => match completion(op) {
                Some(done) => completions.push((i, done)),
                None => others.push(i),
            },
        }
    }
    if !inserts.is_empty() {
        let jobs: Vec<&NewJob> = inserts.iter().map(|(_, job)| *job).collect();
        insert_jobs(conn, &jobs)?;
        for (i, _) in &inserts {
            replies[*i] = Some(Reply::Done);
        }
    }
    for i in steps {
        replies[i] = Some(apply(conn, ops[i])?);
    }
    if !completions.is_empty() {
        let (positions, done): (Vec<usize>, Vec<Completion<'_>>) = completions.into_iter().unzip();
        for (i, reply) in positions.into_iter().zip(complete_jobs(conn, &done)?) {
            replies[i] = Some(reply);
        }
    }
    for i in others {
        replies[i] = Some(apply(conn, ops[i])?);
    }
    Ok(replies
        .into_iter()
        .map(|reply| reply.expect("every op answered"))
        .collect())
}

/// The parts of a successful `Finish` op.
struct Completion<'a> {
    id: String,
    owner: &'a str,
    result: &'a str,
    progress: Option<&'a str>,
}

fn completion<'a>(op: &&'a WriteOp) -> Option<Completion<'a>> {
    match op {
        WriteOp::Finish {
            id,
            owner,
            finish: Finish::Completed { result },
            progress,
        } => Some(Completion {
            id: id.to_string(),
            owner,
            result,
            progress: progress.as_deref(),
        }),
        _ => None,
    }
}

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

/// Marks jobs completed; each reply says whether that job's row was still its owner's running
/// job.
fn complete_jobs(conn: &Connection, jobs: &[Completion<'_>]) -> Result<Vec<Reply>> {
    let now = crate::status::now_ms();
    let mut stmt = conn.prepare_cached(
        "UPDATE llmjobs_jobs SET status = 'completed', result = ?, error = NULL, \
         completed_at = ?, lease_until = NULL, progress = coalesce(?, progress) \
         WHERE id = ? AND status = 'running' AND owner = ?",
    )?;
    jobs.iter()
        .map(|job| {
            let changed = stmt.execute(rusqlite::params![
                job.result,
                now,
                job.progress,
                job.id,
                job.owner
            ])?;
            Ok(Reply::Changed(changed == 1))
        })
        .collect()
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

fn insert_jobs(conn: &Connection, jobs: &[&NewJob]) -> Result<()> {
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

/// Runs one statement and returns how many rows it changed.
fn execute(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

fn apply(conn: &Connection, op: &WriteOp) -> Result<Reply> {
    let now = crate::status::now_ms();
    Ok(match op {
        WriteOp::Enqueue(job) => {
            insert_jobs(conn, &[job])?;
            Reply::Done
        }
        WriteOp::Claim(request) => Reply::Claimed(claim(conn, request)?),
        WriteOp::Finish {
            id,
            owner,
            finish,
            progress,
        } => {
            let id = id.to_string();
            let owner: &str = owner;
            let changed = match finish {
                Finish::Completed { result } => execute(
                    conn,
                    "UPDATE llmjobs_jobs SET status = 'completed', result = ?, error = NULL, \
                     completed_at = ?, lease_until = NULL, progress = coalesce(?, progress) \
                     WHERE id = ? AND status = 'running' AND owner = ?",
                    rusqlite::params![result, now, progress, id, owner],
                )?,
                Finish::Failed {
                    error,
                    needs_review,
                } => execute(
                    conn,
                    "UPDATE llmjobs_jobs SET status = 'failed', error = ?, completed_at = ?, \
                     lease_until = NULL, progress = coalesce(?, progress), needs_review = ? \
                     WHERE id = ? AND status = 'running' AND owner = ?",
                    rusqlite::params![error, now, progress, needs_review, id, owner],
                )?,
                Finish::Retry { error, run_at } => execute(
                    conn,
                    "UPDATE llmjobs_jobs SET status = 'pending', error = ?, run_at = ?, \
                     owner = NULL, lease_until = NULL, progress = coalesce(?, progress) \
                     WHERE id = ? AND status = 'running' AND owner = ?",
                    rusqlite::params![error, run_at, progress, id, owner],
                )?,
                Finish::Cancelled => execute(
                    conn,
                    "UPDATE llmjobs_jobs SET status = 'cancelled', completed_at = ?, \
                     lease_until = NULL, progress = coalesce(?, progress) \
                     WHERE id = ? AND status = 'running' AND owner = ?",
                    rusqlite::params![now, progress, id, owner],
                )?,
            };
            Reply::Changed(changed == 1)
        }
        WriteOp::Cancel { id } => Reply::Cancel(cancel(conn, *id, now)?),
        WriteOp::Heartbeat { owner, lease_until } => Reply::Count(execute(
            conn,
            "UPDATE llmjobs_jobs SET lease_until = ? WHERE status = 'running' AND owner = ?",
            rusqlite::params![lease_until, &**owner],
        )? as u64),
        WriteOp::ReleaseOwner { owner } => Reply::Count(execute(
            conn,
            "UPDATE llmjobs_jobs SET status = 'pending', owner = NULL, lease_until = NULL \
                 WHERE status = 'running' AND owner = ?",
            [owner],
        )? as u64),
        WriteOp::ReleaseExpired { now } => Reply::Count(execute(
            conn,
            "UPDATE llmjobs_jobs SET status = 'pending', owner = NULL, lease_until = NULL \
                 WHERE status = 'running' AND lease_until < ?",
            [now],
        )? as u64),
        WriteOp::AppendStep { id, owner, step } => {
            let changed = execute(
                conn,
                "INSERT INTO llmjobs_steps (job_id, seq, name, output, created_at) \
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM llmjobs_jobs \
                 WHERE id = ?1 AND status = 'running' AND owner = ?6) \
                 ON CONFLICT (job_id, seq) DO NOTHING",
                rusqlite::params![
                    id.to_string(),
                    step.seq,
                    step.name,
                    step.output,
                    now,
                    &**owner
                ],
            )?;
            Reply::Changed(changed == 1)
        }
        WriteOp::SaveProgress { id, progress } => {
            let changed = execute(
                conn,
                "UPDATE llmjobs_jobs SET progress = ? WHERE id = ? AND status = 'running'",
                rusqlite::params![progress, id.to_string()],
            )?;
            Reply::Changed(changed == 1)
        }
        WriteOp::Prune { before } => {
            execute(
                conn,
                "DELETE FROM llmjobs_steps WHERE job_id IN (SELECT id FROM llmjobs_jobs \
                 WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < ?)",
                [before],
            )?;
            Reply::Count(execute(
                conn,
                "DELETE FROM llmjobs_jobs \
                 WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < ?",
                [before],
            )? as u64)
        }
        WriteOp::Read(_) | WriteOp::Flush => Reply::Done,
    })
}

fn cancel(conn: &Connection, id: JobId, now: i64) -> Result<CancelEffect> {
    let id = id.to_string();
    let pending = execute(
        conn,
        "UPDATE llmjobs_jobs SET status = 'cancelled', completed_at = ? \
         WHERE id = ? AND status = 'pending'",
        rusqlite::params![now, id],
    )?;
    if pending == 1 {
        return Ok(CancelEffect::Cancelled);
    }
    let running = execute(
        conn,
        "UPDATE llmjobs_jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
        [&id],
    )?;
    if running == 1 {
        return Ok(CancelEffect::Requested);
    }
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM llmjobs_jobs WHERE id = ?")?
        .query_row([&id], |row| row.get(0))
        .optional()?;
    match status {
        None => Ok(CancelEffect::NotFound),
        Some(status) => status
            .parse()
            .map(CancelEffect::AlreadyFinal)
            .map_err(|reason| Error::CorruptRow { id, reason }),
    }
}

/// `?, ?, …` with `n` placeholders.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// How many jobs run now under each concurrency key that the candidates use.
fn running_by_key(conn: &Connection, candidates: &[Candidate]) -> Result<HashMap<String, u32>> {
    let mut keys: Vec<&str> = Vec::new();
    for candidate in candidates {
        if let (Some(key), Some(_)) = (&candidate.key, candidate.key_limit)
            && !keys.contains(&key.as_str())
        {
            keys.push(key);
        }
    }
    let mut counts = HashMap::new();
    for chunk in keys.chunks(256) {
        let sql = format!(
            "SELECT concurrency_key, count(*) FROM llmjobs_jobs \
             WHERE status = 'running' AND concurrency_key IN ({}) \
             GROUP BY concurrency_key",
            placeholders(chunk.len())
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(chunk))?;
        while let Some(row) = rows.next()? {
            counts.insert(row.get(0)?, row.get::<_, u32>(1)?);
        }
    }
    Ok(counts)
}

/// A pending job a claim may take.
struct Candidate {
    id: String,
    name: String,
    key: Option<String>,
    key_limit: Option<i64>,
}

/// Picks due pending jobs this worker can run, within the per-name and global limits counted
/// over the whole database (the write lock makes the count and the claim one atomic step across
/// processes), and marks them running.
fn claim(conn: &Connection, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
    let mut slots = request.slots as usize;
    let limited = request.global_limit.is_some() || request.names.iter().any(|q| q.limit.is_some());
    let mut running_by_name = HashMap::<String, u32>::new();
    if limited {
        let mut stmt = conn.prepare_cached(
            "SELECT name, count(*) FROM llmjobs_jobs WHERE status = 'running' GROUP BY name",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            running_by_name.insert(row.get(0)?, row.get::<_, u32>(1)?);
        }
    }
    if let Some(global) = request.global_limit {
        let running: u32 = running_by_name.values().sum();
        slots = slots.min(global.saturating_sub(running) as usize);
    }
    // How many more of each name may start.
    let mut room: Vec<(&str, usize)> = request
        .names
        .iter()
        .map(|q| {
            let room = match q.limit {
                Some(limit) => {
                    let running = running_by_name.get(q.name).copied().unwrap_or(0);
                    limit.saturating_sub(running) as usize
                }
                None => usize::MAX,
            };
            (q.name, room)
        })
        .filter(|(_, room)| *room > 0)
        .collect();
    if slots == 0 || room.is_empty() {
        return Ok(Vec::new());
    }

    let sql = format!(
        "SELECT id, name, concurrency_key, key_limit FROM llmjobs_jobs \
         WHERE status = 'pending' AND run_at <= ? AND name IN ({}) \
         ORDER BY priority DESC, run_at, id LIMIT ?",
        placeholders(room.len())
    );
    // Look a little past the free slots, so a name at its limit does not hide others.
    let window = i64::try_from(slots.saturating_mul(2).min(4096)).unwrap_or(i64::MAX);
    let mut params: Vec<&dyn ToSql> = vec![&request.now];
    params.extend(room.iter().map(|(name, _)| name as &dyn ToSql));
    params.push(&window);
    let candidates: Vec<Candidate> = {
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params.as_slice())?;
        let mut candidates = Vec::new();
        while let Some(row) = rows.next()? {
            candidates.push(Candidate {
                id: row.get(0)?,
                name: row.get(1)?,
                key: row.get(2)?,
                key_limit: row.get(3)?,
            });
        }
        candidates
    };
    let running_by_key = running_by_key(conn, &candidates)?;
    let mut started_by_key = HashMap::<&str, u32>::new();
    let mut chosen = Vec::with_capacity(slots);
    for candidate in &candidates {
        if chosen.len() == slots {
            break;
        }
        let Some((_, left)) = room.iter_mut().find(|(n, _)| *n == candidate.name) else {
            continue;
        };
        if *left == 0 {
            continue;
        }
        if let (Some(key), Some(limit)) = (&candidate.key, candidate.key_limit) {
            let running = running_by_key.get(key).copied().unwrap_or(0);
            let started = started_by_key.entry(key).or_insert(0);
            if i64::from(running + *started) >= limit {
                continue;
            }
            *started += 1;
        }
        *left -= 1;
        chosen.push(candidate.id.as_str());
    }

    let mut claimed = Vec::with_capacity(chosen.len());
    for chunk in chosen.chunks(256) {
        let sql = format!(
            "UPDATE llmjobs_jobs SET status = 'running', owner = ?, lease_until = ?, \
             attempts = attempts + 1, started_at = coalesce(started_at, ?), cancel_requested = 0 \
             WHERE status = 'pending' AND id IN ({}) \
             RETURNING id, name, args, attempts, max_attempts",
            placeholders(chunk.len())
        );
        let owner: &str = &request.owner;
        let mut params: Vec<&dyn ToSql> = vec![&owner, &request.lease_until, &request.now];
        params.extend(chunk.iter().map(|id| id as &dyn ToSql));
        let mut corrupt = Vec::new();
        {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params.as_slice())?;
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let Ok(job_id) = id.parse::<JobId>() else {
                    corrupt.push(id);
                    continue;
                };
                claimed.push(ClaimedJob {
                    id: job_id,
                    name: row.get(1)?,
                    args: row.get(2)?,
                    attempts: row.get(3)?,
                    max_attempts: row.get(4)?,
                });
            }
        }
        // Not an id llmjobs wrote: fail the row so it is visible and never claimed again.
        for id in corrupt {
            execute(
                conn,
                "UPDATE llmjobs_jobs SET status = 'failed', completed_at = ?, \
                 error = 'corrupt row: the id is not a UUID' WHERE id = ?",
                rusqlite::params![request.now, id],
            )?;
        }
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalClaim;

    fn connection() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        super::super::migrate::run(&conn).unwrap();
        conn
    }

    fn running_job(owner: &str) -> NewJob {
        NewJob {
            id: JobId::new(),
            name: "job".into(),
            args: "{}".into(),
            priority: 0,
            concurrency_key: None,
            key_limit: None,
            max_attempts: 1,
            run_at: 0,
            created_at: 0,
            claimed_by: Some(LocalClaim {
                owner: owner.into(),
                lease_until: i64::MAX,
            }),
        }
    }

    fn complete(job: &NewJob, owner: &str, result: &str) -> WriteOp {
        WriteOp::Finish {
            id: job.id,
            owner: owner.into(),
            finish: Finish::Completed {
                result: result.into(),
            },
            progress: None,
        }
    }

    #[test]
    fn completions_batched_together_change_only_their_owners_running_rows() {
        let conn = connection();
        let jobs: Vec<NewJob> = (0..5).map(|_| running_job("me")).collect();
        let inserts: Vec<WriteOp> = jobs.iter().cloned().map(WriteOp::Enqueue).collect();
        transaction(&conn, &inserts.iter().collect::<Vec<_>>()).unwrap();

        let ops = [
            complete(&jobs[0], "me", "0"),
            complete(&jobs[1], "someone else", "1"),
            complete(&jobs[2], "me", "2"),
            complete(&jobs[3], "me", "3"),
            complete(&jobs[0], "me", "again"),
        ];
        let replies = transaction(&conn, &ops.iter().collect::<Vec<_>>()).unwrap();
        let changed: Vec<bool> = replies
            .iter()
            .map(|r| matches!(r, Reply::Changed(true)))
            .collect();
        // The second completion of job 0 finds it completed already: the first one wins.
        assert_eq!(changed, [true, false, true, true, false]);

        let rows: Vec<(String, String, Option<String>)> = conn
            .prepare("SELECT id, status, result FROM llmjobs_jobs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        for (id, status, result) in rows {
            let index = jobs.iter().position(|j| j.id.to_string() == id).unwrap();
            match index {
                0 | 2 | 3 => {
                    assert_eq!(status, "completed");
                    assert_eq!(result.as_deref(), Some(index.to_string().as_str()));
                }
                _ => assert_eq!((status.as_str(), result), ("running", None)),
            }
        }

        // A terminal row is final: a late completion changes nothing.
        let late = [
            complete(&jobs[2], "me", "late"),
            complete(&jobs[4], "me", "4"),
        ];
        let replies = transaction(&conn, &late.iter().collect::<Vec<_>>()).unwrap();
        assert!(matches!(replies[0], Reply::Changed(false)));
        assert!(matches!(replies[1], Reply::Changed(true)));
    }
}
