//! Claiming jobs and running them: the dispatch loop, the workers, and the local hand-off of
//! jobs inserted already running.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{RunningJob, Shared, panic};
use crate::status::{JobState, now_ms};
use crate::store::{ClaimRequest, ClaimedJob, Enqueued, Finish, NewJob, Terminal};
use crate::{Error, JobContext, Result};

/// The insert of a handed-off job: the job to run once it is committed, or `None`.
type Insert = Pin<Box<dyn Future<Output = Option<ClaimedJob>> + Send>>;

impl Shared {
    /// Inserts `job`, already claimed by this worker (`job.claimed_by`), and runs it here with
    /// no claim round trip: the local hand-off of a new job.
    ///
    /// A worker task of its own does everything from the insert on, so a caller that stops
    /// waiting (a dropped `spawn`) leaves the job either not inserted, or inserted and running.
    /// The receiver says whether the insert committed. When a limit of the job is reached at
    /// that moment, the job is inserted pending instead, for a claim. `Err(job)` when this
    /// process has no free slot, runs no jobs, or is stopping: insert it as a pending job.
    pub(crate) fn hand_off(
        self: &Arc<Self>,
        job: NewJob,
    ) -> std::result::Result<oneshot::Receiver<Result<Enqueued>>, Box<NewJob>> {
        if !self.settings.run_jobs {
            return Err(Box::new(job));
        }
        let mut running = self.running.lock().expect("running lock");
        if running.closed || running.jobs.len() >= self.settings.concurrency as usize {
            return Err(Box::new(job));
        }
        let token = self.abort.child_token();
        running.jobs.insert(
            job.id,
            RunningJob {
                token: token.clone(),
                attempt: 1,
                unproven: false,
            },
        );
        let claimed = ClaimedJob {
            id: job.id,
            name: job.name.clone(),
            args: job.args.clone(),
            attempts: 1,
            max_attempts: job.max_attempts,
            fresh: true,
        };
        let span = job_span(&claimed);
        let (tx, rx) = oneshot::channel();
        let shared = self.clone();
        // Boxed, so that the insert's state is freed once it is done instead of taking room in
        // the task for as long as the job runs.
        let insert: Insert = Box::pin(async move {
            let enqueued = shared.store.enqueue(job).await;
            let runs = matches!(enqueued, Ok(Enqueued::Inserted { running: true }));
            if !runs {
                // Not inserted, or inserted pending (a limit was reached, or an idempotency key
                // named an existing job): the slot goes back; a pending job waits for a claim.
                shared.forget_running(claimed.id, 1);
            }
            let _ = tx.send(enqueued);
            runs.then_some(claimed)
        });
        // Spawned under the lock that shutdown takes to close the runtime: the task is
        // tracked before shutdown waits for the workers.
        self.workers
            .spawn(run_inserted(self.clone(), insert, token).instrument(span));
        Ok(rx)
    }
}

async fn run_inserted(shared: Arc<Shared>, insert: Insert, token: CancellationToken) {
    if let Some(job) = insert.await {
        run_job(shared, job, token).await;
    }
}

