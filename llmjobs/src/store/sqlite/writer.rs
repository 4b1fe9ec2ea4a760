//! The one writer connection, on a thread of its own. Every write of the process goes through
//! it; whatever is waiting when it becomes free is committed together in one transaction (group
//! commit), so one fsync serves many spawns and completions, and inserts and completions go in
//! as multi-row statements.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::is_busy;
use crate::status::JobState;
use crate::store::{
    CancelEffect, ClaimRequest, Enqueued, Finish, NewJob, Release, RetryEffect, StepRecord,
};
use crate::{Error, JobId, Result};

// First: its SQL-building macro is used by the modules below.
#[macro_use]
mod history;

mod buckets;
mod budget;
mod cancel;
mod claim;
mod enqueue;
mod finish;
mod ledger;
mod progress;
mod prune;

pub(super) use prune::{PRUNE_CHUNK, VACUUM_PAGES};
mod release;
mod retry;
mod schedule;
mod steps;
mod tally;

pub(super) use ledger::LlmWrite;
pub(super) use schedule::read_schedules;

use finish::Completion;
use tally::Tally;

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
    /// Jobs inserted in one transaction, all or none.
    EnqueueMany(Vec<NewJob>),
    Retry {
        id: JobId,
        clear_journal: bool,
    },
    Claim(ClaimRequest),
    Finish {
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
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
        why: Release,
    },
    ReleaseExpired {
        owners: Vec<String>,
        now: i64,
    },
    AppendStep {
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        step: StepRecord,
    },
    SaveProgress {
        id: JobId,
        owner: Arc<str>,
        attempt: u32,
        progress: String,
    },
    /// Deletes one chunk of old finished jobs.
    Prune {
        before: i64,
        limit: u32,
    },
    /// Checkpoints and truncates the write-ahead log (outside any transaction).
    Checkpoint,
    /// Gives free pages back to the file system (outside any transaction).
    Vacuum {
        pages: u32,
    },
    Read(ReadFn),
    Flush,
    #[cfg(feature = "_fault-injection")]
    Inject(crate::store::Fault),
    /// Writes schedules and removes the code-declared ones named in `undeclare`.
    PutSchedules {
        put: Vec<crate::store::ScheduleDef>,
        undeclare: Vec<String>,
    },
    RemoveSchedule {
        name: String,
    },
    /// Fires ticks of a schedule, each with its job.
    FireTicks(crate::store::TickJobs),
    /// Writes the usage ledger or the completion cache.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))] // used by the LLM bridge
    Llm(LlmWrite),
}

#[derive(Debug)]
pub(super) enum Reply {
    Done,
    Changed(bool),
    Enqueued(Enqueued),
    EnqueuedMany(Vec<Enqueued>),
    Retry(RetryEffect),
    /// The state a finished attempt left its job in; `None` if it was no longer its row.
    Finished(Option<JobState>),
    Count(u64),
    Claimed(crate::store::Claimed),
    Cancel(CancelEffect),
    Fired(crate::store::Fired),
    Budget(crate::store::budget::BudgetDecision),
}

