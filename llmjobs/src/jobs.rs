use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::handle::CancelOutcome;
use crate::runtime::{CallInfo, Shared};
use crate::status::{JobCounts, JobFilter, JobStatus, now_ms};
use crate::store::{CancelEffect, Enqueued, LocalClaim, NewJob, RetryEffect};
use crate::{Error, Job, JobCall, JobHandle, JobId, Outcome, Result};

mod builder;
#[cfg(feature = "postgres")]
mod spawn_in;

pub use builder::JobsBuilder;

/// How hard a commit works to survive a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Every commit is synced to disk before `spawn` (or any other write) returns: committed
    /// jobs survive SIGKILL and power loss. (SQLite: WAL with `synchronous=FULL`.)
    #[default]
    Full,
    /// Commits survive the process being killed, but the last few may be lost if the machine
    /// loses power. Lower latency. (SQLite: WAL with `synchronous=NORMAL`.)
    Relaxed,
}

/// The job runtime: spawn jobs, wait for them, and run the jobs this program defines.
///
/// Cheap to clone; all clones share one runtime. Dropping the last clone stops it abruptly
/// (running jobs are resumed by the next process); call [`Jobs::shutdown`] to stop gracefully.
#[derive(Clone)]
pub struct Jobs {
    shared: Arc<Shared>,
    /// The database's URL, as given: [`Jobs::inspector`] opens it again.
    url: Arc<str>,
    _guard: Arc<DropGuard>,
}

