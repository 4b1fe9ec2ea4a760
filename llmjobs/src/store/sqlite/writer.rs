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
mod tests {
    use super::*;
    use crate::store::{LocalClaim, NameQuota};

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
            idempotency_key: None,
            idempotency_window: None,
            budget: None,
            claimed_by: Some(LocalClaim {
                owner: owner.into(),
                lease_until: i64::MAX,
                name_limit: None,
                key_limit: None,
                global_limit: None,
            }),
        }
    }

    fn insert(conn: &Connection, jobs: &[NewJob]) {
        let inserts: Vec<WriteOp> = jobs.iter().cloned().map(WriteOp::Enqueue).collect();
        transaction(conn, &inserts.iter().collect::<Vec<_>>()).unwrap();
    }

    fn finish(job: &NewJob, owner: &str, attempt: u32, finish: Finish) -> WriteOp {
        WriteOp::Finish {
            id: job.id,
            owner: owner.into(),
            attempt,
            finish,
            progress: None,
        }
    }

    fn complete(job: &NewJob, owner: &str, result: &str) -> WriteOp {
        let result = result.into();
        finish(job, owner, 1, Finish::Completed { result })
    }

    fn state(conn: &Connection, job: &NewJob) -> (String, u32, Option<String>) {
        conn.query_row(
            "SELECT status, attempts, error FROM llmjobs_jobs WHERE id = ?",
            [job.id.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    }

    /// The counters say what counting the rows says.
    fn assert_counters_match_rows(conn: &Connection) {
        let rows = |sql: &str| -> Vec<(String, String, i64)> {
            let mut stmt = conn.prepare(sql).unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(|row| row.unwrap())
                .collect()
        };
        assert_eq!(
            rows("SELECT name, status, n FROM llmjobs_counts WHERE n <> 0 ORDER BY name, status"),
            rows(
                "SELECT name, status, count(*) FROM llmjobs_jobs GROUP BY name, status \
                 ORDER BY name, status"
            ),
            "jobs per name and state"
        );
        assert_eq!(
            rows(
                "SELECT concurrency_key, 'running', n FROM llmjobs_running_keys WHERE n <> 0 \
                 ORDER BY concurrency_key"
            ),
            rows(
                "SELECT concurrency_key, 'running', count(*) FROM llmjobs_jobs \
                 WHERE status = 'running' AND concurrency_key IS NOT NULL \
                 GROUP BY concurrency_key ORDER BY concurrency_key"
            ),
            "running jobs per key"
        );
    }

    fn finished(reply: &Reply) -> Option<JobState> {
        match reply {
            Reply::Finished(state) => *state,
            other => panic!("not a finish reply: {other:?}"),
        }
    }

    /// Sends `ops` through `commit_batch` as one batch; the replies and the transaction count.
    fn commit(conn: &Connection, ops: Vec<WriteOp>) -> (Vec<Result<Reply>>, usize) {
        let mut receivers = Vec::new();
        let mut batch = Vec::new();
        for op in ops {
            let (reply, rx) = oneshot::channel();
            batch.push(Request { op, reply });
            receivers.push(rx);
        }
        let transactions = commit_batch(conn, &mut batch);
        let replies = receivers
            .into_iter()
            .map(|mut rx| rx.try_recv().expect("every request answered"))
            .collect();
        (replies, transactions)
    }

    #[test]
    fn completions_batched_together_change_only_their_owners_running_rows() {
        let conn = connection();
        let jobs: Vec<NewJob> = (0..5).map(|_| running_job("me")).collect();
        insert(&conn, &jobs);

        let ops = [
            complete(&jobs[0], "me", "0"),
            complete(&jobs[1], "someone else", "1"),
            complete(&jobs[2], "me", "2"),
            complete(&jobs[3], "me", "3"),
            complete(&jobs[0], "me", "again"),
        ];
        let replies = transaction(&conn, &ops.iter().collect::<Vec<_>>()).unwrap();
        let changed: Vec<bool> = replies.iter().map(|r| finished(r).is_some()).collect();
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
        assert_eq!(finished(&replies[0]), None);
        assert_eq!(finished(&replies[1]), Some(JobState::Completed));
    }

    #[test]
    fn local_claims_in_one_batch_take_only_the_room_their_limits_leave() {
        let conn = connection();
        insert(&conn, &[running_job("other")]);
        let limited = |global: Option<u32>, name: Option<u32>| {
            let mut job = running_job("me");
            if let Some(claim) = &mut job.claimed_by {
                claim.global_limit = global;
                claim.name_limit = name;
            }
            WriteOp::Enqueue(job)
        };
        // Global limit 3, one job already running: two more fit, in arrival order, counting
        // an unlimited claim of the same batch; then the rest wait, pending.
        let ops = vec![
            limited(Some(3), None),
            WriteOp::Enqueue(running_job("me")),
            limited(Some(3), None),
            limited(Some(5), None),
        ];
        let (replies, _) = commit(&conn, ops);
        let running: Vec<bool> = replies
            .into_iter()
            .map(|r| matches!(r, Ok(Reply::Enqueued(Enqueued::Inserted { running: true }))))
            .collect();
        // The last one had room under its own limit (5), but a job queued before it waits.
        assert_eq!(running, [true, true, false, false]);
        let counted: i64 = conn
            .query_row(
                "SELECT sum(n) FROM llmjobs_counts WHERE status = 'running'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(counted, 3);
    }

    #[test]
    fn an_outcome_of_an_older_attempt_changes_nothing() {
        let conn = connection();
        let job = running_job("me");
        insert(&conn, std::slice::from_ref(&job));
        conn.execute("UPDATE llmjobs_jobs SET attempts = 2", [])
            .unwrap();
        let replies = transaction(&conn, &[&complete(&job, "me", "stale")]).unwrap();
        assert_eq!(finished(&replies[0]), None, "attempt 1 is over");
        let step = WriteOp::AppendStep {
            id: job.id,
            owner: "me".into(),
            attempt: 1,
            step: StepRecord {
                seq: 0,
                name: "llm".into(),
                output: "stale".into(),
            },
        };
        let replies = transaction(&conn, &[&step]).unwrap();
        assert!(matches!(replies[0], Reply::Changed(false)));
        assert_eq!(state(&conn, &job).0, "running");
    }

    #[test]
    fn a_requested_cancel_wins_over_any_outcome() {
        let conn = connection();
        let jobs: Vec<NewJob> = (0..3).map(|_| running_job("me")).collect();
        insert(&conn, &jobs);
        conn.execute("UPDATE llmjobs_jobs SET cancel_requested = 1", [])
            .unwrap();
        let outcomes = [
            complete(&jobs[0], "me", "done"),
            finish(
                &jobs[1],
                "me",
                1,
                Finish::Retry {
                    error: "503".into(),
                    run_at: 0,
                },
            ),
            finish(
                &jobs[2],
                "me",
                1,
                Finish::Failed {
                    error: "400".into(),
                    needs_review: false,
                },
            ),
        ];
        let replies = transaction(&conn, &outcomes.iter().collect::<Vec<_>>()).unwrap();
        for (job, reply) in jobs.iter().zip(&replies) {
            assert_eq!(finished(reply), Some(JobState::Cancelled));
            assert_eq!(state(&conn, job).0, "cancelled");
        }
    }

    #[test]
    fn a_dead_owners_last_attempt_fails_and_a_departing_owners_is_given_back() {
        let conn = connection();
        let jobs: Vec<NewJob> = (0..4).map(|_| running_job("gone")).collect();
        insert(&conn, &jobs);
        let set = |job: &NewJob, sql: &str| {
            conn.execute(
                &format!("UPDATE llmjobs_jobs SET {sql} WHERE id = ?"),
                [job.id.to_string()],
            )
            .unwrap();
        };
        // jobs[0]: attempt 1 of 1, a retry-less job: it may still be interrupted twice more.
        set(&jobs[1], "attempts = 3");
        set(&jobs[2], "attempts = 3, max_attempts = 5");
        set(&jobs[3], "cancel_requested = 1");
        let mut tally = Tally::default();
        release::release_owner(&conn, "gone", Release::Dead, 1, &mut tally).unwrap();
        tally.flush(&conn).unwrap();
        assert_counters_match_rows(&conn);
        assert_eq!(state(&conn, &jobs[0]).0, "pending");
        let (status, _, error) = state(&conn, &jobs[1]);
        assert_eq!(status, "failed");
        assert!(error.unwrap().contains("attempt 3 of 3 was interrupted"));
        assert_eq!(state(&conn, &jobs[2]).0, "pending");
        assert_eq!(state(&conn, &jobs[3]).0, "cancelled");

        let departing = running_job("leaving");
        insert(&conn, std::slice::from_ref(&departing));
        release::release_owner(&conn, "leaving", Release::HandBack, 1, &mut tally).unwrap();
        tally.flush(&conn).unwrap();
        assert_counters_match_rows(&conn);
        let (status, attempts, _) = state(&conn, &departing);
        assert_eq!(
            (status.as_str(), attempts),
            ("pending", 0),
            "the attempt is given back"
        );
    }

    /// Every write that changes a job's state, in one batch and alone, keeps the counters equal
    /// to what counting the rows gives (they are kept by the writer, not by triggers).
    #[test]
    fn the_counters_follow_every_change_of_state() {
        let conn = connection();
        let run = |ops: Vec<WriteOp>| {
            for (reply, _) in commit(&conn, ops).0.into_iter().zip(0..) {
                reply.unwrap();
            }
            assert_counters_match_rows(&conn);
        };
        let named = |name: &str, key: Option<&str>, owner: Option<&str>| {
            let mut job = running_job(owner.unwrap_or("nobody"));
            job.name = name.into();
            job.concurrency_key = key.map(Into::into);
            job.max_attempts = 5;
            if owner.is_none() {
                job.claimed_by = None;
            }
            job
        };
        // Inserted running (local hand-off) and pending, with and without keys.
        let running: Vec<NewJob> = (0..6)
            .map(|i| named(["a", "b"][i % 2], [Some("k"), None][i % 2], Some("me")))
            .collect();
        let pending: Vec<NewJob> = (0..6)
            .map(|i| named(["a", "c"][i % 2], [Some("k"), Some("j")][i % 2], None))
            .collect();
        run(running
            .iter()
            .chain(&pending)
            .cloned()
            .map(WriteOp::Enqueue)
            .collect());
        // Claimed, by two claims in one batch, under limits.
        let claim = |slots| {
            WriteOp::Claim(ClaimRequest {
                owner: "me".into(),
                now: 1,
                lease_until: i64::MAX,
                slots,
                names: vec![
                    NameQuota {
                        name: "a",
                        limit: Some(5),
                    },
                    NameQuota {
                        name: "c",
                        limit: None,
                    },
                ]
                .into(),
                global_limit: Some(100),
            })
        };
        run(vec![claim(1), claim(1)]);
        // Every outcome, a cancel of a pending and of a running job, and a completion whose
        // cancel was requested first.
        run(vec![
            WriteOp::Cancel { id: pending[5].id },
            WriteOp::Cancel { id: running[5].id },
        ]);
        run(vec![
            complete(&running[0], "me", "1"),
            complete(&running[5], "me", "1"),
            finish(
                &running[1],
                "me",
                1,
                Finish::Failed {
                    error: "no".into(),
                    needs_review: true,
                },
            ),
            finish(
                &running[2],
                "me",
                1,
                Finish::Retry {
                    error: "again".into(),
                    run_at: 0,
                },
            ),
            finish(&running[3], "me", 1, Finish::Cancelled),
        ]);
        // Retried by hand, from failed and from cancelled.
        run(vec![
            WriteOp::Retry {
                id: running[1].id,
                clear_journal: false,
            },
            WriteOp::Retry {
                id: running[3].id,
                clear_journal: true,
            },
        ]);
        // A corrupt row and one whose crashes used up its attempts fail at the next claim.
        conn.execute(
            "UPDATE llmjobs_jobs SET max_attempts = 'many' WHERE id = ?",
            [pending[4].id.to_string()],
        )
        .unwrap();
        conn.execute(
            "UPDATE llmjobs_jobs SET attempts = 9 WHERE id = ?",
            [pending[3].id.to_string()],
        )
        .unwrap();
        run(vec![claim(10)]);
        let failed: i64 = conn
            .query_row(
                "SELECT count(*) FROM llmjobs_jobs WHERE status = 'failed' AND id IN (?, ?)",
                [pending[3].id.to_string(), pending[4].id.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            failed, 2,
            "the claim failed the corrupt and the exhausted job"
        );
        // Released: handed back, dead, and past their lease.
        run(vec![WriteOp::ReleaseOwner {
            owner: "me".into(),
            why: Release::HandBack,
        }]);
        run(vec![claim(3)]);
        run(vec![WriteOp::ReleaseOwner {
            owner: "me".into(),
            why: Release::Dead,
        }]);
        run(vec![claim(10)]);
        conn.execute("UPDATE llmjobs_jobs SET lease_until = 0", [])
            .unwrap();
        run(vec![WriteOp::ReleaseExpired {
            owners: vec!["me".into()],
            now: 10,
        }]);
        // Pruned: every finished job.
        run(vec![WriteOp::Prune {
            before: i64::MAX,
            limit: 3,
        }]);
        run(vec![WriteOp::Prune {
            before: i64::MAX,
            limit: 100,
        }]);
        let left: i64 = conn
            .query_row("SELECT count(*) FROM llmjobs_jobs", [], |r| r.get(0))
            .unwrap();
        assert!(left > 0, "some jobs are still unfinished");
    }

    #[test]
    fn expired_leases_are_released_only_for_the_owners_named() {
        let conn = connection();
        let (mine, theirs) = (running_job("me"), running_job("them"));
        insert(&conn, &[mine.clone(), theirs.clone()]);
        conn.execute("UPDATE llmjobs_jobs SET lease_until = 0", [])
            .unwrap();
        let mut tally = Tally::default();
        let released =
            release::release_expired(&conn, &["them".to_string()], 10, &mut tally).unwrap();
        tally.flush(&conn).unwrap();
        assert_eq!(released, 1);
        assert_counters_match_rows(&conn);
        assert_eq!(state(&conn, &mine).0, "running");
        assert_eq!(state(&conn, &theirs).0, "pending");
    }

    /// Log lines written by a test's subscriber.
    #[derive(Clone, Default)]
    struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl LogBuffer {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl std::io::Write for LogBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
        type Writer = LogBuffer;

        fn make_writer(&'a self) -> LogBuffer {
            self.clone()
        }
    }

    #[test]
    fn a_full_disk_fails_the_whole_batch_in_one_transaction() {
        let conn = connection();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
            .unwrap();
        let big = |n: usize| {
            let mut job = running_job("me");
            job.args = format!("{{\"pad\": \"{}\"}}", "x".repeat(n));
            WriteOp::Enqueue(job)
        };
        let logs = LogBuffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish();
        let (replies, transactions) = tracing::subscriber::with_default(subscriber, || {
            commit(&conn, (0..20).map(|_| big(100_000)).collect())
        });
        assert_eq!(transactions, 1, "no replay one by one");
        let logged = logs.text();
        assert!(
            !logged.contains("rolling back"),
            "SQLite rolled the transaction back itself; no second rollback: {logged}"
        );
        for reply in replies {
            let message = reply.unwrap_err().to_string();
            assert!(message.contains("full"), "{message}");
        }
        // The connection is usable again, with no transaction left open.
        assert!(conn.is_autocommit());
        conn.query_row("PRAGMA max_page_count = 100000", [], |_| Ok(()))
            .unwrap();
        let (replies, _) = commit(&conn, vec![big(10)]);
        assert!(replies[0].is_ok());
    }

    #[test]
    fn a_bad_write_is_replayed_alone_and_the_others_commit() {
        let conn = connection();
        let first = running_job("me");
        insert(&conn, std::slice::from_ref(&first));
        let fresh = running_job("me");
        // The same id again breaks the primary key: that write alone fails.
        let ops = vec![
            WriteOp::Enqueue(fresh.clone()),
            WriteOp::Enqueue(first.clone()),
            complete(&first, "me", "done"),
        ];
        let (replies, transactions) = commit(&conn, ops);
        assert_eq!(transactions, 4, "the batch, then each write alone");
        assert!(replies[0].is_ok());
        assert!(replies[1].is_err());
        assert!(matches!(
            replies[2],
            Ok(Reply::Finished(Some(JobState::Completed)))
        ));
        assert_eq!(state(&conn, &fresh).0, "running");
    }
}
