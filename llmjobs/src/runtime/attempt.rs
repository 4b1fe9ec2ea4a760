//! One attempt of a job, from its body's start to its recorded outcome: the future of each
//! worker task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Sleep;

use super::{Shared, panic};
use crate::job::{BoxFuture, ErasedOutcome};
use crate::status::{JobState, now_ms};
use crate::store::{ClaimedJob, Finish, Terminal};
use crate::{Error, ErrorKind, JobContext, JobError};

/// The insert of a handed-off job: whether it committed with the job running here.
pub(super) type Insert = Pin<Box<dyn Future<Output = bool> + Send>>;

/// A worker task's future: one attempt.
///
/// Written by hand rather than as an `async fn` around a `select!`: a task keeps room for its
/// future's largest state for as long as the job waits, so each state here holds only what it
/// needs, and everything else (the timer, the outcome's write) lives on the heap and only while
/// it is needed. W3 and W11 count the bytes per waiting job; a test pins the size.
pub(super) struct RunAttempt {
    ctx: JobContext,
    stage: Stage,
}

enum Stage {
    /// A handed-off job being inserted; its body, built already, starts once the insert commits.
    Inserting {
        insert: Insert,
        body: BoxFuture<ErasedOutcome>,
    },
    /// A claimed job: its stored arguments, which the body is built from.
    Claimed {
        args: String,
    },
    Running {
        body: BoxFuture<ErasedOutcome>,
        /// Only for jobs with a timeout.
        deadline: Option<Pin<Box<Sleep>>>,
    },
    /// Writing the outcome.
    Recording(BoxFuture<()>),
    Done,
}

/// How an attempt ended: its outcome and latest progress, or `None` when it was handed back at
/// shutdown.
type Ended = Option<(Finish, Option<String>)>;

impl RunAttempt {
    /// A handed-off job: `insert` inserts it, then `body` runs.
    pub(super) fn inserted(
        ctx: JobContext,
        insert: Insert,
        body: BoxFuture<ErasedOutcome>,
    ) -> Self {
        RunAttempt {
            ctx,
            stage: Stage::Inserting { insert, body },
        }
    }

    /// A claimed job, with its stored arguments.
    pub(super) fn claimed(ctx: JobContext, args: String) -> Self {
        RunAttempt {
            ctx,
            stage: Stage::Claimed { args },
        }
    }

    fn start(&self, body: BoxFuture<ErasedOutcome>) -> Stage {
        let deadline = timeout_of(self.ctx.shared(), self.ctx.static_name())
            .map(|limit| Box::pin(tokio::time::sleep(limit)));
        Stage::Running { body, deadline }
    }

    /// The attempt is over: its slot is freed, and its outcome is written unless it was handed
    /// back.
    fn end(&self, ended: Ended) -> Stage {
        // The slot can take the next job while the outcome is committed (the database still
        // counts the job as running until then, which only errs on the safe side for limits
        // shared with other processes).
        self.ctx.shared().forget_running(&self.ctx);
        match ended {
            Some((finish, progress)) => {
                Stage::Recording(Box::pin(record(self.ctx.clone(), finish, progress)))
            }
            None => Stage::Done,
        }
    }
}