/// Runs until every sender is gone, then closes the connection. If it panics, `failure` says
/// why, every write waiting is answered with that, and the thread ends: the store then fails
/// every call with the same error, and the runtime gives its jobs up to other workers.
pub(super) fn run(
    conn: Connection,
    mut rx: mpsc::UnboundedReceiver<Request>,
    failure: &OnceLock<String>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let served = std::panic::catch_unwind(AssertUnwindSafe(|| serve(&conn, &mut rx, &mut batch)));
    if let Err(panic) = served {
        let cause = crate::error::panic_message(&*panic);
        let message = format!("the database writer thread died: {cause}");
        tracing::error!(%cause, "the job database writer thread panicked; every write fails from now on");
        let _ = failure.set(message.clone());
        rx.close();
        let unanswered = batch
            .drain(..)
            .chain(std::iter::from_fn(|| rx.try_recv().ok()));
        for request in unanswered {
            let _ = request
                .reply
                .send(Err(Error::Database(message.clone().into())));
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the job database writer failed");
    }
}

/// Commits what is waiting, batch after batch, until every sender is gone.
fn serve(conn: &Connection, rx: &mut mpsc::UnboundedReceiver<Request>, batch: &mut Vec<Request>) {
    let mut received = Vec::with_capacity(MAX_BATCH);
    while next_requests(rx, &mut received) > 0 {
        for Request { op, reply } in received.drain(..) {
            match op {
                // Reads change nothing; they run at once, outside the transaction.
                WriteOp::Read(read) => {
                    (read.0)(conn);
                    let _ = reply.send(Ok(Reply::Done));
                }
                // Upkeep that SQLite runs outside a transaction.
                WriteOp::Checkpoint => {
                    let _ = reply.send(prune::checkpoint(conn).map(|()| Reply::Done));
                }
                WriteOp::Vacuum { pages } => {
                    let _ = reply.send(prune::vacuum(conn, pages).map(Reply::Count));
                }
                #[cfg(feature = "_fault-injection")]
                WriteOp::Inject(fault) => {
                    let _ = reply.send(inject(conn, fault).map(|()| Reply::Done));
                }
                op => batch.push(Request { op, reply }),
            }
        }
        if !batch.is_empty() {
            let transactions = commit_batch(conn, batch);
            tracing::trace!(transactions, "committed a batch");
        }
    }
}

/// How long the writer looks for more work after a batch before it sleeps.
const SPIN: Duration = Duration::from_micros(60);

/// Waits for the next requests and takes up to [`MAX_BATCH`] of them; 0 once every sender is
/// gone. It first looks for a while without sleeping: a caller answered a moment ago often
/// writes again at once (a spawn loop, a job's next step), and waking a sleeping thread costs
/// more than the commit it waits for.
fn next_requests(rx: &mut mpsc::UnboundedReceiver<Request>, received: &mut Vec<Request>) -> usize {
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(request) => {
                received.push(request);
                while received.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(request) => received.push(request),
                        Err(_) => break,
                    }
                }
                return received.len();
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return 0,
            Err(mpsc::error::TryRecvError::Empty) if start.elapsed() < SPIN => {
                std::thread::yield_now();
            }
            Err(mpsc::error::TryRecvError::Empty) => {
                return rx.blocking_recv_many(received, MAX_BATCH);
            }
        }
    }
}

#[cfg(feature = "_fault-injection")]
fn inject(conn: &Connection, fault: crate::store::Fault) -> Result<()> {
    match fault {
        crate::store::Fault::DiskFull(full) => {
            let pages: i64 = if full {
                conn.query_row("PRAGMA page_count", [], |row| row.get(0))?
            } else {
                // The largest the build allows; SQLite lowers it to that.
                i64::from(u32::MAX)
            };
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
            Ok(())
        }
        crate::store::Fault::KillWriter => panic!("fault injection: the writer thread was killed"),
    }
}

/// Executes `batch` in one transaction and answers every request; how many transactions it
/// took. When the shared transaction fails because of one write (a constraint, a bad value),
/// each request is retried in a transaction of its own, so that one bad write cannot fail the
/// others. When it fails because of the database (busy past patience, disk full, I/O), every
/// request fails at once with that error: replaying them one by one would only fail again,
/// slowly.
fn commit_batch(conn: &Connection, batch: &mut Vec<Request>) -> usize {
    let ops: Vec<&WriteOp> = batch.iter().map(|r| &r.op).collect();
    match transaction(conn, &ops) {
        Ok(replies) => {
            for (request, reply) in batch.drain(..).zip(replies) {
                let _ = request.reply.send(Ok(reply));
            }
            1
        }
        Err(e) if batch.len() == 1 => {
            let request = batch.pop().expect("one request");
            let _ = request.reply.send(Err(e));
            1
        }
        Err(e) if fails_every_write(&e) => {
            tracing::warn!(error = %e, writes = batch.len(), "the job database refused a batch of writes");
            let message = e.to_string();
            for request in batch.drain(..) {
                let _ = request
                    .reply
                    .send(Err(Error::Database(message.clone().into())));
            }
            1
        }
        Err(_) => {
            let transactions = 1 + batch.len();
            for request in batch.drain(..) {
                let result = transaction(conn, &[&request.op])
                    .map(|mut replies| replies.pop().expect("one reply"));
                let _ = request.reply.send(result);
            }
            transactions
        }
    }
}

/// Whether `e` is the database's failure rather than one write's: any other write would meet
/// it too.
fn fails_every_write(e: &Error) -> bool {
    use rusqlite::ErrorCode::*;
    let Error::Database(source) = e else {
        return false;
    };
    source
        .downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|code| {
            matches!(
                code,
                DatabaseBusy
                    | DatabaseLocked
                    | DiskFull
                    | SystemIoFailure
                    | ReadOnly
                    | DatabaseCorrupt
                    | NotADatabase
                    | CannotOpen
                    | OutOfMemory
                    | FileLockingProtocolFailed
            )
        })
}

