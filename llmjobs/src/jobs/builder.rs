//! [`JobsBuilder`]: the settings of a runtime, and opening one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{DropGuard, Durability, Jobs};
use crate::job::Registration;
use crate::runtime::{self, Backoff, CallInfo, Entry, ProgressEvent, Settings, Shared};
use crate::store::Store;
use crate::{Error, Job, Result};

/// Settings for [`Jobs`]. Get one with [`Jobs::builder`].
#[derive(Clone)]
pub struct JobsBuilder {
    url: Option<String>,
    durability: Durability,
    settings: Settings,
    registrations: Vec<Registration>,
    auto_register: bool,
}

impl Default for JobsBuilder {
    fn default() -> Self {
        JobsBuilder {
            url: None,
            durability: Durability::Full,
            settings: Settings {
                on_progress: None,
                classifiers: Vec::new(),
                #[cfg(feature = "llm")]
                llm: Err("not configured yet".into()),
                #[cfg(feature = "llm")]
                llm_policy: crate::llm::LlmPolicy::default(),
                concurrency: 64,
                global_concurrency: None,
                lease: Duration::from_secs(30),
                poll_interval: Duration::from_millis(250),
                default_timeout: None,
                default_retries: 0,
                backoff: Backoff::default(),
                shutdown_grace: Duration::from_secs(30),
                run_jobs: true,
                retention: None,
                idempotency_window: None,
            },
            registrations: Vec::new(),
            auto_register: true,
        }
    }
}

impl JobsBuilder {
    /// The database: `sqlite://path/to/jobs.db`, `sqlite::memory:` or a plain file path.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// At most this many jobs run at once in this process (default 64).
    pub fn concurrency(mut self, limit: u32) -> Self {
        self.settings.concurrency = limit;
        self
    }

    /// At most this many jobs run at once over every process sharing the database (default:
    /// no such limit).
    pub fn global_concurrency(mut self, limit: u32) -> Self {
        self.settings.global_concurrency = Some(limit);
        self
    }