impl Future for RunAttempt {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Inserting { insert, .. } => {
                    let runs = ready!(insert.as_mut().poll(cx));
                    let Stage::Inserting { body, .. } =
                        std::mem::replace(&mut this.stage, Stage::Done)
                    else {
                        unreachable!("the stage matched above");
                    };
                    if !runs {
                        // Not inserted, or inserted pending: the insert gave the slot back.
                        return Poll::Ready(());
                    }
                    this.stage = this.start(body);
                }
                Stage::Claimed { args } => {
                    let args = std::mem::take(args);
                    let built = build_body(&this.ctx, &args);
                    // The arguments are needed only to build the body: not kept while it runs.
                    drop(args);
                    this.stage = match built {
                        Ok(body) => this.start(body),
                        Err(failed) => this.end(Some((failed, None))),
                    };
                }
                Stage::Running { body, deadline } => {
                    let ended = if this.ctx.cancel_signal().poll_cancelled(cx).is_ready() {
                        cancelled(&this.ctx)
                    } else if let Poll::Ready(outcome) = panic::poll_caught(body.as_mut(), cx) {
                        Some(outcome_of(&this.ctx, outcome))
                    } else if deadline
                        .as_mut()
                        .is_some_and(|d| d.as_mut().poll(cx).is_ready())
                    {
                        let limit = timeout_of(this.ctx.shared(), this.ctx.static_name());
                        let error = JobError::msg(format_args!(
                            "attempt timed out after {:?}",
                            limit.unwrap_or_default()
                        ));
                        Some(outcome_of(&this.ctx, Err(error)))
                    } else {
                        return Poll::Pending;
                    };
                    // The body and its timer go before the slot is freed.
                    this.stage = Stage::Done;
                    this.stage = this.end(ended);
                }
                Stage::Recording(record) => {
                    ready!(record.as_mut().poll(cx));
                    this.stage = Stage::Done;
                }
                Stage::Done => return Poll::Ready(()),
            }
        }
    }
}

/// The attempt's time limit: its job's, else the runtime's default.
fn timeout_of(shared: &Shared, name: &str) -> Option<Duration> {
    shared
        .registry
        .get(name)
        .and_then(|entry| entry.config.timeout)
        .or(shared.settings.default_timeout)
}

/// Deserializes the stored arguments and builds the body; the failure to record when they do
/// not deserialize.
pub(super) fn build_body(ctx: &JobContext, args: &str) -> Result<BoxFuture<ErasedOutcome>, Finish> {
    let entry = ctx
        .shared()
        .registry
        .get(ctx.static_name())
        .expect("attempts run registered jobs only");
    (entry.registration.run)(ctx.clone(), args).map_err(|message| {
        tracing::warn!(error = %message, "stored arguments do not deserialize");
        Finish::Failed {
            error: message,
            needs_review: false,
        }
    })
}

/// The end of a cancelled attempt: cancelled, handed back at shutdown, or back to the queue
/// when its worker lost its liveness lock.
fn cancelled(ctx: &JobContext) -> Ended {
    if ctx.shared().abort.is_cancelled() {
        tracing::info!("job handed back at shutdown");
        return None;
    }
    if ctx.cancel_signal().is_unproven() {
        // Its row goes back to the queue, fenced by this attempt: nothing changes if another
        // worker took the job over meanwhile.
        return Some((
            Finish::Retry {
                error: format!(
                    "attempt {} was interrupted: its worker lost the database connection \
                     that proves it alive, so it stopped the job rather than risk \
                     running it twice",
                    ctx.attempt()
                ),
                run_at: now_ms(),
            },
            ctx.final_progress(),
        ));
    }
    tracing::info!("job cancelled");
    Some((Finish::Cancelled, ctx.final_progress()))
}

/// What the body's result makes of the attempt: completed, failed, or a retry.
fn outcome_of(ctx: &JobContext, outcome: ErasedOutcome) -> (Finish, Option<String>) {
    let progress = ctx.final_progress();
    let error = match outcome {
        Ok(result) => {
            tracing::debug!("job completed");
            return (Finish::Completed { result }, progress);
        }
        Err(error) => error,
    };
    let attempt = ctx.attempt();
    let retries_left = attempt < ctx.max_attempts();
    let message = error.to_string();
    let finish = match error.kind() {
        ErrorKind::Permanent => {
            tracing::info!(error = %message, "job failed permanently");
            Finish::Failed {
                error: message,
                needs_review: false,
            }
        }
        ErrorKind::NeedsReview => {
            tracing::info!(error = %message, "job failed; it needs human review");
            Finish::Failed {
                error: message,
                needs_review: true,
            }
        }
        _ if !retries_left => {
            tracing::info!(error = %message, attempts = attempt, "job failed; no retries left");
            Finish::Failed {
                error: message,
                needs_review: false,
            }
        }
        kind => {
            let delay = match kind {
                ErrorKind::RetryAfter(d) => d,
                _ => ctx.shared().settings.backoff.delay(attempt),
            };
            tracing::info!(error = %message, retry_in = ?delay, "attempt failed; will retry");
            Finish::Retry {
                error: message,
                run_at: now_ms() + delay.as_millis() as i64,
            }
        }
    };
    (finish, progress)
}

