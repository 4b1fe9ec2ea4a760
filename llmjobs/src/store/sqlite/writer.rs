//! The one writer connection, on a thread of its own. Every write of the process goes through
//! it; whatever is waiting when it becomes free is committed together in one transaction (group
//! commit), so one fsync serves many spawns and completions, and inserts and completions go in
//! as multi-row statements.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::is_busy;
use crate::store::{CancelEffect, ClaimRequest, ClaimedJob, Finish, NewJob, StepRecord};
use crate::{JobId, Result};

mod cancel;
mod claim;
mod enqueue;
mod finish;
mod progress;
mod prune;
mod release;
mod steps;

use finish::Completion;

/// At most this many operations share one transaction.
const MAX_BATCH: usize = 1024;

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
            _ => match finish::completion(op) {
                Some(done) => completions.push((i, done)),
                None => others.push(i),
            },
        }
    }
    if !inserts.is_empty() {
        let jobs: Vec<&NewJob> = inserts.iter().map(|(_, job)| *job).collect();
        enqueue::insert_jobs(conn, &jobs)?;
        for (i, _) in &inserts {
            replies[*i] = Some(Reply::Done);
        }
    }
    for i in steps {
        replies[i] = Some(apply(conn, ops[i])?);
    }
    if !completions.is_empty() {
        let (positions, done): (Vec<usize>, Vec<Completion<'_>>) = completions.into_iter().unzip();
        for (i, reply) in positions
            .into_iter()
            .zip(finish::complete_jobs(conn, &done)?)
        {
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

/// Runs one statement and returns how many rows it changed.
fn execute(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

/// Applies one op, by the statements of its own module.
fn apply(conn: &Connection, op: &WriteOp) -> Result<Reply> {
    let now = crate::status::now_ms();
    Ok(match op {
        WriteOp::Enqueue(job) => {
            enqueue::insert_jobs(conn, &[job])?;
            Reply::Done
        }
        WriteOp::Claim(request) => Reply::Claimed(claim::claim(conn, request)?),
        WriteOp::Finish {
            id,
            owner,
            finish,
            progress,
        } => Reply::Changed(finish::finish_job(
            conn,
            *id,
            owner,
            finish,
            progress.as_deref(),
            now,
        )?),
        WriteOp::Cancel { id } => Reply::Cancel(cancel::cancel(conn, *id, now)?),
        WriteOp::Heartbeat { owner, lease_until } => {
            Reply::Count(release::heartbeat(conn, owner, *lease_until)?)
        }
        WriteOp::ReleaseOwner { owner } => Reply::Count(release::release_owner(conn, owner)?),
        WriteOp::ReleaseExpired { now } => Reply::Count(release::release_expired(conn, *now)?),
        WriteOp::AppendStep { id, owner, step } => {
            Reply::Changed(steps::append_step(conn, *id, owner, step, now)?)
        }
        WriteOp::SaveProgress { id, progress } => {
            Reply::Changed(progress::save_progress(conn, *id, progress)?)
        }
        WriteOp::Prune { before } => Reply::Count(prune::prune(conn, *before)?),
        WriteOp::Read(_) | WriteOp::Flush => Reply::Done,
    })
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
