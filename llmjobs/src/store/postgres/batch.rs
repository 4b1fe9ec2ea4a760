//! Group commit for PostgreSQL: the spawns and outcomes that arrive together go out together.
//!
//! Writers queue their write and wait for its reply, which comes once the transaction that
//! holds it has committed (so a spawn is durable, as the server's `synchronous_commit` makes
//! commits, before it returns). A committer takes everything queued (up to [`MAX_ROWS`] rows)
//! and writes it in one transaction: every job of every spawn in one multi-row `INSERT`, every
//! outcome in one multi-row `UPDATE`, both in one statement committed on its own when no job
//! needs a decision between statements (see [`plain`]). Once that committed and the writers have
//! their replies, the notice for the lot goes to the [`Notifier`], which sends it from a task
//! of its own, and the committer takes the next batch. While it commits, the next batch
//! gathers. When a batch fails for a reason that is not a lost race (an idempotency key held by
//! other work, a bad row), each of its writes is run again alone, so that one write's error is
//! its own.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::finish::{self, Outcome};
use super::notify::{Notice, Notifier};
use super::{CONFLICT_RETRIES, enqueue, is_conflict};
use crate::status::JobState;
use crate::store::{Enqueued, NewJob};
use crate::{Error, Result};

mod plain;

/// Rows (jobs inserted plus outcomes recorded) one transaction takes at most.
const MAX_ROWS: usize = 1024;

/// Transactions in flight at once: while one waits for its commit's WAL flush, the others
/// gather and send theirs, and PostgreSQL flushes commits that wait together at once. Batches
/// of different connections change different counter rows (their slots), so they do not queue
/// on each other.
pub(super) const COMMITTERS: usize = 2;

/// A write waiting for its batch.
pub(super) enum Write {
    Enqueue {
        jobs: Vec<NewJob>,
        reply: oneshot::Sender<Result<Vec<Enqueued>>>,
    },
    Finish {
        outcome: Outcome,
        reply: oneshot::Sender<Result<Option<JobState>>>,
    },
}

impl Write {
    fn rows(&self) -> usize {
        match self {
            Write::Enqueue { jobs, .. } => jobs.len(),
            Write::Finish { .. } => 1,
        }
    }
}

/// The queue of writes, and the committers that drain it.
pub(super) struct Batcher {
    queue: mpsc::UnboundedSender<Write>,
}

impl Batcher {
    /// Starts the committers, which write on connections of `writes` (see [`writes_options`]);
    /// they end once the batcher is dropped and its queue is drained. Notices go out on `pool`.
    pub(super) fn start(writes: PgPool, pool: PgPool, channel: String) -> Batcher {
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let notifier = Arc::new(Notifier::start(pool, channel));
        for _ in 0..COMMITTERS {
            tokio::spawn(commit_loop(
                writes.clone(),
                receiver.clone(),
                notifier.clone(),
            ));
        }
        Batcher { queue }
    }

    /// Inserts `jobs` in the next batch; the reply comes once it committed.
    pub(super) async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let (reply, receive) = oneshot::channel();
        self.queue
            .send(Write::Enqueue { jobs, reply })
            .map_err(|_| Error::Shutdown)?;
        receive.await.map_err(|_| Error::Shutdown)?
    }

    /// Records `outcome` in the next batch; the reply comes once it committed.
    pub(super) async fn finish(&self, outcome: Outcome) -> Result<Option<JobState>> {
        let (reply, receive) = oneshot::channel();
        self.queue
            .send(Write::Finish { outcome, reply })
            .map_err(|_| Error::Shutdown)?;
        receive.await.map_err(|_| Error::Shutdown)?
    }
}

/// The options of the committers' connections: the store's, with every statement planned
/// once (a generic plan) instead of at each execution. A batch's statements have one shape
/// whatever the batch (arrays of any length, rows found by their primary key), so the plan
/// PostgreSQL makes for one batch fits them all; by default it planned them anew for most
/// executions, which cost the server more than running them (W7: 5,000–5,800 → 6,100–6,400
/// jobs/s with one worker process, measured with the setting made server-wide).
pub(super) fn writes_options(options: &PgConnectOptions) -> PgConnectOptions {
    options
        .clone()
        .options([("plan_cache_mode", "force_generic_plan")])
}