/// Records the end of `ctx`'s attempt.
async fn record(ctx: JobContext, finish: Finish, progress: Option<String>) {
    let attempt = Recorded {
        shared: ctx.shared(),
        id: ctx.id(),
        name: ctx.static_name(),
        attempt: ctx.attempt(),
    };
    attempt.record(finish, progress).await;
}

/// Fails a claimed job whose name this process does not know (a row renamed under it: claims
/// ask only for registered names).
pub(super) async fn fail_unregistered(shared: Arc<Shared>, job: ClaimedJob) {
    let failed = Finish::Failed {
        error: format!("no job named `{}` is registered in this worker", job.name),
        needs_review: false,
    };
    let attempt = Recorded {
        shared: &shared,
        id: job.id,
        name: &job.name,
        attempt: job.attempts,
    };
    attempt.record(failed, None).await;
}

/// The attempt whose outcome is written.
struct Recorded<'a> {
    shared: &'a Arc<Shared>,
    id: crate::JobId,
    name: &'a str,
    attempt: u32,
}

impl Recorded<'_> {
    /// Writes the outcome and tells the job's waiters.
    async fn record(&self, finish: Finish, progress: Option<String>) {
        let shared = self.shared;
        match self.write(finish, progress).await {
            Some((state, finish)) if state.is_terminal() => {
                let end = match Terminal::of(self.name, &finish) {
                    Some(end) if end.state == state => end,
                    // A cancel requested while the attempt ended wins over its outcome.
                    _ => Terminal::cancelled(self.name),
                };
                shared.notify_finished(self.id, Some(end));
            }
            Some((JobState::Pending, _)) => {
                // Put back for a retry: a claim takes it once it is due.
                shared.notify_changed(self.id);
                shared.wake_dispatcher();
            }
            _ => shared.notify_changed(self.id),
        }
        // The slot was freed before the outcome committed. On a networked store (the one that
        // sends hints), a claim made meanwhile ran on another connection and still counted the
        // job against its limits (counted in the database, across processes): if it passed
        // jobs over for that, one more claim now may find room it did not (a freed slot claims
        // only then). (SQLite's claims queue behind the outcome in its writer.)
        if shared.is_hinted() {
            shared.slot_freed();
        }
    }

    /// Writes the outcome, retrying while the database is unavailable: a finished job's result
    /// (paid for, perhaps) is never dropped while this process can still write it. The state
    /// the job is in now, or `None` when the row was no longer this attempt's (cancelled, or
    /// taken over) or the runtime stopped first. The outcome comes back with the state.
    async fn write(&self, finish: Finish, progress: Option<String>) -> Option<(JobState, Finish)> {
        let shared = self.shared;
        let mut delay = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            let written = shared
                .store
                .finish(
                    self.id,
                    shared.owner.clone(),
                    self.attempt,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every in-flight job's tokio task holds this future for as long as the job waits, in a
    /// cell that tokio rounds up to 128 bytes (header and trailer included): past ~150 bytes
    /// the cell of each waiting job grows from 256 to 384 bytes, and W3/W11's bytes per job
    /// with it (README, Performance). A state that grows here (a large local, an inline timer
    /// or cancel future) fails this test.
    #[test]
    fn the_future_of_a_waiting_job_stays_small() {
        let size = std::mem::size_of::<RunAttempt>();
        assert!(size <= 48, "RunAttempt is {size} bytes");
    }
}