/// Stops the background tasks when the last `Jobs` clone goes away.
struct DropGuard(Arc<Shared>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl Jobs {
    /// Opens the job database at `url` with default settings, and starts running every job
    /// this program defines with `#[llm_job]`.
    ///
    /// `url` is `sqlite://path/to/jobs.db` (created if missing), `sqlite::memory:`, or a plain
    /// file path. Opening migrates the schema, resumes the jobs of workers that died, and
    /// starts claiming.
    pub async fn open(url: &str) -> Result<Jobs> {
        Jobs::builder().url(url).open().await
    }

    /// A builder for every setting.
    pub fn builder() -> JobsBuilder {
        JobsBuilder::default()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Records a job and returns its handle. The job's row is durably committed before this
    /// returns; it runs as soon as a worker has room (or at its [`JobCall::run_at`]).
    ///
    /// With an [idempotency key](JobCall::idempotency_key) that a job already holds, nothing is
    /// spawned: the handle is that job's ([`JobHandle::is_new`] is `false`).
    ///
    /// A job whose name no process has registered stays `pending` (visible in its status)
    /// until a process that knows it opens the database.
    pub async fn spawn<T>(&self, call: JobCall<T>) -> Result<JobHandle<T>> {
        if self.shared.is_stopping() {
            return Err(Error::Shutdown);
        }
        let now = now_ms();
        let mut job = self.new_job(&call, now)?;
        let id = job.id;
        let local = self.shared.registry.get(call.name());
        // A job this process can run skips the claim: it is inserted running, here, when its
        // limits have room (the insert checks them).
        if let Some(entry) = local.filter(|_| job.run_at <= now) {
            job.claimed_by = Some(LocalClaim {
                owner: self.shared.owner.clone(),
                lease_until: now + self.shared.settings.lease.as_millis() as i64,
                name_limit: entry.config.max_concurrency,
                key_limit: job.key_limit.filter(|_| job.concurrency_key.is_some()),
                global_limit: self.shared.settings.global_concurrency,
            });
            match self.shared.hand_off(job) {
                // The worker task inserts and runs the job whether or not this future is
                // polled to the end.
                Ok(inserted) => {
                    let enqueued = inserted.await.map_err(|_| Error::Shutdown)??;
                    return Ok(self.spawned(id, enqueued));
                }
                Err(returned) => {
                    job = *returned;
                    job.claimed_by = None;
                }
            }
        }
        let enqueued = self.shared.store.enqueue(job).await?;
        if local.is_some() {
            self.shared.wake_dispatcher();
        } else {
            tracing::warn!(
                job.name = call.name(),
                job.id = %id,
                "no job of this name is registered in this process; it stays pending until a process that defines it runs it"
            );
        }
        Ok(self.spawned(id, enqueued))
    }

    /// The rows `calls` become, and their ids in the same order, for a spawn of several at once.
    fn new_jobs<T>(
        &self,
        calls: impl IntoIterator<Item = JobCall<T>>,
    ) -> Result<(Vec<NewJob>, Vec<JobId>)> {
        if self.shared.is_stopping() {
            return Err(Error::Shutdown);
        }
        let now = now_ms();
        let jobs = calls
            .into_iter()
            .map(|call| self.new_job(&call, now))
            .collect::<Result<Vec<NewJob>>>()?;
        let ids = jobs.iter().map(|job| job.id).collect();
        Ok((jobs, ids))
    }

    /// Spawns every call in one transaction: all of them, or none if any fails (an idempotency
    /// key held by different work, say). One commit for the lot, so 10,000 jobs cost about what
    /// one does plus their rows. The handles are in the order of the calls.
    pub async fn spawn_many<T>(
        &self,
        calls: impl IntoIterator<Item = JobCall<T>>,
    ) -> Result<Vec<JobHandle<T>>> {
        let (jobs, ids) = self.new_jobs(calls)?;
        let enqueued = self.shared.store.enqueue_many(jobs).await?;
        self.shared.wake_dispatcher();
        Ok(ids
            .into_iter()
            .zip(enqueued)
            .map(|(id, enqueued)| self.spawned(id, enqueued))
            .collect())
    }

    /// The row a call becomes, not yet claimed.
    fn new_job<T>(&self, call: &JobCall<T>, now: i64) -> Result<NewJob> {
        self.shared.new_job(call, now)
    }

    /// The handle of a job just spawned: the new one, or the one holding its idempotency key.
    fn spawned<T>(&self, id: JobId, enqueued: Enqueued) -> JobHandle<T> {
        match enqueued {
            Enqueued::Inserted { .. } => JobHandle::spawned(id, self.clone(), true),
            Enqueued::Existing(existing) => JobHandle::spawned(existing, self.clone(), false),
        }
    }

    /// The names of the jobs registered in this process (the ones it can spawn by name with
    /// [`Jobs::spawn_json`]), sorted.
    pub fn job_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.shared.registry.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The call of the job registered as `name` with JSON arguments, checked: the arguments are
    /// deserialized into the job's, so the call has the job's own priority, concurrency and
    /// idempotency keys and routing, as [`JobCall::new`] would give it. Its output is read as
    /// JSON.
    ///
    /// A name not registered in this process is [`Error::UnknownJob`] (listing the known ones);
    /// arguments that do not fit are [`Error::InvalidArgs`], naming the field path that failed.
    /// (For a job this process does not know, [`JobCall::from_json`] makes an unchecked call.)
    pub fn call_json(
        &self,
        name: &str,
        args: serde_json::Value,
    ) -> Result<JobCall<serde_json::Value>> {
        let Some(entry) = self.shared.registry.get(name) else {
            return Err(Error::UnknownJob {
                name: name.to_string(),
                known: self.job_names().into_iter().map(String::from).collect(),
            });
        };
        (entry.registration.call_from_json)(args).map_err(|e| Error::InvalidArgs {
            name: name.to_string(),
            path: e.path,
            message: e.message,
        })
    }

    /// Spawns the job registered as `name` with JSON arguments: for callers that know a job by
    /// name only (an HTTP request, a message from another service). Checked as
    /// [`Jobs::call_json`] says, before anything is recorded; the handle reads the output as
    /// JSON.
    ///
    /// ```
    /// # use llmjobs::{llm_job, JobError, Jobs};
    /// #[llm_job]
    /// async fn add(a: i64, b: i64) -> Result<i64, JobError> {
    ///     Ok(a + b)
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> llmjobs::Result<()> {
    /// let jobs = Jobs::open("sqlite::memory:").await?;
    /// let handle = jobs.spawn_json("add", serde_json::json!({"a": 2, "b": 3})).await?;
    /// assert_eq!(handle.wait().await?, serde_json::json!(5));
    ///
    /// let err = jobs.spawn_json("add", serde_json::json!({"a": 2, "b": "x"})).await.unwrap_err();
    /// assert!(matches!(err, llmjobs::Error::InvalidArgs { path: Some(p), .. } if p == "b"));
    /// # jobs.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn spawn_json(
        &self,
        name: &str,
        args: serde_json::Value,
    ) -> Result<JobHandle<serde_json::Value>> {
        self.spawn(self.call_json(name, args)?).await
    }

    /// Spawns the job and waits for its output.
    pub async fn run<T: DeserializeOwned>(&self, call: JobCall<T>) -> Result<T> {
        self.spawn(call).await?.wait().await
    }

    /// Spawns the job and waits up to `timeout` for its output. Past the timeout the job keeps
    /// running, the same attempt, and you get a handle to poll: work is never restarted.
    ///
    /// A `long_running` job returns [`Outcome::Pending`] at once, without waiting; a call with
    /// [`JobCall::wait_at_most`] waits no longer than that.
    pub async fn run_with_timeout<T: DeserializeOwned>(
        &self,
        call: JobCall<T>,
        timeout: Duration,
    ) -> Result<Outcome<T>> {
        let long_running = self.is_long_running(&call);
        let timeout = call
            .wait_limit()
            .map_or(timeout, |limit| limit.min(timeout));
        let handle = self.spawn(call).await?;
        if long_running {
            return Ok(Outcome::Pending(handle));
        }
        handle.wait_timeout(timeout).await
    }

    /// Whether `call` goes straight to the background, as [`Jobs::run_with_timeout`] decides
    /// it: the caller's own say ([`JobCall::long_running`]), else the first classifier with an
    /// opinion ([`JobsBuilder::classify_long_running`]), else the job's
    /// ([`Job::is_long_running`]).
    pub fn is_long_running<T>(&self, call: &JobCall<T>) -> bool {
        if call.is_long_running_forced() {
            return call.is_long_running();
        }
        let Ok(args) = call.args_json() else {
            return call.is_long_running();
        };
        let info = CallInfo {
            name: call.name(),
            args,
        };
        self.shared
            .settings
            .classifiers
            .iter()
            .find_map(|classify| classify(&info))
            .unwrap_or(call.is_long_running())
    }

    /// A handle to an existing job, from this process or any other. The type is not checked
    /// until you read the output: a wrong `T` gives [`Error::ResultType`].
    pub fn handle<T>(&self, id: JobId) -> JobHandle<T> {
        JobHandle::new(id, self.clone())
    }

    /// One job's status.
    pub async fn status(&self, id: JobId) -> Result<JobStatus> {
        self.shared.status(id).await
    }

    /// Jobs, newest first, as `filter` selects them: `jobs.list(JobFilter::new())` for the 50
    /// most recent, `jobs.list(JobState::Failed)` for the latest failures. Costs what it
    /// returns, whatever the history; page on with [`JobFilter::after`].
    pub async fn list(&self, filter: impl Into<JobFilter>) -> Result<Vec<JobStatus>> {
        let rows = self.shared.store.list(filter.into()).await?;
        Ok(rows
            .iter()
            .filter_map(|row| match row.to_status() {
                Ok(status) => Some(status),
                Err(e) => {
                    // Not a row llmjobs wrote (its id is no UUID): one bad row does not hide
                    // the others.
                    tracing::warn!(error = %e, "listing skips a row that is not a job");
                    None
                }
            })
            .collect())
    }

    /// How many jobs are in each state. Reads maintained counters: costs the same whatever
    /// the history.
    pub async fn counts(&self) -> Result<JobCounts> {
        Ok(JobCounts::sum(self.counts_by_name().await?.values()))
    }

    /// How many jobs of each name are in each state.
    pub async fn counts_by_name(&self) -> Result<BTreeMap<String, JobCounts>> {
        JobCounts::by_name(self.shared.store.counts().await?)
    }

    /// The usage ledger's sums: tokens, cost, calls, errors and cache hits of the provider calls
    /// jobs made, as `filter` selects and groups them (by model, job name, day). Failed tries
    /// count: they were sent, and may have been paid for.
    ///
    /// ```no_run
    /// # async fn demo(jobs: llmjobs::Jobs) -> llmjobs::Result<()> {
    /// use llmjobs::{UsageFilter, UsageKey};
    /// for group in jobs.usage(UsageFilter::new().by(UsageKey::Model)).await? {
    ///     println!("{:?}: {} calls, ${:.4}", group.model, group.calls, group.cost_usd);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn usage(&self, filter: crate::UsageFilter) -> Result<Vec<crate::UsageGroup>> {
        self.shared.store.usage(filter).await
    }

    /// Cancels a job: at once if it is pending; if it is running, in whichever process runs it
    /// (on PostgreSQL within milliseconds, woken by a `NOTIFY`, or at the owner's next poll if
    /// that wake-up was lost; on SQLite within about a quarter of a second).
    /// Cancelling a finished job changes nothing and says so.
    pub async fn cancel(&self, id: JobId) -> Result<CancelOutcome> {
        match self.shared.store.cancel(id).await? {
            CancelEffect::Cancelled => {
                self.shared.notify_finished(id, None);
                Ok(CancelOutcome::Cancelled)
            }
            CancelEffect::Requested => {
                // Running here: drop it now rather than at the next maintenance tick.
                self.shared.cancel_local(id);
                Ok(CancelOutcome::Requested)
            }
            CancelEffect::AlreadyFinal(state) => Ok(CancelOutcome::AlreadyFinished(state)),
            CancelEffect::NotFound => Err(Error::NotFound(id)),
        }
    }

    /// Puts a `failed` (needs review included) or `cancelled` job back to `pending`, due now,
    /// with a fresh attempt budget, from any process. How it ended is kept in its
    /// [`JobStatus::earlier_runs`]; its journal is kept, so the steps it already paid for are
    /// replayed (see [`Jobs::retry_from_scratch`] to run them again). Retrying a pending,
    /// running or completed job is [`Error::NotRetryable`].
    pub async fn retry(&self, id: JobId) -> Result<()> {
        self.retry_with(id, false).await
    }

    /// As [`Jobs::retry`], with the job's journal cleared: every step runs again.
    pub async fn retry_from_scratch(&self, id: JobId) -> Result<()> {
        self.retry_with(id, true).await
    }

    async fn retry_with(&self, id: JobId, clear_journal: bool) -> Result<()> {
        match self.shared.store.retry(id, clear_journal).await? {
            RetryEffect::Retried => {
                self.shared.wake_dispatcher();
                Ok(())
            }
            RetryEffect::NotRetryable(state) => Err(Error::NotRetryable { id, state }),
            RetryEffect::NotFound => Err(Error::NotFound(id)),
        }
    }

    /// A typed handle to an existing job of kind `J`, checking the stored name: a job of
    /// another name is [`Error::WrongJob`]. (See [`Jobs::handle`] for an unchecked one.)
    pub async fn handle_of<J: Job>(&self, id: JobId) -> Result<JobHandle<J::Output>> {
        let status = self.status(id).await?;
        if status.name != J::NAME {
            return Err(Error::WrongJob {
                id,
                expected: J::NAME,
                found: status.name,
            });
        }
        Ok(JobHandle::new(id, self.clone()))
    }

    /// Deletes finished jobs (completed, failed or cancelled) that ended `older_than` ago or
    /// earlier (with `Duration::ZERO`, every finished job), with their journals. Pending and
    /// running jobs are never deleted.
    ///
    /// Deletes a few hundred jobs per transaction, so spawns and completions go on between
    /// chunks; then truncates the write-ahead log and gives the freed space back to the file
    /// system (databases created by this version). Returns how many jobs it deleted.
    pub async fn prune(&self, older_than: Duration) -> Result<u64> {
        let before = now_ms() - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        self.shared.store.prune(before).await
    }

    /// A read-only [`Inspector`](crate::Inspector) of this runtime's database (arguments,
    /// results, step journals, finished jobs over time), on a connection of its own. An
    /// in-memory SQLite database (`sqlite::memory:`) cannot be opened twice: that is
    /// [`Error::Config`].
    pub async fn inspector(&self) -> Result<crate::Inspector> {
        if self.url.contains(":memory:") || self.url.contains("mode=memory") {
            return Err(Error::Config(format!(
                "an inspector cannot open `{}`: an in-memory database is private to the \
                 connection that made it; use a file",
                self.url
            )));
        }
        crate::Inspector::open(&self.url).await
    }

    /// This worker's owner name, as shown in job statuses.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// Stops gracefully: claims nothing more, lets running jobs finish within the grace period
    /// (see [`JobsBuilder::shutdown_grace`]), then hands the rest back so the next process
    /// resumes them at once.
    pub async fn shutdown(&self) {
        self.shared
            .shutdown(self.shared.settings.shutdown_grace)
            .await
    }
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("owner", &self.shared.owner)
            .finish_non_exhaustive()
    }
}
