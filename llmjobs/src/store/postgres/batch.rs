//! Group commit for PostgreSQL: the spawns and outcomes that arrive together go out together.
//!
//! Writers queue their write and wait for its reply, which comes once the transaction that
//! holds it has committed (so a spawn is durable, as the server's `synchronous_commit` makes
//! commits, before it returns). A committer takes everything queued (up to [`MAX_ROWS`] rows)
//! and writes it in one transaction: every job of every spawn in one multi-row `INSERT`, every
//! outcome in one multi-row `UPDATE`; once that committed and the writers have their replies,
//! one `NOTIFY` for the lot. While it commits, the next batch gathers. When a batch fails for a
//! reason that is not a lost race (an idempotency key held by other work, a bad row), each of
//! its writes is run again alone, so that one write's error is its own.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::finish::{self, Outcome};
use super::notify::{self, Notice};
use super::{CONFLICT_RETRIES, enqueue, is_conflict};
use crate::status::JobState;
use crate::store::{Enqueued, NewJob};
use crate::{Error, Result};

/// Rows (jobs inserted plus outcomes recorded) one transaction takes at most.
const MAX_ROWS: usize = 1024;

/// Transactions in flight at once. Batches touch the same counter rows (a name's `running`
/// count, say), so they commit one after another anyway; a second committer prepares its
/// batch while the first commits.
const COMMITTERS: usize = 2;

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
    /// Starts the committers; they end once the batcher is dropped and its queue is drained.
    pub(super) fn start(pool: PgPool, channel: String) -> Batcher {
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let channel: Arc<str> = channel.into();
        for _ in 0..COMMITTERS {
            tokio::spawn(commit_loop(pool.clone(), receiver.clone(), channel.clone()));
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

async fn commit_loop(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Write>>>,
    channel: Arc<str>,
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
        commit(&pool, batch, &channel).await;
    }
}

/// What a batch's transaction gives each of its writes.
enum Reply {
    Enqueued(Vec<Enqueued>),
    Finished(Option<JobState>),
}

/// Writes `batch` in one transaction and replies to each write; on a failure that is not a
/// lost race, each write again alone.
async fn commit(pool: &PgPool, batch: Vec<Write>, channel: &str) {
    let result = run(pool, &batch).await;
    match result {
        Ok((replies, notice)) => {
            for (write, reply) in batch.into_iter().zip(replies) {
                send(write, Ok(reply));
            }
            notify::tell(pool, &notice, channel).await;
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
                        notify::tell(pool, &notice, channel).await;
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
    let mut tries = 0u32;
    loop {
        let result = async {
            let mut tx = pool.begin().await?;
            match write_batch(&mut tx, batch).await {
                Ok(replies) => {
                    tx.commit().await?;
                    Ok(replies)
                }
                Err(e) => {
                    let _ = tx.rollback().await;
                    Err(e)
                }
            }
        }
        .await;
        match result {
            Err(e) if is_conflict(&e) && tries < CONFLICT_RETRIES => {
                tries += 1;
                tracing::debug!(error = %e, tries, "a batch of job writes lost a race; running it again");
                tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5)).await;
            }
            other => return other,
        }
    }
}

async fn write_batch(conn: &mut PgConnection, batch: &[Write]) -> Result<(Vec<Reply>, Notice)> {
    let now = crate::status::now_ms();
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
    let mut notice = Notice::default();
    let mut enqueued = enqueue::insert_jobs(conn, &jobs).await?.into_iter();
    notice.available = jobs
        .iter()
        .zip(enqueued.clone())
        .any(|(job, e)| matches!(e, Enqueued::Inserted { running: false }) && job.run_at <= now);
    let mut finished = if outcomes.is_empty() {
        Vec::new()
    } else {
        finish::finish_many(conn, &outcomes, now).await?
    }
    .into_iter();
    let mut replies = Vec::with_capacity(batch.len());
    for write in batch {
        match write {
            Write::Enqueue { jobs, .. } => {
                replies.push(Reply::Enqueued(
                    enqueued.by_ref().take(jobs.len()).collect(),
                ));
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
    Ok((replies, notice))
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
