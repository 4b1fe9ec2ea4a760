use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::runtime::Shared;
use crate::status::{JobState, JobStatus};
use crate::store::Terminal;
use crate::{Error, JobId, Jobs, Progress, Result};

/// A job in the database, seen from any process: wait for it, read its status, cancel it.
///
/// `T` is the job's output type. Dropping a handle does nothing to the job.
pub struct JobHandle<T> {
    id: JobId,
    jobs: Jobs,
    is_new: bool,
    _output: PhantomData<fn() -> T>,
}

/// What [`JobHandle::wait_timeout`] and [`Jobs::run_with_timeout`] give back.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The job completed within the time; here is its output.
    Ready(T),
    /// The job is still pending or running (the same attempt goes on): wait again or poll.
    Pending(JobHandle<T>),
}

/// What [`JobHandle::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The job was pending; it is now `cancelled` and will never run.
    Cancelled,
    /// The job is running; the worker that runs it drops it within about a second and marks it
    /// `cancelled`.
    Requested,
    /// The job had already ended in this state; nothing changed.
    AlreadyFinished(JobState),
}

impl<T> JobHandle<T> {
    pub(crate) fn new(id: JobId, jobs: Jobs) -> Self {
        JobHandle::spawned(id, jobs, false)
    }

    pub(crate) fn spawned(id: JobId, jobs: Jobs, is_new: bool) -> Self {
        JobHandle {
            id,
            jobs,
            is_new,
            _output: PhantomData,
        }
    }

    /// Whether the spawn that returned this handle made a new job: `false` when its
    /// idempotency key named an existing one (and for handles made by [`Jobs::handle`]).
    pub fn is_new(&self) -> bool {
        self.is_new
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's current status, read from the database.
    pub async fn status(&self) -> Result<JobStatus> {
        self.jobs.status(self.id).await
    }

    /// Cancels the job: at once if it is pending; if it is running, in whichever process runs
    /// it. Cancelling a finished job changes nothing and says so.
    pub async fn cancel(&self) -> Result<CancelOutcome> {
        self.jobs.cancel(self.id).await
    }
}

impl<T> JobHandle<T> {
    /// A stream of the job's progress reports, ending when the job ends.
    ///
    /// Reports made in this process arrive at once, every one of them, in order. For a job
    /// running in another process, the stream yields the latest stored report whenever it
    /// changes (checked twice a second), so fast reports may be coalesced.
    pub fn progress(&self) -> ProgressStream {
        let shared = self.jobs.shared().clone();
        let id = self.id;
        let mut local = shared.subscribe_progress(id);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut last_stored: Option<serde_json::Value> = None;
            loop {
                tokio::select! {
                    report = local.recv() => match report {
                        Some(report) => {
                            // The row will hold this report: not news when read back.
                            last_stored = serde_json::to_value(&report).ok();
                            if tx.send(report).is_err() {
                                break;
                            }
                        }
                        // The job ended in this process.
                        None => break,
                    },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if tx.is_closed() {
                            break;
                        }
                        let Ok(status) = shared.status(id).await else { break };
                        let runs_here = status.state == JobState::Running
                            && status.owner.as_deref() == Some(&*shared.owner);
                        if !runs_here && status.progress != last_stored {
                            if let Some(report) = status
                                .progress
                                .clone()
                                .and_then(|v| serde_json::from_value::<Progress>(v).ok())
                                && tx.send(report).is_err()
                            {
                                break;
                            }
                            last_stored = status.progress;
                        }
                        if status.state.is_terminal() {
                            break;
                        }
                    }
                }
            }
            drop(local);
            shared.prune_progress_subscribers(id);
        });
        ProgressStream { rx }
    }

    /// Calls `callback` with each progress report of the job (see [`JobHandle::progress`]),
    /// on a background task that ends when the job ends.
    pub fn on_progress<F>(&self, mut callback: F) -> tokio::task::JoinHandle<()>
    where
        F: FnMut(Progress) + Send + 'static,
    {
        let mut stream = self.progress();
        tokio::spawn(async move {
            while let Some(report) = stream.next().await {
                callback(report);
            }
        })
    }
}

/// The progress reports of one job; see [`JobHandle::progress`].
///
/// Implements [`futures_core::Stream`], and has an inherent [`next`](ProgressStream::next) for
/// use without a stream-extension crate.
#[derive(Debug)]
pub struct ProgressStream {
    rx: mpsc::UnboundedReceiver<Progress>,
}