fn transaction(conn: &Connection, ops: &[&WriteOp]) -> Result<Vec<Reply>> {
    begin_immediate(conn)?;
    let mut tally = Tally::default();
    let applied =
        apply_all(conn, ops, &mut tally).and_then(|replies| tally.flush(conn).map(|()| replies));
    match applied {
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
    // SQLite rolls some failures back by itself (a full disk, an I/O error): then there is no
    // transaction left to roll back.
    if conn.is_autocommit() {
        return;
    }
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
fn apply_all(conn: &Connection, ops: &[&WriteOp], tally: &mut Tally) -> Result<Vec<Reply>> {
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
        let enqueued = enqueue::insert_jobs(conn, &jobs, tally)?;
        for ((i, _), enqueued) in inserts.iter().zip(enqueued) {
            replies[*i] = Some(Reply::Enqueued(enqueued));
        }
    }
    for i in steps {
        replies[i] = Some(apply(conn, ops[i], tally)?);
    }
    if !completions.is_empty() {
        let (positions, done): (Vec<usize>, Vec<Completion<'_>>) = completions.into_iter().unzip();
        for (i, reply) in positions
            .into_iter()
            .zip(finish::complete_jobs(conn, &done, tally)?)
        {
            replies[i] = Some(reply);
        }
    }
    for i in others {
        replies[i] = Some(apply(conn, ops[i], tally)?);
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
fn apply(conn: &Connection, op: &WriteOp, tally: &mut Tally) -> Result<Reply> {
    let now = crate::status::now_ms();
    if matches!(
        op,
        WriteOp::Enqueue(_) | WriteOp::EnqueueMany(_) | WriteOp::Claim(_) | WriteOp::FireTicks(_)
    ) {
        // These read the counters to apply limits: they see the batch's changes so far.
        tally.flush(conn)?;
    }
    Ok(match op {
        WriteOp::Enqueue(job) => Reply::Enqueued(
            enqueue::insert_jobs(conn, &[job], tally)?
                .pop()
                .expect("one reply per job"),
        ),
        WriteOp::EnqueueMany(jobs) => {
            let jobs: Vec<&NewJob> = jobs.iter().collect();
            Reply::EnqueuedMany(enqueue::insert_jobs(conn, &jobs, tally)?)
        }
        WriteOp::Retry { id, clear_journal } => {
            Reply::Retry(retry::retry(conn, *id, *clear_journal, now)?)
        }
        WriteOp::Claim(request) => Reply::Claimed(claim::claim(conn, request, tally)?),
        WriteOp::Finish {
            id,
            owner,
            attempt,
            finish,
            progress,
        } => Reply::Finished(finish::finish_job(
            conn,
            &finish::Attempt {
                id: id.to_string(),
                owner,
                attempt: *attempt,
            },
            finish,
            progress.as_deref(),
            now,
            tally,
        )?),
        WriteOp::Cancel { id } => Reply::Cancel(cancel::cancel(conn, *id, now)?),
        WriteOp::Heartbeat { owner, lease_until } => {
            Reply::Count(release::heartbeat(conn, owner, *lease_until)?)
        }
        WriteOp::ReleaseOwner { owner, why } => {
            Reply::Count(release::release_owner(conn, owner, *why, now, tally)?)
        }
        WriteOp::ReleaseExpired { owners, now } => {
            Reply::Count(release::release_expired(conn, owners, *now, tally)?)
        }
        WriteOp::AppendStep {
            id,
            owner,
            attempt,
            step,
        } => Reply::Changed(steps::append_step(conn, *id, owner, *attempt, step, now)?),
        WriteOp::SaveProgress {
            id,
            owner,
            attempt,
            progress,
        } => Reply::Changed(progress::save_progress(
            conn, *id, owner, *attempt, progress,
        )?),
        WriteOp::Prune { before, limit } => {
            Reply::Count(prune::prune_chunk(conn, *before, *limit)?)
        }
        WriteOp::Read(_) | WriteOp::Flush | WriteOp::Checkpoint | WriteOp::Vacuum { .. } => {
            Reply::Done
        }
        #[cfg(feature = "_fault-injection")]
        WriteOp::Inject(_) => Reply::Done,
        WriteOp::PutSchedules { put, undeclare } => {
            schedule::put_schedules(conn, put, undeclare, now)?;
            Reply::Done
        }
        WriteOp::RemoveSchedule { name } => Reply::Changed(schedule::remove_schedule(conn, name)?),
        WriteOp::FireTicks(ticks) => Reply::Fired(schedule::fire_ticks(conn, ticks, now, tally)?),
        WriteOp::Llm(write) => ledger::apply(conn, write, now)?,
    })
}

#[cfg(test)]
mod tests;
