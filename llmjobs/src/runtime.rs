//! The in-process runtime: the dispatcher that claims jobs, the workers that run them, and the
//! maintenance loop that renews leases, notices cancellations and resumes dead owners' jobs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::job::Registration;
use crate::owner::{self, Liveness, OwnerLock};
use crate::status::{JobStatus, now_ms};
use crate::store::{ClaimRequest, ClaimedJob, Finish, NameQuota, Store, Terminal};
use crate::{Error, JobConfig, JobContext, JobId, Progress, Result};

mod panic;

/// A callback that sees every progress report of every job this process runs.
pub(crate) type ProgressCallback = Arc<dyn Fn(&ProgressEvent<'_>) + Send + Sync>;

/// One progress report, as the builder's [`on_progress`](crate::JobsBuilder::on_progress)
/// callback sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ProgressEvent<'a> {
    /// The job that reported.
    pub id: JobId,
    /// Its name.
    pub name: &'a str,
    /// The report.
    pub progress: &'a Progress,
}

/// Decides, at spawn, whether a call goes straight to the background.
pub(crate) type Classifier = Arc<dyn Fn(&CallInfo<'_>) -> Option<bool> + Send + Sync>;

/// What a spawn-time classifier ([`JobsBuilder::classify_long_running`](crate::JobsBuilder::classify_long_running))
/// sees of a call.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CallInfo<'a> {
    /// The job's name.
    pub name: &'a str,
    /// The call's arguments, as JSON.
    pub args: &'a str,
}

/// Settings fixed when the runtime starts.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) on_progress: Option<ProgressCallback>,
    pub(crate) classifiers: Vec<Classifier>,
    /// The client behind `ctx.llm()`, or why there is none.
    #[cfg(feature = "llm")]
    pub(crate) llm: Result<crate::llm::LlmClient, String>,
    pub(crate) concurrency: u32,
    pub(crate) global_concurrency: Option<u32>,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) default_retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) shutdown_grace: Duration,
    pub(crate) run_jobs: bool,
}

/// Exponential back-off between attempts, with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub base: Duration,
    /// Each further retry waits this many times longer.
    pub factor: f64,
    /// No retry waits longer than this.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (1 for the first), jittered to between half and
    /// all of the exponential value so that jobs failing together do not retry together.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .factor
            .max(1.0)
            .powi(retry.saturating_sub(1).min(64) as i32);
        let full = self.base.as_secs_f64() * exp;
        let full = full.min(self.cap.as_secs_f64());
        let jitter = 0.5 + 0.5 * random_unit();
        Duration::from_secs_f64(full * jitter)
    }
}

/// A uniformly random number in `[0, 1)`.
fn random_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// A job this process can run.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) registration: Registration,
    pub(crate) config: JobConfig,
}

/// Jobs running in this process.
#[derive(Default)]
struct Running {
    /// Cancelling a token drops the job's future.
    jobs: HashMap<JobId, CancellationToken>,
}