impl ProgressStream {
    /// The next report, or `None` once the job has ended.
    pub async fn next(&mut self) -> Option<Progress> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for ProgressStream {
    type Item = Progress;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Progress>> {
        self.rx.poll_recv(cx)
    }
}

impl<T: DeserializeOwned> JobHandle<T> {
    /// Waits until the job ends; its output, or why it did not complete.
    ///
    /// A job run by this process wakes the waiter the moment it ends; one run elsewhere is
    /// polled with back-off. Waiting never changes the job.
    pub async fn wait(&self) -> Result<T> {
        let end = wait_terminal(self.jobs.shared(), self.id, None).await?;
        self.output_of(end)
    }

    /// Waits up to `timeout`. Past it, the job keeps running (the same attempt; nothing is
    /// restarted) and you get the handle back in [`Outcome::Pending`].
    pub async fn wait_timeout(self, timeout: Duration) -> Result<Outcome<T>> {
        match wait_terminal(self.jobs.shared(), self.id, Some(timeout)).await {
            Ok(end) => self.output_of(end).map(Outcome::Ready),
            Err(Error::WaitTimeout(_)) => Ok(Outcome::Pending(self)),
            Err(e) => Err(e),
        }
    }

    /// The output of an ended job (no second read).
    fn output_of(&self, end: Terminal) -> Result<T> {
        match end.state {
            JobState::Completed => {
                let text = end.result.as_deref().unwrap_or("null");
                serde_json::from_str(text).map_err(|e| Error::ResultType {
                    id: self.id,
                    name: end.name,
                    expected: std::any::type_name::<T>(),
                    message: e.to_string(),
                })
            }
            JobState::Failed if end.needs_review => Err(Error::NeedsReview {
                id: self.id,
                name: end.name,
                error: end.error.unwrap_or_default(),
            }),
            JobState::Failed => Err(Error::JobFailed {
                id: self.id,
                name: end.name,
                error: end.error.unwrap_or_default(),
            }),
            JobState::Cancelled => Err(Error::JobCancelled {
                id: self.id,
                name: end.name,
            }),
            JobState::Pending | JobState::Running => unreachable!("waited for a terminal state"),
        }
    }
}

/// How often a waiter reads its job's row at most, when the store wakes it on changes made by
/// other processes: the safety net for a wake-up that was lost.
const HINTED_POLL_CAP: Duration = Duration::from_secs(5);

/// Polls (and, for jobs of this process, listens) until the job has ended; how it ended.
async fn wait_terminal(
    shared: &Arc<Shared>,
    id: JobId,
    timeout: Option<Duration>,
) -> Result<Terminal> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let waiter = shared.waiter(id);
    let mut delay = Duration::from_millis(10);
    let mut first = true;
    loop {
        let notified = waiter.notified();
        tokio::pin!(notified);
        // Registered before the checks below, so an end that comes between them and the sleep
        // still wakes us.
        notified.as_mut().enable();
        if let Some(end) = waiter.outcome() {
            return Ok(end);
        }
        // A job this process runs says when it ends, with its outcome: no need to read its
        // row first. Others (pending, or run elsewhere) are read, and polled with back-off.
        let runs_here = if first && shared.runs_here(id) {
            true
        } else {
            let row = shared.store.get(id).await?.ok_or(Error::NotFound(id))?;
            let runs_here = row.status == JobState::Running.as_str()
                && row.owner.as_deref() == Some(&*shared.owner);
            if let Some(end) = Terminal::from_row(row)? {
                return Ok(end);
            }
            runs_here
        };
        first = false;
        let poll_every = if runs_here {
            Duration::from_secs(5)
        } else {
            delay
        };
        let sleep = tokio::time::sleep(poll_every);
        match deadline {
            Some(deadline) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::WaitTimeout(timeout.unwrap_or_default()));
                }
                tokio::select! {
                    _ = notified => {}
                    _ = sleep => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            None => {
                tokio::select! {
                    _ = notified => {}
                    _ = sleep => {}
                }
            }
        }
        // Woken by other processes' hints, a waiter's poll is only a safety net.
        let cap = if shared.is_hinted() {
            HINTED_POLL_CAP
        } else {
            Duration::from_millis(500)
        };
        delay = (delay * 2).min(cap);
    }
}

impl<T> Clone for JobHandle<T> {
    fn clone(&self) -> Self {
        JobHandle::spawned(self.id, self.jobs.clone(), self.is_new)
    }
}

impl<T> fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.id)
            .field("output", &std::any::type_name::<T>())
            .finish()
    }
}