/// Claims jobs while there is room, and sleeps until woken or the poll interval passes.
pub(super) async fn dispatch(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if shared.stop_claiming.is_cancelled() {
            return;
        }
        let free = (shared.settings.concurrency as usize).saturating_sub(shared.running_count());
        let mut full_batch = false;
        if free > 0 {
            let now = now_ms();
            let request = ClaimRequest {
                owner: shared.owner.clone(),
                now,
                lease_until: now + shared.settings.lease.as_millis() as i64,
                slots: u32::try_from(free).unwrap_or(u32::MAX),
                names: shared.quotas.clone(),
                global_limit: shared.settings.global_concurrency,
            };
            match shared.store.claim(request).await {
                Ok(jobs) => {
                    backoff = Duration::from_millis(50);
                    full_batch = jobs.len() == free;
                    for job in jobs {
                        start_job(&shared, job);
                    }
                }
                Err(Error::Shutdown) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming jobs failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if full_batch {
            // More may be waiting: claim again once a slot frees, not after the poll interval.
            continue_after_wake_or(&shared, Duration::from_millis(5)).await;
        } else {
            continue_after_wake_or(&shared, shared.settings.poll_interval).await;
        }
    }
}

async fn continue_after_wake_or(shared: &Shared, interval: Duration) {
    tokio::select! {
        _ = shared.wake.notified() => {}
        _ = tokio::time::sleep(interval) => {}
        _ = shared.stop_claiming.cancelled() => {}
    }
}

fn start_job(shared: &Arc<Shared>, job: ClaimedJob) {
    let token = shared.abort.child_token();
    let mut running = shared.running.lock().expect("running lock");
    if running.closed {
        // Shutdown hands the claimed row back.
        return;
    }
    let previous = running.jobs.insert(
        job.id,
        RunningJob {
            token: token.clone(),
            attempt: job.attempts,
            unproven: false,
        },
    );
    if let Some(previous) = previous {
        // An older attempt of this job still runs here: the row was taken from this worker
        // (its lease ran out while it stalled) and it has now claimed the job again. The old
        // attempt's writes are fenced off by its attempt number; stop it.
        previous.token.cancel();
    }
    let span = job_span(&job);
    shared
        .workers
        .spawn(run_job(shared.clone(), job, token).instrument(span));
}

fn job_span(job: &ClaimedJob) -> tracing::Span {
    tracing::info_span!(
        "llmjobs.job",
        job.name = %job.name,
        job.id = %job.id,
        job.attempt = job.attempts,
    )
}

/// Runs one attempt and records how it ended.
async fn run_job(shared: Arc<Shared>, mut job: ClaimedJob, token: CancellationToken) {
    let id = job.id;
    // The arguments are needed only to build the body: not kept while it runs.
    let args = std::mem::take(&mut job.args);
    let outcome = attempt(&shared, &job, args, &token).await;
    // The body is done: its slot can take the next job while the outcome is committed (the
    // database still counts the job as running until then, which only errs on the safe side
    // for limits shared with other processes).
    shared.forget_running(id, job.attempts);
    let Some((finish, progress)) = outcome else {
        // Handed back at shutdown: nothing changed for waiters.
        return;
    };
    // Boxed: the task keeps this future's space for its whole life, while the job
    // waits (W3 counts bytes per waiting job), though it is needed only at the end.
    match Box::pin(record_finish(&shared, &job, finish, progress)).await {
        Some((state, finish)) if state.is_terminal() => {
            let end = match Terminal::of(&job.name, &finish) {
                Some(end) if end.state == state => end,
                // A cancel requested while the attempt ended wins over its outcome.
                _ => Terminal::cancelled(&job.name),
            };
            shared.notify_finished(id, Some(end));
        }
        _ => shared.notify_changed(id),
    }
    // The slot was freed before the outcome committed. On a networked store (the one that
    // sends hints), a claim made meanwhile ran on another connection and still counted the
    // job against its limits (counted in the database, across processes): one more claim now
    // may find room it did not. (SQLite's claims queue behind the outcome in its writer.)
    if shared.is_hinted() {
        shared.wake_dispatcher();
    }
}

/// Runs the body; `None` when the runtime is shutting down and the job is handed back.
async fn attempt(
    shared: &Arc<Shared>,
    job: &ClaimedJob,
    args: String,
    token: &CancellationToken,
) -> Option<(Finish, Option<String>)> {
    let Some(entry) = shared.registry.get(job.name.as_str()) else {
        // Claims only ask for registered names; a row renamed under us is a corrupt row.
        return Some((
            Finish::Failed {
                error: format!("no job named `{}` is registered in this worker", job.name),
                needs_review: false,
            },
            None,
        ));
    };
    let ctx = JobContext::new(shared.clone(), job, entry.registration.name, token.clone());
    let body = match (entry.registration.run)(ctx.clone(), &args) {
        Ok(body) => body,
        Err(message) => {
            tracing::warn!(error = %message, "stored arguments do not deserialize");
            return Some((
                Finish::Failed {
                    error: message,
                    needs_review: false,
                },
                None,
            ));
        }
    };
    drop(args);
    let limit = entry.config.timeout.or(shared.settings.default_timeout);
    // The timer lives on the heap, and only for jobs with a timeout: every waiting job's task
    // keeps its future's full size.
    let mut deadline = limit.map(|limit| Box::pin(tokio::time::sleep(limit)));
    let outcome = tokio::select! {
        outcome = panic::catch(body) => outcome,
        () = async { deadline.as_mut().expect("a deadline").await }, if deadline.is_some() => {
            Err(crate::JobError::msg(format_args!(
                "attempt timed out after {:?}",
                limit.unwrap_or_default()
            )))
        }
        _ = token.cancelled() => {
            if shared.abort.is_cancelled() {
                tracing::info!("job handed back at shutdown");
                return None;
            }
            if shared.is_unproven(job) {
                // Its row goes back to the queue, fenced by this attempt: nothing changes if
                // another worker took the job over meanwhile.
                return Some((
                    Finish::Retry {
                        error: format!(
                            "attempt {} was interrupted: its worker lost the database connection \
                             that proves it alive, so it stopped the job rather than risk \
                             running it twice",
                            job.attempts
                        ),
                        run_at: now_ms(),
                    },
                    ctx.final_progress(),
                ));
            }
            tracing::info!("job cancelled");
            return Some((Finish::Cancelled, ctx.final_progress()));
        }
    };
    drop(deadline);
    let progress = ctx.final_progress();
    let finish = match outcome {
        Ok(result) => {
            tracing::debug!("job completed");
            Finish::Completed { result }
        }
        Err(error) => {
            let retries_left = job.attempts < job.max_attempts;
            let message = error.to_string();
            match error.kind() {
                crate::ErrorKind::Permanent => {
                    tracing::info!(error = %message, "job failed permanently");
                    Finish::Failed {
                        error: message,
                        needs_review: false,
                    }
                }
                crate::ErrorKind::NeedsReview => {
                    tracing::info!(error = %message, "job failed; it needs human review");
                    Finish::Failed {
                        error: message,
                        needs_review: true,
                    }
                }
                _ if !retries_left => {
                    tracing::info!(error = %message, attempts = job.attempts, "job failed; no retries left");
                    Finish::Failed {
                        error: message,
                        needs_review: false,
                    }
                }
                kind => {
                    let backoff = shared.settings.backoff.delay(job.attempts);
                    let delay = match kind {
                        crate::ErrorKind::RetryAfter(d) => d,
                        _ => backoff,
                    };
                    tracing::info!(error = %message, retry_in = ?delay, "attempt failed; will retry");
                    Finish::Retry {
                        error: message,
                        run_at: now_ms() + delay.as_millis() as i64,
                    }
                }
            }
        }
    };
    Some((finish, progress))
}

/// Writes the outcome, retrying while the database is unavailable: a finished job's result
/// (paid for, perhaps) is never dropped while this process can still write it. The state the
/// job is in now, or `None` when the row was no longer this attempt's (cancelled, or taken over)
/// or the runtime stopped first. The outcome comes back with the state.
async fn record_finish(
    shared: &Shared,
    job: &ClaimedJob,
    finish: Finish,
    progress: Option<String>,
) -> Option<(JobState, Finish)> {
    let mut delay = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        let written = shared
            .store
            .finish(
                job.id,
                shared.owner.clone(),
                job.attempts,
                finish.clone(),
                progress.clone(),
            )
            .await;
        match written {
            Ok(Some(state)) => {
                if failures > 0 {
                    tracing::info!(failures, "the job's outcome is recorded");
                }
                return Some((state, finish));
            }
            Ok(None) => {
                tracing::info!(
                    "the job was cancelled or taken over meanwhile; outcome not recorded"
                );
                return None;
            }
            Err(Error::Shutdown) => return None,
            Err(e) => {
                failures += 1;
                if shared.abort.is_cancelled() || shared.store.failure().is_some() {
                    tracing::error!(
                        error = %e,
                        "could not record the job's outcome before the runtime stopped; \
                         it runs again, its journaled steps replayed"
                    );
                    return None;
                }
                tracing::warn!(error = %e, failures, retry_in = ?delay, "recording the job's outcome failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.abort.cancelled() => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
