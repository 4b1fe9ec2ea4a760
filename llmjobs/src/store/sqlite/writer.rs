//! The one writer connection. Every write of the process goes through it; whatever is waiting
//! when it becomes free is committed together in one transaction (group commit), so one fsync
//! serves many spawns and completions.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Executor, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::store::{CancelEffect, ClaimRequest, ClaimedJob, Finish, NewJob, StepRecord};
use crate::{Error, JobId, Result};

/// At most this many operations share one transaction.
const MAX_BATCH: usize = 1024;

/// Multi-row statements are built for these row counts, so a handful of prepared statements
/// serve every batch size.
const ROW_BUCKETS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

pub(super) struct Request {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<Reply>>,
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

/// Runs until every sender is gone.
pub(super) async fn run(mut conn: SqliteConnection, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        tracing::trace!(ops = batch.len(), "committing a batch");
        commit_batch(&mut conn, &mut batch).await;
    }
    if let Err(e) = sqlx::Connection::close(conn).await {
        tracing::warn!(error = %e, "closing the job database writer failed");
    }
}

/// Executes `batch` in one transaction and answers every request. When the shared transaction
/// fails, each request is retried in a transaction of its own, so one bad write cannot fail the
/// others.
async fn commit_batch(conn: &mut SqliteConnection, batch: &mut Vec<Request>) {
    let ops: Vec<&WriteOp> = batch.iter().map(|r| &r.op).collect();
    match transaction(conn, &ops).await {
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
                    .await
                    .map(|mut replies| replies.pop().expect("one reply"));
                let _ = request.reply.send(result);
            }
        }
    }
}