    /// How long a running job's claim lasts without renewal (default 30 s). A worker on
    /// another machine that stops renewing loses its jobs to live workers after this long;
    /// on this machine a dead worker is noticed at once.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How often an idle worker looks for jobs spawned by other processes (default 250 ms). On
    /// PostgreSQL, whose `NOTIFY` wakes workers at once, this poll is the safety net for a lost
    /// wake-up; it is also how often a worker there reads the cancel requests that other
    /// processes made of its running jobs (no more often than every quarter of a second), which
    /// a `NOTIFY` likewise brings at once.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// Whether every commit is synced to disk (default [`Durability::Full`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The per-attempt timeout of jobs that do not set their own (default: none).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.settings.default_timeout = Some(timeout);
        self
    }

    /// How many times a failed attempt is retried, for jobs that do not set their own
    /// (default 0).
    pub fn default_retries(mut self, retries: u32) -> Self {
        self.settings.default_retries = retries;
        self
    }

    /// The back-off between retries (default: 1 s, doubling, at most 60 s, jittered).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// How long [`Jobs::shutdown`] lets running jobs finish before handing them back
    /// (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// Deletes finished jobs (completed, failed, cancelled) once they are older than
    /// `retention`, with their journals, in the background (default: keep them; the original
    /// system kept a day). Pruning deletes a few hundred jobs per transaction, so it never
    /// stalls the queue, and gives the space back to the file system. See [`Jobs::prune`].
    pub fn retention(mut self, retention: Duration) -> Self {
        self.settings.retention = Some(retention);
        self
    }

    /// How long after its job ends an idempotency key still holds: a spawn with the key within
    /// the window returns the ended job; after it, makes a new one (default: as long as the
    /// ended job is kept, until it is pruned). Keys of unfinished jobs always hold.
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.settings.idempotency_window = Some(window);
        self
    }

    /// Whether this process runs jobs (default `true`). A process that only spawns and
    /// watches jobs, such as a web front end, sets `false`.
    pub fn run_jobs(mut self, run: bool) -> Self {
        self.settings.run_jobs = run;
        self
    }

    /// Calls `callback` with every progress report of every job this process runs, as it is
    /// made. Keep it quick: it runs inside the reporting job.
    pub fn on_progress<F>(mut self, callback: F) -> Self
    where
        F: Fn(&ProgressEvent<'_>) + Send + Sync + 'static,
    {
        self.settings.on_progress = Some(Arc::new(callback));
        self
    }

    /// The LLM client that jobs reach through [`JobContext::llm`](crate::JobContext::llm)
    /// and that runs the built-in [`llm_call`](crate::llm::llm_call) job. Without one, a client
    /// configured from the environment is used ([`LlmClient::from_env`](crate::llm::LlmClient::from_env)).
    #[cfg(feature = "llm")]
    pub fn llm(mut self, client: crate::llm::LlmClient) -> Self {
        self.settings.llm = Ok(client);
        self
    }

    /// Adds a spawn-time classifier: for each call given to [`Jobs::run_with_timeout`], it may
    /// say whether the call goes straight to the background (`Some`), or leave it to the next
    /// classifier and finally to the job itself (`None`). A call's own
    /// [`JobCall::long_running`](crate::JobCall::long_running) always wins.
    pub fn classify_long_running<F>(mut self, classify: F) -> Self
    where
        F: Fn(&CallInfo<'_>) -> Option<bool> + Send + Sync + 'static,
    {
        self.settings.classifiers.push(Arc::new(classify));
        self
    }

    /// Turns on the completion cache for LLM calls made by jobs (`ctx.llm()`, `llm_call`),
    /// shared by every process on the database: see [`CompletionCache`](crate::llm::CompletionCache).
    #[cfg(feature = "llm")]
    pub fn llm_cache(mut self, cache: crate::llm::CompletionCache) -> Self {
        self.settings.llm_policy.cache = Some(cache);
        self
    }

    /// Caps what the LLM calls of jobs may spend through one provider (one API key) over a
    /// sliding window, across every process on the database: see
    /// [`KeyBudget`](crate::llm::KeyBudget). A call that would go over is not sent, and its job
    /// fails permanently. May be given for several providers.
    #[cfg(feature = "llm")]
    pub fn budget_per_key(mut self, budget: crate::llm::KeyBudget) -> Self {
        self.settings.llm_policy.key_budgets.push(budget);
        self
    }

    /// How long a budget reservation holds without being renewed (default 30 s): a call
    /// reserves what it could cost before it is sent and renews the reservation every third
    /// of this while it runs, so a process that dies mid-call gives its room back this long
    /// after its last renewal. See [`Budget`](crate::Budget).
    #[cfg(feature = "llm")]
    pub fn budget_lease(mut self, lease: std::time::Duration) -> Self {
        self.settings.llm_policy.budget_lease = Some(lease);
        self
    }

    /// The model patterns (`"max/*"`, `"o1-*"`) whose [`llm_call`](crate::llm::llm_call)s go
    /// straight to the background, instead of the default
    /// [`DEFAULT_LONG_RUNNING_PATTERNS`](crate::llm::DEFAULT_LONG_RUNNING_PATTERNS). Requests
    /// with an agent check or `long_running: true` still do.
    #[cfg(feature = "llm")]
    pub fn long_running_models<I, S>(self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        self.classify_long_running(move |call| {
            if call.name != <crate::llm::LlmCall as Job>::NAME {
                return None;
            }
            let request: crate::llm::ChatRequest = serde_json::from_str(call.args).ok()?;
            Some(request.is_long_running(&patterns))
        })
    }

    /// Registers a job by hand: for jobs that implement [`Job`] without `#[llm_job]`.
    pub fn register<J: Job>(mut self) -> Self {
        self.registrations.push(Registration::of::<J>());
        self
    }

    /// Whether every `#[llm_job]` linked into the program is registered (default `true`).
    /// With `false`, only jobs passed to [`JobsBuilder::register`] run here.
    pub fn auto_register(mut self, auto: bool) -> Self {
        self.auto_register = auto;
        self
    }

    /// Opens the database and starts the runtime.
    pub async fn open(self) -> Result<Jobs> {
        let url = self
            .url
            .clone()
            .ok_or_else(|| Error::Config("no database url: call JobsBuilder::url".into()))?;
        if self.settings.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if self.settings.lease < Duration::from_secs(1) {
            return Err(Error::Config("the lease must be at least 1 s".into()));
        }
        let registry = self.registry()?;
        let settings = with_default_llm(self.settings);
        let (store, db_path) = open_store(&url, self.durability).await?;
        let settings = with_shared_limits(settings, &*store);
        let shared = Shared::new(store, settings, registry, db_path)?;
        // Resume what dead workers left before claiming anything new.
        runtime::recover_orphans(&shared).await?;
        crate::schedule::declare(&shared).await?;
        shared.start();
        Ok(Jobs {
            _guard: Arc::new(DropGuard(shared.clone())),
            url: url.into(),
            shared,
        })
    }

    fn registry(&self) -> Result<HashMap<&'static str, Entry>> {
        let mut registry: HashMap<&'static str, Entry> = HashMap::new();
        let linked: Vec<Registration> = if self.auto_register {
            inventory::iter::<Registration>
                .into_iter()
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        for registration in linked.iter().chain(&self.registrations) {
            if let Some(existing) = registry.get(registration.name) {
                let first = (existing.registration.type_name)();
                let second = (registration.type_name)();
                if first == second {
                    continue;
                }
                return Err(Error::DuplicateJobName {
                    name: registration.name.to_string(),
                    first,
                    second,
                });
            }
            let config = (registration.config)();
            if config.max_concurrency == Some(0) {
                return Err(Error::Config(format!(
                    "job `{}` has max_concurrency 0 and could never run",
                    registration.name
                )));
            }
            registry.insert(
                registration.name,
                Entry {
                    registration: *registration,
                    config,
                },
            );
        }
        Ok(registry)
    }
}

/// Without a configured LLM client, `ctx.llm()` uses one configured from the environment.
#[cfg(feature = "llm")]
fn with_default_llm(mut settings: Settings) -> Settings {
    if settings.llm.is_err() {
        settings.llm = crate::llm::LlmClient::from_env().map_err(|e| {
            format!(
                "no LLM client configured (JobsBuilder::llm) and none from the environment: {e}"
            )
        });
    }
    settings
}

/// A client that asked for shared rate limits gets them from the job database.
#[cfg(feature = "llm")]
fn with_shared_limits(mut settings: Settings, store: &dyn Store) -> Settings {
    if let Ok(client) = settings.llm {
        settings.llm = Ok(crate::llm::share_through(client, store));
    }
    settings
}

#[cfg(not(feature = "llm"))]
fn with_shared_limits(settings: Settings, _store: &dyn Store) -> Settings {
    settings
}

#[cfg(not(feature = "llm"))]
fn with_default_llm(settings: Settings) -> Settings {
    settings
}

async fn open_store(
    url: &str,
    durability: Durability,
) -> Result<(Arc<dyn Store>, Option<std::path::PathBuf>)> {
    #[cfg(feature = "sqlite")]
    if url.starts_with("sqlite:") || !url.contains("://") {
        let target = crate::store::sqlite::SqliteTarget::parse(url)?;
        let path = target.path().map(|p| p.to_path_buf());
        if let Some(parent) = path.as_deref().and_then(|p| p.parent())
            && !parent.as_os_str().is_empty()
            && !parent.is_dir()
        {
            return Err(Error::Open {
                url: url.to_string(),
                source: format!("the folder {} does not exist", parent.display()).into(),
            });
        }
        let store = crate::store::sqlite::SqliteStore::open(url, &target, durability).await?;
        // Lock files live beside the database, found by its path: every process must name it
        // the same way, whatever path (relative, through a symlink) it was opened by.
        let path = match path {
            Some(path) => Some(std::fs::canonicalize(&path).map_err(|e| Error::Open {
                url: url.to_string(),
                source: Box::new(e),
            })?),
            None => None,
        };
        return Ok((Arc::new(store), path));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        {
            let target = crate::store::postgres::PgTarget::parse(url)?;
            let store = crate::store::postgres::PgStore::open(url, &target, durability).await?;
            // Liveness is the store's (advisory locks), not lock files.
            return Ok((Arc::new(store), None));
        }
        #[cfg(not(feature = "postgres"))]
        return Err(Error::InvalidUrl {
            url: url.to_string(),
            reason: "PostgreSQL support is not compiled in; enable llmjobs' `postgres` feature"
                .into(),
        });
    }
    let _ = durability;
    Err(Error::InvalidUrl {
        url: url.to_string(),
        reason: "unsupported scheme; expected sqlite:// (enable the `sqlite` feature)".into(),
    })
}

impl fmt::Debug for JobsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobsBuilder")
            .field("url", &self.url)
            .field("durability", &self.durability)
            .field("settings", &self.settings)
            .field("registrations", &self.registrations)
            .field("auto_register", &self.auto_register)
            .finish()
    }
}
