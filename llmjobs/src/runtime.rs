//! The in-process runtime: the dispatcher that claims jobs, the workers that run them, and the
//! maintenance loop that renews leases, notices cancellations and resumes dead owners' jobs.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::context::AttemptRef;
use crate::job::Registration;
use crate::owner::{self, OwnerLock};
use crate::status::JobStatus;
use crate::store::{ClaimedJob, NameQuota, NewJob, Store};
use crate::{Error, JobConfig, JobContext, JobId, Progress, Result};

mod attempt;
mod dispatch;
mod hints;
mod maintain;
mod panic;
mod progress;
mod shutdown;
mod waiters;

pub(crate) use maintain::recover_orphans;
use progress::ProgressCallback;
pub use progress::ProgressEvent;
use waiters::WaitSlot;

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
    /// The completion cache and the per-key budgets of `ctx.llm()` calls.
    #[cfg(feature = "llm")]
    pub(crate) llm_policy: crate::llm::LlmPolicy,
    pub(crate) concurrency: u32,
    pub(crate) global_concurrency: Option<u32>,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) default_timeout: Option<Duration>,
    pub(crate) default_retries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) shutdown_grace: Duration,
    pub(crate) run_jobs: bool,
    /// Finished jobs older than this are pruned in the background.
    pub(crate) retention: Option<Duration>,
    /// How long an idempotency key holds after its job ends; `None`: until it is pruned.
    pub(crate) idempotency_window: Option<Duration>,
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
    /// Each attempt's context, which holds its cancel signal: one allocation per job for both.
    jobs: HashMap<JobId, AttemptRef>,
    /// Set when the runtime stops: no job starts here any more. Checked and set under the same
    /// lock that starting a job takes, so a job either starts before shutdown waits for the
    /// workers or not at all.
    closed: bool,
    /// Jobs claimed for slots that a spawn's local hand-off filled while the claim was in
    /// flight: they start here, in claim order, as slots free, before any new hand-off. Rare,
    /// and never more than one claim's worth; their rows are running under this owner, so a
    /// shutdown hands them back with the others.
    queued: VecDeque<ClaimedJob>,
}

impl Running {
    /// Slots neither running a job nor owed to a queued one.
    fn free(&self, concurrency: u32) -> usize {
        (concurrency as usize).saturating_sub(self.jobs.len() + self.queued.len())
    }
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
    /// Set with a wake-up that says jobs may have become claimable (spawned pending, put back,
    /// announced by another process), rather than only that a slot freed: a dispatcher whose
    /// last claim found the queue empty claims again only for these, or at its poll.
    new_work: std::sync::atomic::AtomicBool,
    /// Wakes the schedule ticker: a schedule was added or removed here.
    pub(crate) schedules_changed: Notify,
    running: Mutex<Running>,
    waiters: Mutex<HashMap<JobId, Weak<WaitSlot>>>,
    /// In-process progress subscribers, by job.
    progress_subscribers: Mutex<HashMap<JobId, Vec<mpsc::UnboundedSender<Progress>>>>,
    /// Set by shutdown: claim nothing more.
    stop_claiming: CancellationToken,
    /// Set when running jobs must be dropped and handed back (see [`Shared::abort_jobs`]).
    abort: CancellationToken,
    /// Set when the runtime is gone: background loops end.
    stopped: CancellationToken,
    workers: TaskTracker,
    /// The dispatcher's task, awaited at shutdown so that no claim is in flight when the jobs
    /// are handed back.
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    owner_lock: Mutex<Option<OwnerLock>>,
    /// The store wakes this process when other processes change jobs (see `hints`).
    hinted: std::sync::atomic::AtomicBool,
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
            new_work: std::sync::atomic::AtomicBool::new(false),
            schedules_changed: Notify::new(),
            running: Mutex::new(Running::default()),
            waiters: Mutex::new(HashMap::new()),
            progress_subscribers: Mutex::new(HashMap::new()),
            stop_claiming: CancellationToken::new(),
            abort: CancellationToken::new(),
            stopped: CancellationToken::new(),
            workers: TaskTracker::new(),
            dispatcher: Mutex::new(None),
            owner_lock: Mutex::new(owner_lock),
            hinted: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Starts the dispatcher and the maintenance loop.
    pub(crate) fn start(self: &Arc<Self>) {
        self.listen_for_hints();
        if self.settings.run_jobs && !self.registry.is_empty() {
            let dispatcher = tokio::spawn(
                dispatch::dispatch(self.clone())
                    .instrument(tracing::debug_span!("llmjobs.dispatcher", owner = %self.owner)),
            );
            *self.dispatcher.lock().expect("dispatcher lock") = Some(dispatcher);
        }
        tokio::spawn(maintain::maintain(
            Arc::downgrade(self),
            self.stopped.clone(),
        ));
        if self.settings.run_jobs {
            tokio::spawn(crate::schedule::tick(
                Arc::downgrade(self),
                self.stopped.clone(),
                crate::status::now_ms(),
            ));
        }
        if let Some(retention) = self.settings.retention {
            tokio::spawn(maintain::retain(
                Arc::downgrade(self),
                self.stopped.clone(),
                retention,
            ));
        }
    }