async fn transaction(conn: &mut SqliteConnection, ops: &[&WriteOp]) -> Result<Vec<Reply>> {
    begin_immediate(conn).await?;
    match apply_all(conn, ops).await {
        Ok(replies) => match conn.execute("COMMIT").await {
            Ok(_) => Ok(replies),
            Err(e) => {
                let _ = conn.execute("ROLLBACK").await;
                Err(e.into())
            }
        },
        Err(e) => {
            let _ = conn.execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// `BEGIN IMMEDIATE` takes the database's write lock up front, so a transaction never fails
/// half-way because another process wrote first. The connection's busy timeout waits for the
/// lock; a writer that holds it longer still is waited for again rather than surfacing
/// "database is locked".
async fn begin_immediate(conn: &mut SqliteConnection) -> Result<()> {
    let mut delay = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    loop {
        match conn.execute("BEGIN IMMEDIATE").await {
            Ok(_) => return Ok(()),
            Err(e) if is_busy(&e) && waited < Duration::from_secs(120) => {
                tracing::debug!("job database is busy; waiting for the write lock");
                tokio::time::sleep(delay).await;
                waited += delay;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            matches!(code & 0xff, 5 | 6)
        }
        _ => false,
    }
}

/// Applies a batch. Inserts all go into multi-row INSERTs and completions into multi-row
/// UPDATEs, whatever their place in the batch: every op in a batch comes from a caller still
/// waiting for its reply, so no op depends on another of the same batch, and any order is one
/// in which they could have arrived. Inserts go first so that a claim in the same batch sees
/// the new jobs.
async fn apply_all(conn: &mut SqliteConnection, ops: &[&WriteOp]) -> Result<Vec<Reply>> {
    let mut replies: Vec<Option<Reply>> = (0..ops.len()).map(|_| None).collect();
    let mut inserts = Vec::new();
    let mut completions = Vec::new();
    let mut others = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            WriteOp::Enqueue(job) => inserts.push((i, job)),
            _ => match completion(op) {
                Some(done) => completions.push((i, done)),
                None => others.push(i),
            },
        }
    }
    if !inserts.is_empty() {
        let jobs: Vec<&NewJob> = inserts.iter().map(|(_, job)| *job).collect();
        insert_jobs(conn, &jobs).await?;
        for (i, _) in &inserts {
            replies[*i] = Some(Reply::Done);
        }
    }
    if !completions.is_empty() {
        let (positions, done): (Vec<usize>, Vec<Completion<'_>>) = completions.into_iter().unzip();
        for (i, reply) in positions.into_iter().zip(complete_jobs(conn, &done).await?) {
            replies[i] = Some(reply);
        }
    }
    for i in others {
        replies[i] = Some(apply(conn, ops[i]).await?);
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

fn complete_sql(rows: usize) -> AssertSqlSafe<Arc<str>> {
    static CACHE: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        ROW_BUCKETS
            .iter()
            .map(|&n| {
                let cases = "WHEN ? THEN ? ".repeat(n);
                let owners = vec!["(?, ?)"; n].join(", ");
                Arc::from(format!(
                    "UPDATE llmjobs_jobs SET status = 'completed', error = NULL, \
                     completed_at = ?, lease_until = NULL, \
                     result = CASE id {cases}END, \
                     progress = coalesce(CASE id {cases}END, progress) \
                     WHERE status = 'running' AND (id, owner) IN (VALUES {owners}) \
                     RETURNING id"
                ))
            })
            .collect()
    });
    let index = ROW_BUCKETS
        .iter()
        .position(|&n| n == rows)
        .expect("a bucket size");
    AssertSqlSafe(cache[index].clone())
}

/// Marks jobs completed with one statement per bucket of rows; each reply says whether that
/// job's row was still its owner's running job.
async fn complete_jobs(conn: &mut SqliteConnection, jobs: &[Completion<'_>]) -> Result<Vec<Reply>> {
    let now = crate::status::now_ms();
    let mut changed = std::collections::HashSet::with_capacity(jobs.len());
    let mut rest = jobs;
    while !rest.is_empty() {
        let n = *ROW_BUCKETS
            .iter()
            .find(|&&n| n <= rest.len())
            .expect("1 is a bucket");
        let (chunk, tail) = rest.split_at(n);
        let mut query = sqlx::query(complete_sql(n)).bind(now);
        for job in chunk {
            query = query.bind(&job.id).bind(job.result);
        }
        for job in chunk {
            query = query.bind(&job.id).bind(job.progress);
        }
        for job in chunk {
            query = query.bind(&job.id).bind(job.owner);
        }
        for row in query.fetch_all(&mut *conn).await? {
            changed.insert(row.try_get::<String, _>("id")?);
        }
        rest = tail;
    }
    Ok(jobs
        .iter()
        .map(|job| Reply::Changed(changed.contains(&job.id)))
        .collect())
}

fn insert_sql(rows: usize) -> AssertSqlSafe<Arc<str>> {
    static CACHE: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        ROW_BUCKETS
            .iter()
            .map(|&n| {
                let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; n].join(", ");
                Arc::from(format!(
                    "INSERT INTO llmjobs_jobs (id, name, status, args, priority, \
                     concurrency_key, key_limit, max_attempts, run_at, created_at, \
                     owner, attempts, started_at, lease_until) \
                     VALUES {values}"
                ))
            })
            .collect()
    });
    let index = ROW_BUCKETS
        .iter()
        .position(|&n| n == rows)
        .expect("a bucket size");
    AssertSqlSafe(cache[index].clone())
}

async fn insert_jobs(conn: &mut SqliteConnection, jobs: &[&NewJob]) -> Result<()> {
    let mut rest = jobs;
    while !rest.is_empty() {
        let n = *ROW_BUCKETS
            .iter()
            .find(|&&n| n <= rest.len())
            .expect("1 is a bucket");
        let (chunk, tail) = rest.split_at(n);
        let mut query = sqlx::query(insert_sql(n));
        for job in chunk {
            let claim = job.claimed_by.as_ref();
            query = query
                .bind(job.id.to_string())
                .bind(&job.name)
                .bind(if claim.is_some() {
                    "running"
                } else {
                    "pending"
                })
                .bind(&job.args)
                .bind(job.priority)
                .bind(job.concurrency_key.as_deref())
                .bind(job.key_limit.map(i64::from))
                .bind(i64::from(job.max_attempts))
                .bind(job.run_at)
                .bind(job.created_at)
                .bind(claim.map(|c| &*c.owner))
                .bind(i64::from(claim.is_some()))
                .bind(claim.map(|_| job.created_at))
                .bind(claim.map(|c| c.lease_until));
        }
        query.execute(&mut *conn).await?;
        rest = tail;
    }
    Ok(())
}

async fn apply(conn: &mut SqliteConnection, op: &WriteOp) -> Result<Reply> {
    let now = crate::status::now_ms();
    Ok(match op {
        WriteOp::Enqueue(job) => {
            insert_jobs(conn, &[job]).await?;
            Reply::Done
        }
        WriteOp::Claim(request) => Reply::Claimed(claim(conn, request).await?),
        WriteOp::Finish {
            id,
            owner,
            finish,
            progress,
        } => {
            let id = id.to_string();
            let owner: &str = owner;
            let result =
                match finish {
                    Finish::Completed { result } => sqlx::query(
                        "UPDATE llmjobs_jobs SET status = 'completed', result = ?, error = NULL, \
                     completed_at = ?, lease_until = NULL, progress = coalesce(?, progress) \
                     WHERE id = ? AND status = 'running' AND owner = ?",
                    )
                    .bind(result)
                    .bind(now)
                    .bind(progress)
                    .bind(&id)
                    .bind(owner)
                    .execute(&mut *conn)
                    .await?,
                    Finish::Failed {
                        error,
                        needs_review,
                    } => sqlx::query(
                        "UPDATE llmjobs_jobs SET status = 'failed', error = ?, completed_at = ?, \
                     lease_until = NULL, progress = coalesce(?, progress), needs_review = ? \
                     WHERE id = ? AND status = 'running' AND owner = ?",
                    )
                    .bind(error)
                    .bind(now)
                    .bind(progress)
                    .bind(i64::from(*needs_review))
                    .bind(&id)
                    .bind(owner)
                    .execute(&mut *conn)
                    .await?,
                    Finish::Retry { error, run_at } => {
                        sqlx::query(
                            "UPDATE llmjobs_jobs SET status = 'pending', error = ?, run_at = ?, \
                     owner = NULL, lease_until = NULL, progress = coalesce(?, progress) \
                     WHERE id = ? AND status = 'running' AND owner = ?",
                        )
                        .bind(error)
                        .bind(run_at)
                        .bind(progress)
                        .bind(&id)
                        .bind(owner)
                        .execute(&mut *conn)
                        .await?
                    }
                    Finish::Cancelled => {
                        sqlx::query(
                            "UPDATE llmjobs_jobs SET status = 'cancelled', completed_at = ?, \
                     lease_until = NULL, progress = coalesce(?, progress) \
                     WHERE id = ? AND status = 'running' AND owner = ?",
                        )
                        .bind(now)
                        .bind(progress)
                        .bind(&id)
                        .bind(owner)
                        .execute(&mut *conn)
                        .await?
                    }
                };
            Reply::Changed(result.rows_affected() == 1)
        }
        WriteOp::Cancel { id } => Reply::Cancel(cancel(conn, *id, now).await?),
        WriteOp::Heartbeat { owner, lease_until } => {
            let done = sqlx::query(
                "UPDATE llmjobs_jobs SET lease_until = ? WHERE status = 'running' AND owner = ?",
            )
            .bind(lease_until)
            .bind(&**owner)
            .execute(&mut *conn)
            .await?;
            Reply::Count(done.rows_affected())
        }
        WriteOp::ReleaseOwner { owner } => {
            let done = sqlx::query(
                "UPDATE llmjobs_jobs SET status = 'pending', owner = NULL, lease_until = NULL \
                 WHERE status = 'running' AND owner = ?",
            )
            .bind(owner)
            .execute(&mut *conn)
            .await?;
            Reply::Count(done.rows_affected())
        }
        WriteOp::ReleaseExpired { now } => {
            let done = sqlx::query(
                "UPDATE llmjobs_jobs SET status = 'pending', owner = NULL, lease_until = NULL \
                 WHERE status = 'running' AND lease_until < ?",
            )
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Reply::Count(done.rows_affected())
        }
        WriteOp::AppendStep { id, owner, step } => {
            let id = id.to_string();
            let done = sqlx::query(
                "INSERT INTO llmjobs_steps (job_id, seq, name, output, created_at) \
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM llmjobs_jobs \
                 WHERE id = ?1 AND status = 'running' AND owner = ?6) \
                 ON CONFLICT (job_id, seq) DO NOTHING",
            )
            .bind(&id)
            .bind(i64::from(step.seq))
            .bind(&step.name)
            .bind(&step.output)
            .bind(now)
            .bind(&**owner)
            .execute(&mut *conn)
            .await?;
            Reply::Changed(done.rows_affected() == 1)
        }
        WriteOp::SaveProgress { id, progress } => {
            let done = sqlx::query(
                "UPDATE llmjobs_jobs SET progress = ? WHERE id = ? AND status = 'running'",
            )
            .bind(progress)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await?;
            Reply::Changed(done.rows_affected() == 1)
        }
        WriteOp::Prune { before } => {
            sqlx::query(
                "DELETE FROM llmjobs_steps WHERE job_id IN (SELECT id FROM llmjobs_jobs \
                 WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < ?)",
            )
            .bind(before)
            .execute(&mut *conn)
            .await?;
            let done = sqlx::query(
                "DELETE FROM llmjobs_jobs \
                 WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at < ?",
            )
            .bind(before)
            .execute(&mut *conn)
            .await?;
            Reply::Count(done.rows_affected())
        }
        WriteOp::Flush => Reply::Done,
    })
}

async fn cancel(conn: &mut SqliteConnection, id: JobId, now: i64) -> Result<CancelEffect> {
    let id = id.to_string();
    let pending = sqlx::query(
        "UPDATE llmjobs_jobs SET status = 'cancelled', completed_at = ? \
         WHERE id = ? AND status = 'pending'",
    )
    .bind(now)
    .bind(&id)
    .execute(&mut *conn)
    .await?;
    if pending.rows_affected() == 1 {
        return Ok(CancelEffect::Cancelled);
    }
    let running = sqlx::query(
        "UPDATE llmjobs_jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
    )
    .bind(&id)
    .execute(&mut *conn)
    .await?;
    if running.rows_affected() == 1 {
        return Ok(CancelEffect::Requested);
    }
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM llmjobs_jobs WHERE id = ?")
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
    match status {
        None => Ok(CancelEffect::NotFound),
        Some(status) => status
            .parse()
            .map(CancelEffect::AlreadyFinal)
            .map_err(|reason| Error::CorruptRow { id, reason }),
    }
}

/// How many jobs run now under each concurrency key that the candidates use.
async fn running_by_key(
    conn: &mut SqliteConnection,
    candidates: &[sqlx::sqlite::SqliteRow],
) -> Result<std::collections::HashMap<String, u32>> {
    let mut keys = Vec::new();
    for row in candidates {
        let key: Option<String> = row.try_get("concurrency_key")?;
        let limit: Option<i64> = row.try_get("key_limit")?;
        if let (Some(key), Some(_)) = (key, limit)
            && !keys.contains(&key)
        {
            keys.push(key);
        }
    }
    let mut counts = std::collections::HashMap::new();
    for chunk in keys.chunks(256) {
        let placeholders = vec!["?"; chunk.len()].join(", ");
        let sql = AssertSqlSafe(format!(
            "SELECT concurrency_key, count(*) AS n FROM llmjobs_jobs \
             WHERE status = 'running' AND concurrency_key IN ({placeholders}) \
             GROUP BY concurrency_key"
        ));
        let mut query = sqlx::query(sql);
        for key in chunk {
            query = query.bind(key);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let n: i64 = row.try_get("n")?;
            counts.insert(
                row.try_get("concurrency_key")?,
                u32::try_from(n).unwrap_or(u32::MAX),
            );
        }
    }
    Ok(counts)
}

/// Picks due pending jobs this worker can run, within the per-name and global limits counted
/// over the whole database (the write lock makes the count and the claim one atomic step across
/// processes), and marks them running.
async fn claim(conn: &mut SqliteConnection, request: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
    let mut slots = request.slots as usize;
    let limited = request.global_limit.is_some() || request.names.iter().any(|q| q.limit.is_some());
    let mut running_by_name = std::collections::HashMap::<String, u32>::new();
    if limited {
        let rows = sqlx::query(
            "SELECT name, count(*) AS n FROM llmjobs_jobs WHERE status = 'running' GROUP BY name",
        )
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let n: i64 = row.try_get("n")?;
            running_by_name.insert(row.try_get("name")?, u32::try_from(n).unwrap_or(u32::MAX));
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

    let placeholders = vec!["?"; room.len()].join(", ");
    let sql = AssertSqlSafe(format!(
        "SELECT id, name, concurrency_key, key_limit FROM llmjobs_jobs \
         WHERE status = 'pending' AND run_at <= ? AND name IN ({placeholders}) \
         ORDER BY priority DESC, run_at, id LIMIT ?"
    ));
    let mut query = sqlx::query(sql).bind(request.now);
    for (name, _) in &room {
        query = query.bind(*name);
    }
    // Look a little past the free slots, so a name at its limit does not hide others.
    let window = slots.saturating_mul(2).min(4096);
    let candidates = query
        .bind(i64::try_from(window).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
    let running_by_key = running_by_key(conn, &candidates).await?;
    let mut started_by_key = std::collections::HashMap::<String, u32>::new();
    let mut chosen = Vec::with_capacity(slots);
    for row in candidates {
        if chosen.len() == slots {
            break;
        }
        let name: String = row.try_get("name")?;
        let Some((_, left)) = room.iter_mut().find(|(n, _)| *n == name) else {
            continue;
        };
        if *left == 0 {
            continue;
        }
        let key: Option<String> = row.try_get("concurrency_key")?;
        let key_limit: Option<i64> = row.try_get("key_limit")?;
        if let (Some(key), Some(limit)) = (key, key_limit) {
            let running = running_by_key.get(&key).copied().unwrap_or(0);
            let started = started_by_key.entry(key).or_insert(0);
            if i64::from(running + *started) >= limit {
                continue;
            }
            *started += 1;
        }
        *left -= 1;
        chosen.push(row.try_get::<String, _>("id")?);
    }

    let mut claimed = Vec::with_capacity(chosen.len());
    for chunk in chosen.chunks(256) {
        let placeholders = vec!["?"; chunk.len()].join(", ");
        let sql = AssertSqlSafe(format!(
            "UPDATE llmjobs_jobs SET status = 'running', owner = ?, lease_until = ?, \
             attempts = attempts + 1, started_at = coalesce(started_at, ?), cancel_requested = 0 \
             WHERE status = 'pending' AND id IN ({placeholders}) \
             RETURNING id, name, args, attempts, max_attempts"
        ));
        let mut query = sqlx::query(sql)
            .bind(&*request.owner)
            .bind(request.lease_until)
            .bind(request.now);
        for id in chunk {
            query = query.bind(id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let id: String = row.try_get("id")?;
            let attempts: i64 = row.try_get("attempts")?;
            let max_attempts: i64 = row.try_get("max_attempts")?;
            let Ok(job_id) = id.parse::<JobId>() else {
                // Not an id llmjobs wrote: fail the row so it is visible and never claimed again.
                sqlx::query(
                    "UPDATE llmjobs_jobs SET status = 'failed', completed_at = ?, \
                     error = 'corrupt row: the id is not a UUID' WHERE id = ?",
                )
                .bind(request.now)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
                continue;
            };
            claimed.push(ClaimedJob {
                id: job_id,
                name: row.try_get("name")?,
                args: row.try_get("args")?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                max_attempts: u32::try_from(max_attempts).unwrap_or(1),
            });
        }
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    use sqlx::ConnectOptions;
    use sqlx::sqlite::SqliteConnectOptions;

    use super::*;
    use crate::store::LocalClaim;

    async fn connection() -> SqliteConnection {
        let mut conn = SqliteConnectOptions::new()
            .in_memory(true)
            .connect()
            .await
            .unwrap();
        super::super::migrate(&mut conn).await.unwrap();
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

    #[tokio::test]
    async fn completions_batched_together_change_only_their_owners_running_rows() {
        let mut conn = connection().await;
        let jobs: Vec<NewJob> = (0..5).map(|_| running_job("me")).collect();
        let inserts: Vec<WriteOp> = jobs.iter().cloned().map(WriteOp::Enqueue).collect();
        transaction(&mut conn, &inserts.iter().collect::<Vec<_>>())
            .await
            .unwrap();

        let ops = [
            complete(&jobs[0], "me", "0"),
            complete(&jobs[1], "someone else", "1"),
            complete(&jobs[2], "me", "2"),
            complete(&jobs[3], "me", "3"),
            complete(&jobs[0], "me", "again"),
        ];
        let replies = transaction(&mut conn, &ops.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        let changed: Vec<bool> = replies
            .iter()
            .map(|r| matches!(r, Reply::Changed(true)))
            .collect();
        // The second completion of job 0 is part of the same statement; the first WHEN wins.
        assert_eq!(changed, [true, false, true, true, true]);

        let rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT id, status, result FROM llmjobs_jobs")
                .fetch_all(&mut conn)
                .await
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
        let replies = transaction(&mut conn, &late.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        assert!(matches!(replies[0], Reply::Changed(false)));
        assert!(matches!(replies[1], Reply::Changed(true)));
    }
}