/// Everything the background tasks and handles share.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) owner: Arc<str>,
    pub(crate) settings: Settings,
    pub(crate) registry: HashMap<&'static str, Entry>,
    quotas: Arc<[NameQuota]>,
    db_path: Option<PathBuf>,
    /// Wakes the dispatcher: a job was spawned or finished here.
    wake: Notify,
    running: Mutex<Running>,
    waiters: Mutex<HashMap<JobId, Weak<WaitSlot>>>,
    /// In-process progress subscribers, by job.
    progress_subscribers: Mutex<HashMap<JobId, Vec<mpsc::UnboundedSender<Progress>>>>,
    /// Set by shutdown: claim nothing more.
    stop_claiming: CancellationToken,
    /// Set when running jobs must be dropped and handed back.
    abort: CancellationToken,
    /// Set when the runtime is gone: background loops end.
    stopped: CancellationToken,
    workers: TaskTracker,
    owner_lock: Mutex<Option<OwnerLock>>,
}

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        registry: HashMap<&'static str, Entry>,
        db_path: Option<PathBuf>,
    ) -> Result<Arc<Self>> {
        let owner: Arc<str> = owner::new_owner_name().into();
        let owner_lock = match &db_path {
            Some(path) => Some(OwnerLock::acquire(path, &owner)?),
            None => None,
        };
        let mut quotas: Vec<NameQuota> = registry
            .values()
            .map(|e| NameQuota {
                name: e.registration.name,
                limit: e.config.max_concurrency,
            })
            .collect();
        quotas.sort_by_key(|q| q.name);
        Ok(Arc::new(Shared {
            store,
            owner,
            settings,
            registry,
            quotas: quotas.into(),
            db_path,
            wake: Notify::new(),
            running: Mutex::new(Running::default()),
            waiters: Mutex::new(HashMap::new()),
            progress_subscribers: Mutex::new(HashMap::new()),
            stop_claiming: CancellationToken::new(),
            abort: CancellationToken::new(),
            stopped: CancellationToken::new(),
            workers: TaskTracker::new(),
            owner_lock: Mutex::new(owner_lock),
        }))
    }

    /// Starts the dispatcher and the maintenance loop.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.settings.run_jobs && !self.registry.is_empty() {
            tokio::spawn(dispatch(self.clone()).instrument(tracing::debug_span!(
                "llmjobs.dispatcher",
                owner = %self.owner
            )));
        }
        tokio::spawn(maintain(Arc::downgrade(self), self.stopped.clone()));
    }

    pub(crate) fn wake_dispatcher(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stop_claiming.is_cancelled()
    }

    pub(crate) async fn status(&self, id: JobId) -> Result<JobStatus> {
        self.store
            .get(id)
            .await?
            .ok_or(Error::NotFound(id))?
            .to_status()
    }

    /// The slot through which this process tells waiters of `id` that it finished the job.
    pub(crate) fn waiter(self: &Arc<Self>, id: JobId) -> Waiter {
        let mut waiters = self.waiters.lock().expect("waiters lock");
        let slot = match waiters.get(&id).and_then(Weak::upgrade) {
            Some(slot) => slot,
            None => {
                let slot = Arc::new(WaitSlot::default());
                waiters.insert(id, Arc::downgrade(&slot));
                slot
            }
        };
        Waiter {
            id,
            slot,
            shared: self.clone(),
        }
    }

    /// Whether a job of this process is running `id` now.
    pub(crate) fn runs_here(&self, id: JobId) -> bool {
        self.running
            .lock()
            .expect("running lock")
            .jobs
            .contains_key(&id)
    }

    /// Hands a report to the global callback and to the job's in-process subscribers.
    pub(crate) fn publish_progress(&self, id: JobId, name: &str, progress: &Progress) {
        if let Some(callback) = &self.settings.on_progress {
            callback(&ProgressEvent { id, name, progress });
        }
        let mut subscribers = self.progress_subscribers.lock().expect("progress lock");
        if let Some(list) = subscribers.get_mut(&id) {
            list.retain(|tx| tx.send(progress.clone()).is_ok());
            if list.is_empty() {
                subscribers.remove(&id);
            }
        }
    }

    /// A channel that receives every later progress report of `id` made in this process; it
    /// closes when the job ends here.
    pub(crate) fn subscribe_progress(&self, id: JobId) -> mpsc::UnboundedReceiver<Progress> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.progress_subscribers
            .lock()
            .expect("progress lock")
            .entry(id)
            .or_default()
            .push(tx);
        rx
    }

    /// Forgets the subscribers of `id` whose receivers are gone.
    pub(crate) fn prune_progress_subscribers(&self, id: JobId) {
        let mut subscribers = self.progress_subscribers.lock().expect("progress lock");
        if let Some(list) = subscribers.get_mut(&id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                subscribers.remove(&id);
            }
        }
    }

    /// Wakes the waiters of `id`: the job ended here (`outcome` is what was committed), or its
    /// row changed in a way they should read.
    pub(crate) fn notify_finished(&self, id: JobId, outcome: Option<Terminal>) {
        // Ends the progress streams of the job.
        self.progress_subscribers
            .lock()
            .expect("progress lock")
            .remove(&id);
        let slot = self
            .waiters
            .lock()
            .expect("waiters lock")
            .get(&id)
            .and_then(Weak::upgrade);
        if let Some(slot) = slot {
            if let Some(outcome) = outcome {
                *slot.outcome.lock().expect("outcome lock") = Some(outcome);
            }
            slot.notify.notify_waiters();
        }
    }

    /// Drops the future of a job running in this process, if it runs here. The worker then
    /// marks it cancelled.
    pub(crate) fn cancel_local(&self, id: JobId) -> bool {
        let running = self.running.lock().expect("running lock");
        match running.jobs.get(&id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

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

    fn running_count(&self) -> usize {
        self.running.lock().expect("running lock").jobs.len()
    }

    /// Stops claiming, lets running jobs finish for up to the grace period, then drops the rest
    /// and hands them back so the next process resumes them at once.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.stop_claiming.cancel();
        self.wake.notify_one();
        self.workers.close();
        if tokio::time::timeout(grace, self.workers.wait())
            .await
            .is_err()
        {
            tracing::info!(
                running = self.running_count(),
                "shutdown grace period over; handing the remaining jobs back"
            );
            self.abort.cancel();
            self.workers.wait().await;
        }
        let handed_back = self.store.release_owner(self.owner.to_string()).await;
        self.stopped.cancel();
        self.store.close().await;
        match handed_back {
            Ok(_) => {
                if let Some(lock) = self.owner_lock.lock().expect("owner lock").take() {
                    lock.remove();
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "could not hand running jobs back; the next process will resume them"
            ),
        }
    }

    /// Stops everything at once, without waiting: what dropping the last `Jobs` does. Running
    /// jobs stay `running` under this owner; its lock is released, so any other worker resumes
    /// them right away.
    pub(crate) fn abandon(&self) {
        self.stop_claiming.cancel();
        self.abort.cancel();
        self.stopped.cancel();
        self.wake.notify_one();
        drop(self.owner_lock.lock().expect("owner lock").take());
    }
}

/// What waiters of one job in this process share: a wake-up, and the outcome when the job
/// ended here, so they need not read it back from the database.
#[derive(Default)]
pub(crate) struct WaitSlot {
    notify: Notify,
    outcome: Mutex<Option<Terminal>>,
}

/// Keeps the waiter's slot registered while it waits.
pub(crate) struct Waiter {
    id: JobId,
    slot: Arc<WaitSlot>,
    shared: Arc<Shared>,
}

impl Waiter {
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.slot.notify.notified()
    }

    /// The job's outcome, if this process ended it while the waiter was registered.
    pub(crate) fn outcome(&self) -> Option<Terminal> {
        self.slot.outcome.lock().expect("outcome lock").clone()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiters = self.shared.waiters.lock().expect("waiters lock");
        // The map holds a weak reference; ours is the last strong one.
        if Arc::strong_count(&self.slot) == 1 {
            waiters.remove(&self.id);
        }
    }
}

