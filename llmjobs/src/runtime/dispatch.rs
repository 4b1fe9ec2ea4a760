//! Claiming jobs and running them: the dispatch loop, the workers, and the local hand-off of
//! jobs inserted already running.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Shared, panic};
use crate::status::now_ms;
use crate::store::{ClaimRequest, ClaimedJob, Finish, Terminal};
use crate::{Error, JobContext, JobId};

impl Shared {
    /// Takes a slot of this process's concurrency for a job about to be handed straight to a
    /// local worker. `false` when the process has no free slot or is not running jobs.
    pub(crate) fn reserve_slot(&self, id: JobId) -> bool {
        if !self.settings.run_jobs
            || self.settings.global_concurrency.is_some()
            || self.stop_claiming.is_cancelled()
        {
            return false;
        }
        let mut running = self.running.lock().expect("running lock");
        if running.jobs.len() >= self.settings.concurrency as usize {
            return false;
        }
        running.jobs.insert(id, self.abort.child_token());
        true
    }

    /// Gives back a slot taken by [`Shared::reserve_slot`] for a job that was not inserted.
    pub(crate) fn release_slot(&self, id: JobId) {
        self.running.lock().expect("running lock").jobs.remove(&id);
        self.wake.notify_one();
    }

    /// Starts a job whose slot [`Shared::reserve_slot`] took and that was inserted running.
    pub(crate) fn start_reserved(self: &Arc<Self>, job: ClaimedJob) {
        let token = self
            .running
            .lock()
            .expect("running lock")
            .jobs
            .get(&job.id)
            .cloned();
        // Without a token the runtime was dropped meanwhile: the row stays running under this
        // owner, whose lock is gone, so the next worker resumes it.
        if let Some(token) = token {
            spawn_worker(self, job, token);
        }
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
    shared
        .running
        .lock()
        .expect("running lock")
        .jobs
        .insert(job.id, token.clone());
    spawn_worker(shared, job, token);
}

fn spawn_worker(shared: &Arc<Shared>, job: ClaimedJob, token: CancellationToken) {
    let span = tracing::info_span!(
        "llmjobs.job",
        job.name = %job.name,
        job.id = %job.id,
        job.attempt = job.attempts,
    );
    shared
        .workers
        .spawn(run_job(shared.clone(), job, token).instrument(span));
}

/// Runs one attempt and records how it ended.
async fn run_job(shared: Arc<Shared>, job: ClaimedJob, token: CancellationToken) {
    let id = job.id;
    let finish = attempt(&shared, &job, &token).await;
    // The body is done: its slot can take the next job while the outcome is committed (the
    // database still counts the job as running until then, which only errs on the safe side
    // for limits shared with other processes).
    shared
        .running
        .lock()
        .expect("running lock")
        .jobs
        .remove(&id);
    shared.wake.notify_one();
    let mut outcome = None;
    if let Some((finish, progress)) = finish {
        let terminal = Terminal::of(&job.name, &finish);
        // Boxed: the task keeps this future's space for its whole life, while the job
        // waits (W3 counts bytes per waiting job), though it is needed only at the end.
        if Box::pin(record_finish(&shared, id, finish, progress)).await {
            outcome = terminal;
        }
    }
    shared.notify_finished(id, outcome);
}

/// Runs the body; `None` when the runtime is shutting down and the job is handed back.
async fn attempt(
    shared: &Arc<Shared>,
    job: &ClaimedJob,
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
    let ctx = JobContext::new(
        shared.clone(),
        job.id,
        &job.name,
        job.attempts,
        token.clone(),
    );
    let body = match (entry.registration.run)(ctx.clone(), &job.args) {
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
    let timeout = entry.config.timeout.or(shared.settings.default_timeout);
    let run = async {
        match timeout {
            Some(limit) => match tokio::time::timeout(limit, panic::catch(body)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(crate::JobError::msg(format_args!(
                    "attempt timed out after {limit:?}"
                ))),
            },
            None => panic::catch(body).await,
        }
    };
    let outcome = tokio::select! {
        outcome = run => outcome,
        _ = token.cancelled() => {
            if shared.abort.is_cancelled() {
                tracing::info!("job handed back at shutdown");
                return None;
            }
            tracing::info!("job cancelled");
            return Some((Finish::Cancelled, ctx.take_unsaved_progress()));
        }
    };
    let progress = ctx.take_unsaved_progress();
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
/// must not be lost to a transient error. `true` when the outcome is now the job's.
async fn record_finish(
    shared: &Shared,
    id: JobId,
    finish: Finish,
    progress: Option<String>,
) -> bool {
    let mut delay = Duration::from_millis(50);
    for _ in 0..20 {
        match shared
            .store
            .finish(id, shared.owner.clone(), finish.clone(), progress.clone())
            .await
        {
            Ok(true) => return true,
            Ok(false) => {
                tracing::info!(
                    "the job was cancelled or taken over meanwhile; outcome not recorded"
                );
                return false;
            }
            Err(Error::Shutdown) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "recording the job's outcome failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!("could not record the job's outcome; it will run again after a restart");
    false
}