async fn commit_loop(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Write>>>,
    notifier: Arc<Notifier>,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut rows = first.rows();
            let mut batch = vec![first];
            while rows < MAX_ROWS {
                match receiver.try_recv() {
                    Ok(write) => {
                        rows += write.rows();
                        batch.push(write);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        commit(&pool, batch, &notifier).await;
    }
}

/// What a batch's transaction gives each of its writes.
enum Reply {
    Enqueued(Vec<Enqueued>),
    Finished(Option<JobState>),
}

/// Writes `batch` in one transaction and replies to each write; on a failure that is not a
/// lost race, each write again alone.
async fn commit(pool: &PgPool, batch: Vec<Write>, notifier: &Notifier) {
    let result = run(pool, &batch).await;
    match result {
        Ok((replies, notice)) => {
            for (write, reply) in batch.into_iter().zip(replies) {
                send(write, Ok(reply));
            }
            notifier.send(notice);
        }
        Err(e) if batch.len() == 1 => {
            let write = batch.into_iter().next().expect("one write");
            send(write, Err(e));
        }
        Err(e) => {
            tracing::debug!(error = %e, writes = batch.len(), "a batch of job writes failed; writing each alone");
            for write in batch {
                let alone = std::slice::from_ref(&write);
                match run(pool, alone).await {
                    Ok((mut replies, notice)) => {
                        send(write, Ok(replies.pop().expect("one reply")));
                        notifier.send(notice);
                    }
                    Err(e) => send(write, Err(e)),
                }
            }
        }
    }
}

fn send(write: Write, result: Result<Reply>) {
    match write {
        Write::Enqueue { reply, .. } => {
            let _ = reply.send(result.map(|r| match r {
                Reply::Enqueued(enqueued) => enqueued,
                Reply::Finished(_) => unreachable!("an enqueue's reply"),
            }));
        }
        Write::Finish { reply, .. } => {
            let _ = reply.send(result.map(|r| match r {
                Reply::Finished(state) => state,
                Reply::Enqueued(_) => unreachable!("an outcome's reply"),
            }));
        }
    }
}

/// One transaction for `batch`, run again when it loses a deadlock or a serialization race;
/// its replies, and the notice to send once it committed.
async fn run(pool: &PgPool, batch: &[Write]) -> Result<(Vec<Reply>, Notice)> {
    let one_statement = plain::is_plain(batch);
    let mut tries = 0u32;
    loop {
        let now = crate::status::now_ms();
        let result = if one_statement {
            plain::write(pool, batch, now).await
        } else {
            in_transaction(pool, batch, now).await
        };
        match result {
            Err(e) if is_conflict(&e) && tries < CONFLICT_RETRIES => {
                tries += 1;
                tracing::debug!(error = %e, tries, "a batch of job writes lost a race; running it again");
                tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5)).await;
            }
            Err(e) => return Err(e),
            Ok((enqueued, finished)) => return Ok(replies(batch, enqueued, finished, now)),
        }
    }
}

async fn in_transaction(
    pool: &PgPool,
    batch: &[Write],
    now: i64,
) -> Result<(Vec<Enqueued>, Vec<Option<JobState>>)> {
    let mut tx = pool.begin().await?;
    match write_batch(&mut tx, batch, now).await {
        Ok(written) => {
            tx.commit().await?;
            Ok(written)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Every insert of `batch` in one statement, then every outcome in another: what each job's
/// insert did, and each outcome's state.
async fn write_batch(
    conn: &mut PgConnection,
    batch: &[Write],
    now: i64,
) -> Result<(Vec<Enqueued>, Vec<Option<JobState>>)> {
    let mut jobs = Vec::new();
    let mut outcomes = Vec::new();
    for write in batch {
        match write {
            Write::Enqueue { jobs: some, .. } => jobs.extend(some.iter().cloned()),
            Write::Finish { outcome, .. } => outcomes.push(outcome),
        }
    }
    if !jobs.is_empty() && !outcomes.is_empty() {
        lock_counters(conn, &jobs, &outcomes).await?;
    }
    let enqueued = enqueue::insert_jobs(conn, &jobs).await?;
    let finished = if outcomes.is_empty() {
        Vec::new()
    } else {
        finish::finish_many(conn, &outcomes, now).await?
    };
    Ok((enqueued, finished))
}

/// Each write's reply, from what the inserts (in the order of the batch's jobs) and the
/// outcomes (in the order of its outcomes) did; and the notice that tells the others.
fn replies(
    batch: &[Write],
    enqueued: Vec<Enqueued>,
    finished: Vec<Option<JobState>>,
    now: i64,
) -> (Vec<Reply>, Notice) {
    let mut notice = Notice::default();
    let mut enqueued = enqueued.into_iter();
    let mut finished = finished.into_iter();
    let mut replies = Vec::with_capacity(batch.len());
    for write in batch {
        match write {
            Write::Enqueue { jobs, .. } => {
                let done: Vec<Enqueued> = enqueued.by_ref().take(jobs.len()).collect();
                notice.available |= jobs.iter().zip(&done).any(|(job, e)| {
                    matches!(e, Enqueued::Inserted { running: false }) && job.run_at <= now
                });
                replies.push(Reply::Enqueued(done));
            }
            Write::Finish { outcome, .. } => {
                let state = finished.next().expect("one state per outcome");
                if state.is_some_and(JobState::is_terminal) {
                    notice.ended.push(outcome.id);
                }
                replies.push(Reply::Finished(state));
            }
        }
    }
    (replies, notice)
}

/// Locks, in one order, every counter row (of this connection's slot, the only ones its
/// triggers change) a batch of inserts and outcomes may change. Each of
/// its two statements changes counters in (name, status) order, but the two together would
/// not: two batches, or a batch and another process's claim, could each hold a row the other
/// needs next, and wait for PostgreSQL's deadlock timeout (a second) to find out.
async fn lock_counters(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    outcomes: &[&Outcome],
) -> Result<()> {
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let keys: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.concurrency_key.as_deref())
        .collect();
    let ids: Vec<String> = outcomes.iter().map(|o| o.id.to_string()).collect();
    // Sorted before they are locked; the counts before the keys, as the triggers go.
    sqlx::query(
        "WITH ended AS (SELECT name, concurrency_key FROM llmjobs_jobs \
             WHERE id = ANY($3::text[]::uuid[])), \
         counts AS (SELECT 1 FROM llmjobs_counts WHERE slot = llmjobs_counter_slot() \
             AND (name = ANY($1) OR name IN (SELECT name FROM ended)) \
             ORDER BY name, status FOR UPDATE), \
         keys AS (SELECT 1 FROM llmjobs_running_keys WHERE slot = llmjobs_counter_slot() \
             AND (concurrency_key = ANY($2) \
                 OR concurrency_key IN (SELECT concurrency_key FROM ended)) \
             ORDER BY concurrency_key FOR UPDATE) \
         SELECT (SELECT count(*) FROM counts), (SELECT count(*) FROM keys)",
    )
    .bind(&names)
    .bind(&keys)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