/// Claims jobs while there is room, and sleeps until woken or the poll interval passes.
async fn dispatch(shared: Arc<Shared>) {
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

/// Renews leases, stops jobs whose cancellation was requested from another process, and hands
/// back the jobs of dead owners.
async fn maintain(shared: Weak<Shared>, stopped: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heartbeat = tokio::time::Instant::now();
    let mut last_owner_scan: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.cancelled() => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        if shared.running_count() > 0 {
            if now - last_heartbeat >= shared.settings.lease / 3 {
                last_heartbeat = now;
                let lease_until = now_ms() + shared.settings.lease.as_millis() as i64;
                if let Err(e) = shared
                    .store
                    .heartbeat(shared.owner.clone(), lease_until)
                    .await
                {
                    tracing::warn!(error = %e, "renewing leases failed");
                }
            }
            match shared.store.cancel_requests(shared.owner.clone()).await {
                Ok(ids) => {
                    for id in ids {
                        shared.cancel_local(id);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "reading cancel requests failed"),
            }
        }
        if last_owner_scan.is_none_or(|t| now - t >= Duration::from_secs(1))
            && !shared.is_stopping()
        {
            last_owner_scan = Some(now);
            if let Err(e) = recover_orphans(&shared).await {
                tracing::warn!(error = %e, "looking for orphaned jobs failed");
            }
        }
    }
}

/// Hands back the running jobs of owners that are dead: at once for owners on this machine
/// (their lock is free), after their lease for the others.
pub(crate) async fn recover_orphans(shared: &Shared) -> Result<u64> {
    let owners = shared.store.running_owners(shared.owner.clone()).await?;
    let mut recovered = 0;
    let mut judge_by_lease = false;
    for owner in owners {
        let liveness = match &shared.db_path {
            Some(path) => owner::probe(path, &owner),
            None => Liveness::Unknown,
        };
        match liveness {
            Liveness::Alive => {}
            Liveness::Dead(lock) => {
                let n = shared.store.release_owner(owner.clone()).await?;
                lock.forget();
                if n > 0 {
                    tracing::info!(%owner, jobs = n, "resuming the jobs of a dead worker");
                }
                recovered += n;
            }
            Liveness::Unknown => judge_by_lease = true,
        }
    }
    if judge_by_lease {
        let n = shared.store.release_expired(now_ms()).await?;
        if n > 0 {
            tracing::info!(jobs = n, "resuming jobs whose worker's lease expired");
        }
        recovered += n;
    }
    if recovered > 0 {
        shared.wake_dispatcher();
    }
    Ok(recovered)
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("on_progress", &self.on_progress.is_some())
            .field("classifiers", &self.classifiers.len())
            .field("concurrency", &self.concurrency)
            .field("global_concurrency", &self.global_concurrency)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .field("default_timeout", &self.default_timeout)
            .field("default_retries", &self.default_retries)
            .field("backoff", &self.backoff)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("run_jobs", &self.run_jobs)
            .finish()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("owner", &self.owner)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
