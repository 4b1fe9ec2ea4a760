//! Claiming jobs and running them: the dispatch loop, the workers, and the local hand-off of
//! jobs inserted already running.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::Instrument;

use super::attempt::{self, Insert, RunAttempt};
use super::{Running, Shared};
use crate::status::now_ms;
use crate::store::{ClaimRequest, ClaimedJob, Enqueued, NewJob};
use crate::{Error, JobContext, Result};

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
        let entry = match self.registry.get(job.name.as_str()) {
            Some(entry) if self.settings.run_jobs => entry,
            _ => return Err(Box::new(job)),
        };
        let ctx = JobContext::new(
            self.clone(),
            job.id,
            entry.registration.name,
            1,
            job.max_attempts,
            true,
        );
        // Built from the arguments before they go to the insert, so that they are not kept
        // twice. Arguments that do not deserialize into the job's own (a serializer that does
        // not round-trip) are inserted pending: the claim records why they fail.
        let Ok(body) = attempt::build_body(&ctx, &job.args) else {
            return Err(Box::new(job));
        };
        let mut running = self.running.lock().expect("running lock");
        if running.closed || running.free(self.settings.concurrency) == 0 {
            return Err(Box::new(job));
        }
        running.jobs.insert(job.id, ctx.attempt_ref());
        let span = job_span(&ctx);
        let (tx, rx) = oneshot::channel();
        let inserting = ctx.clone();
        // Boxed, so that the insert's state is freed once it is done instead of taking room in
        // the task for as long as the job runs.
        let insert: Insert = Box::pin(async move {
            let shared = inserting.shared();
            let enqueued = shared.store.enqueue(job).await;
            let runs = matches!(enqueued, Ok(Enqueued::Inserted { running: true }));
            if !runs {
                // Not inserted, or inserted pending (a limit was reached, or an idempotency key
                // named an existing job): the slot goes back; a pending job waits for a claim.
                shared.forget_running(&inserting);
                shared.wake_dispatcher();
            }
            let _ = tx.send(enqueued);
            runs
        });
        // Spawned under the lock that shutdown takes to close the runtime: the task is
        // tracked before shutdown waits for the workers.
        self.workers
            .spawn(RunAttempt::inserted(ctx, insert, body).instrument(span));
        Ok(rx)
    }
}

/// Claims jobs while there is room, and sleeps until woken or the poll interval passes.
///
/// A slot that frees is a reason to claim only when the last claim left jobs behind: once a
/// claim has found the queue empty, the next waits for new work (a spawn, a job put back,
/// another process's notice: [`Shared::wake_dispatcher`]) or the poll, which also finds jobs
/// that came due. So a process whose jobs are all handed off locally makes no claims at all.
pub(super) async fn dispatch(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    let mut drained = false;
    let mut polled = true;
    loop {
        if shared.stop_claiming.is_cancelled() {
            return;
        }
        let free = shared.free_slots();
        let mut full_batch = false;
        // Taken before the claim reads: work announced while it is in flight is claimed next.
        if free > 0 && (shared.take_new_work() | polled | !drained) {
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
                Ok(claimed) => {
                    backoff = Duration::from_millis(50);
                    full_batch = claimed.jobs.len() == free;
                    drained = claimed.drained;
                    tracing::debug!(jobs = claimed.jobs.len(), drained, "claimed jobs");
                    for job in claimed.jobs {
                        start_job(&shared, job);
                    }
                }
                Err(Error::Shutdown) => return,
                Err(e) => {
                    drained = false;
                    tracing::warn!(error = %e, "claiming jobs failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        polled = if full_batch {
            // More may be waiting: claim again once a slot frees, not after the poll interval.
            continue_after_wake_or(&shared, Duration::from_millis(5)).await
        } else {
            continue_after_wake_or(&shared, shared.settings.poll_interval).await
        };
    }
}

/// Waits for a wake-up or `interval`; whether the interval passed.
async fn continue_after_wake_or(shared: &Shared, interval: Duration) -> bool {
    tokio::select! {
        _ = shared.wake.notified() => false,
        _ = tokio::time::sleep(interval) => true,
        _ = shared.stop_claiming.cancelled() => false,
    }
}

fn start_job(shared: &Arc<Shared>, job: ClaimedJob) {
    let mut running = shared.running.lock().expect("running lock");
    if running.closed {
        // Shutdown hands the claimed row back.
        return;
    }
    if shared.registry.contains_key(job.name.as_str())
        && running.jobs.len() >= shared.settings.concurrency as usize
    {
        // A spawn's hand-off took the slot while the claim was in flight: the job starts when
        // a slot frees (`Shared::forget_running`), so the process never runs more than its
        // concurrency.
        running.queued.push_back(job);
        return;
    }
    start_locked(shared, &mut running, job);
}

/// Starts a claimed job in a slot of its own; `running` is the locked running map.
pub(super) fn start_locked(shared: &Arc<Shared>, running: &mut Running, job: ClaimedJob) {
    let Some(entry) = shared.registry.get(job.name.as_str()) else {
        let span = tracing::info_span!(
            "llmjobs.job",
            job.name = %job.name,
            job.id = %job.id,
            job.attempt = job.attempts,
        );
        shared
            .workers
            .spawn(attempt::fail_unregistered(shared.clone(), job).instrument(span));
        return;
    };
    let ctx = JobContext::new(
        shared.clone(),
        job.id,
        entry.registration.name,
        job.attempts,
        job.max_attempts,
        job.fresh,
    );
    if let Some(previous) = running.jobs.insert(job.id, ctx.attempt_ref()) {
        // An older attempt of this job still runs here: the row was taken from this worker
        // (its lease ran out while it stalled) and it has now claimed the job again. The old
        // attempt's writes are fenced off by its attempt number; stop it.
        previous.cancel();
    }
    let span = job_span(&ctx);
    shared
        .workers
        .spawn(RunAttempt::claimed(ctx, job.args).instrument(span));
}

fn job_span(ctx: &JobContext) -> tracing::Span {
    tracing::info_span!(
        "llmjobs.job",
        job.name = %ctx.static_name(),
        job.id = %ctx.id(),
        job.attempt = ctx.attempt(),
    )
}