    /// Wakes the dispatcher to claim: jobs may have become claimable.
    pub(crate) fn wake_dispatcher(&self) {
        self.new_work
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    /// Wakes the dispatcher because a slot freed: it claims only if its last claim left jobs
    /// behind (passed over for a limit, or more than its slots).
    pub(crate) fn slot_freed(&self) {
        self.wake.notify_one();
    }

    /// Takes the flag [`Shared::wake_dispatcher`] sets.
    fn take_new_work(&self) -> bool {
        self.new_work
            .swap(false, std::sync::atomic::Ordering::AcqRel)
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

    /// Whether a job of this process is running `id` now.
    pub(crate) fn runs_here(&self, id: JobId) -> bool {
        self.running
            .lock()
            .expect("running lock")
            .jobs
            .contains_key(&id)
    }

    /// Drops the future of a job running in this process, if it runs here. The worker then
    /// marks it cancelled.
    pub(crate) fn cancel_local(&self, id: JobId) -> bool {
        let running = self.running.lock().expect("running lock");
        match running.jobs.get(&id) {
            Some(job) => {
                job.cancel();
                true
            }
            None => false,
        }
    }

    /// Frees the slot of `ctx`'s attempt (and only that attempt's).
    fn forget_running(self: &Arc<Self>, ctx: &JobContext) {
        let mut running = self.running.lock().expect("running lock");
        let id = ctx.id();
        if running.jobs.get(&id).is_some_and(|job| job.is(ctx)) {
            running.jobs.remove(&id);
        }
        if !running.closed
            && running.jobs.len() < self.settings.concurrency as usize
            && let Some(job) = running.queued.pop_front()
        {
            dispatch::start_locked(self, &mut running, job);
        }
        drop(running);
        self.slot_freed();
    }

    /// The row a call becomes, not yet claimed: the job's registered settings (else the
    /// call's), this runtime's defaults.
    pub(crate) fn new_job<T>(&self, call: &crate::JobCall<T>, now: i64) -> Result<NewJob> {
        let args = call.args_json().map_err(|message| Error::SerializeArgs {
            name: call.name().to_string(),
            message: message.to_string(),
        })?;
        let config = self
            .registry
            .get(call.name())
            .map(|e| &e.config)
            .unwrap_or(call.config());
        let retries = config.retries.unwrap_or(self.settings.default_retries);
        Ok(NewJob {
            id: JobId::new(),
            name: call.name().to_string(),
            args: args.to_string(),
            priority: call.priority_value(),
            concurrency_key: call.key().map(str::to_string),
            key_limit: call.config().key_limit.or(config.key_limit),
            max_attempts: retries.saturating_add(1),
            run_at: call.run_at_time().map_or(now, crate::status::to_ms),
            created_at: now,
            claimed_by: None,
            idempotency_key: call.idempotency_key_value().map(str::to_string),
            idempotency_window: self
                .settings
                .idempotency_window
                .map(|w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX)),
            budget: call
                .budget_value()
                .and_then(|b| serde_json::to_string(&b).ok()),
        })
    }

    fn running_count(&self) -> usize {
        self.running.lock().expect("running lock").jobs.len()
    }

    /// Slots a claim may fill now.
    fn free_slots(&self) -> usize {
        let running = self.running.lock().expect("running lock");
        running.free(self.settings.concurrency)
    }
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
            .field("retention", &self.retention)
            .field("idempotency_window", &self.idempotency_window)
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
