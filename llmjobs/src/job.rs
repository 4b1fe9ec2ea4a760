use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{JobContext, JobError};

/// A boxed, sendable future, as stored in the job registry.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A durable job: a name stored in the database, serializable arguments, and an async body.
///
/// `#[llm_job]` implements this trait for you; implementing it by hand is equally supported
/// (register such a job with [`JobsBuilder::register`](crate::JobsBuilder::register)).
///
/// ```
/// use llmjobs::{Job, JobCall, JobConfig, JobContext, JobError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Shout {
///     text: String,
/// }
///
/// impl Job for Shout {
///     const NAME: &'static str = "shout";
///     type Output = String;
///
///     fn config() -> JobConfig {
///         JobConfig::new().max_concurrency(2)
///     }
///
///     async fn run(_ctx: JobContext, args: Self) -> Result<String, JobError> {
///         Ok(args.text.to_uppercase())
///     }
/// }
///
/// let call: JobCall<String> = JobCall::new::<Shout>(&Shout { text: "hi".into() });
/// assert_eq!(call.name(), "shout");
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name stored in the database. Renaming it orphans stored jobs.
    const NAME: &'static str;
    /// What the job returns on success.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Limits and policies of this job.
    fn config() -> JobConfig {
        JobConfig::new()
    }

    /// The concurrency key of this call: at most [`JobConfig::key_limit`] jobs with the same
    /// key run at once, across every process sharing the database (the model or provider an
    /// LLM call goes to, say). `None` (the default): no per-key limit.
    fn concurrency_key(&self) -> Option<String> {
        None
    }

    /// The idempotency key of this call: spawning a call whose key an existing job holds
    /// returns that job instead of a new one (see [`JobCall::idempotency_key`]). `None` (the
    /// default): every spawn makes a new job.
    fn idempotency_key(&self) -> Option<String> {
        None
    }

    /// Whether this call always goes to the background, so that waiting for it with a timeout
    /// returns [`Outcome::Pending`](crate::Outcome::Pending) at once. The default is
    /// [`JobConfig::long_running`]; a job can decide per call (an LLM job, by model).
    fn is_long_running(&self) -> bool {
        Self::config().long_running
    }

    /// Runs one attempt of the job.
    fn run(
        ctx: JobContext,
        args: Self,
    ) -> impl Future<Output = Result<Self::Output, JobError>> + Send + 'static;
}

/// Limits and policies of one kind of job, as declared by `#[llm_job(...)]` or
/// [`Job::config`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobConfig {
    /// At most this many jobs of this name run at once, across every process that shares the
    /// database. `None`: only the global limit applies.
    pub max_concurrency: Option<u32>,
    /// Per-attempt timeout. `None`: the runtime's default.
    pub timeout: Option<Duration>,
    /// How many times a failed attempt is retried. `None`: the runtime's default.
    pub retries: Option<u32>,
    /// The job always runs in the background: waiting with a timeout returns at once.
    pub long_running: bool,
    /// At most this many jobs with the same [`Job::concurrency_key`] run at once, across every
    /// process sharing the database.
    pub key_limit: Option<u32>,
    /// The priority of this job's calls unless a call sets its own: higher runs first.
    pub priority: i32,
    /// A cron expression (with seconds: `"0 */5 * * * *"`) on which the job, which takes no
    /// arguments, is spawned, once per tick across every process sharing the database.
    pub cron: Option<&'static str>,
    /// The IANA time zone the [`cron`](JobConfig::cron) expression is read in
    /// (`"Europe/Paris"`). `None`: UTC.
    pub cron_timezone: Option<&'static str>,
    /// What each job of this kind may spend on LLM calls (`#[llm_job(budget_usd = 0.5)]`);
    /// a call can set its own with [`JobCall::budget`]. `None`: no limit.
    pub budget: Option<crate::Budget>,
}

impl JobConfig {
    /// No limits beyond the runtime's defaults.
    pub const fn new() -> Self {
        JobConfig {
            max_concurrency: None,
            timeout: None,
            retries: None,
            long_running: false,
            key_limit: None,
            priority: 0,
            cron: None,
            cron_timezone: None,
            budget: None,
        }
    }

    /// Sets [`JobConfig::budget`].
    pub const fn budget(mut self, budget: crate::Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Sets [`JobConfig::max_concurrency`].
    pub const fn max_concurrency(mut self, limit: u32) -> Self {
        self.max_concurrency = Some(limit);
        self
    }

    /// Sets [`JobConfig::timeout`].
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets [`JobConfig::retries`].
    pub const fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Sets [`JobConfig::long_running`].
    pub const fn long_running(mut self, long_running: bool) -> Self {
        self.long_running = long_running;
        self
    }

    /// Sets [`JobConfig::key_limit`].
    pub const fn key_limit(mut self, limit: u32) -> Self {
        self.key_limit = Some(limit);
        self
    }

    /// Sets [`JobConfig::priority`].
    pub const fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets [`JobConfig::cron`].
    pub const fn cron(mut self, cron: &'static str) -> Self {
        self.cron = Some(cron);
        self
    }

    /// Sets [`JobConfig::cron_timezone`].
    pub const fn cron_timezone(mut self, timezone: &'static str) -> Self {
        self.cron_timezone = Some(timezone);
        self
    }
}

/// A typed, serializable invocation of a job: its name and its arguments. Creating one runs
/// nothing; hand it to [`Jobs::spawn`](crate::Jobs::spawn) or [`Jobs::run`](crate::Jobs::run).
///
/// `T` is the job's output type. A `JobCall` serializes as `{"name": ..., "args": ...}`, so it can
/// be stored or sent elsewhere and spawned later.
pub struct JobCall<T> {
    name: Cow<'static, str>,
    args: Result<Box<RawValue>, String>,
    config: JobConfig,
    priority: i32,
    key: Option<String>,
    idempotency_key: Option<String>,
    run_at: Option<SystemTime>,
    long_running: bool,
    /// Set by [`JobCall::long_running`]: the caller decided, whatever classifiers say.
    long_running_forced: bool,
    /// Set by [`JobCall::wait_at_most`]: the longest [`Jobs::run_with_timeout`](crate::Jobs::run_with_timeout) waits.
    wait_limit: Option<Duration>,
    /// Set by [`JobCall::budget`]: this call's own LLM budget.
    budget: Option<crate::Budget>,
    _output: PhantomData<fn() -> T>,
}

impl<T> JobCall<T> {
    /// The invocation of job `J` with `args`.
    pub fn new<J: Job<Output = T>>(args: &J) -> Self {
        let config = J::config();
        JobCall {
            name: Cow::Borrowed(J::NAME),
            args: serde_json::value::to_raw_value(args).map_err(|e| e.to_string()),
            key: args.concurrency_key(),
            idempotency_key: args.idempotency_key(),
            run_at: None,
            long_running: args.is_long_running(),
            long_running_forced: false,
            wait_limit: None,
            budget: None,
            priority: config.priority,
            config,
            _output: PhantomData,
        }
    }

    /// An invocation built from a job name and JSON arguments, for callers that do not link the
    /// job's code (a CLI, another service). The job's own limits apply when a worker that knows
    /// it runs it.
    pub fn from_json(name: impl Into<String>, args: serde_json::Value) -> Self {
        JobCall {
            name: Cow::Owned(name.into()),
            args: serde_json::value::to_raw_value(&args).map_err(|e| e.to_string()),
            config: JobConfig::new(),
            priority: 0,
            key: None,
            idempotency_key: None,
            run_at: None,
            long_running: false,
            long_running_forced: false,
            wait_limit: None,
            budget: None,
            _output: PhantomData,
        }
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The serialized arguments, or the reason they could not be serialized.
    pub fn args_json(&self) -> Result<&str, &str> {
        match &self.args {
            Ok(raw) => Ok(raw.get()),
            Err(e) => Err(e),
        }
    }

    /// Higher priorities are claimed first (default: the job's `priority`, else 0); jobs of
    /// one priority run in the order they were spawned.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Runs the job no earlier than `time` (UTC; a time in the past means now). Until then it
    /// is `pending` with that `run_at` and holds no concurrency slot.
    pub fn run_at(mut self, time: SystemTime) -> Self {
        self.run_at = Some(time);
        self
    }

    /// Runs the job no earlier than `delay` from when it is spawned.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.run_at = Some(SystemTime::now() + delay);
        self
    }

    /// Deduplicates spawns: spawning a call whose key an existing job holds returns that job's
    /// handle ([`JobHandle::is_new`](crate::JobHandle::is_new) is `false`) instead of making a
    /// new job, race-free across processes. A key holds while its job is unfinished, and for
    /// [`JobsBuilder::idempotency_window`](crate::JobsBuilder::idempotency_window) after it
    /// ends. Reusing a key with different arguments is an error naming the key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Puts the call under a concurrency key: at most `limit` jobs with this key run at once,
    /// across every process sharing the database. Overrides the job's own key and limit.
    pub fn concurrency_key(mut self, key: impl Into<String>, limit: u32) -> Self {
        self.key = Some(key.into());
        self.config.key_limit = Some(limit);
        self
    }

    /// Sends the call to the background (or not), whatever the job's own classification.
    pub fn long_running(mut self, long_running: bool) -> Self {
        self.long_running = long_running;
        self.long_running_forced = true;
        self
    }

    /// Caps how long [`Jobs::run_with_timeout`](crate::Jobs::run_with_timeout) waits for this
    /// call before giving a handle (the shorter of the two wins); the job keeps running.
    pub fn wait_at_most(mut self, limit: Duration) -> Self {
        self.wait_limit = Some(limit);
        self
    }

    /// Limits what this job may spend on LLM calls, in place of its kind's budget
    /// ([`JobConfig::budget`], `#[llm_job(budget_usd = …)]`). Kept with the job, so it holds
    /// across retries and restarts; see [`Budget`](crate::Budget) for how calls are checked.
    pub fn budget(mut self, budget: crate::Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The budget set by [`JobCall::budget`], if any.
    pub fn budget_value(&self) -> Option<crate::Budget> {
        self.budget
    }

    /// The cap set by [`JobCall::wait_at_most`], if any.
    pub fn wait_limit(&self) -> Option<Duration> {
        self.wait_limit
    }

    /// The call's concurrency key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Whether the call goes straight to the background.
    pub fn is_long_running(&self) -> bool {
        self.long_running
    }

    /// Whether [`JobCall::long_running`] decided the routing.
    pub(crate) fn is_long_running_forced(&self) -> bool {
        self.long_running_forced
    }

    pub(crate) fn config(&self) -> &JobConfig {
        &self.config
    }

    pub(crate) fn priority_value(&self) -> i32 {
        self.priority
    }

    pub(crate) fn run_at_time(&self) -> Option<SystemTime> {
        self.run_at
    }

    pub(crate) fn idempotency_key_value(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}

impl<T> fmt::Debug for JobCall<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobCall")
            .field("name", &self.name)
            .field("args", &self.args_json())
            .field("priority", &self.priority)
            .field("key", &self.key)
            .field("long_running", &self.long_running)
            .finish()
    }
}

impl<T> Clone for JobCall<T> {
    fn clone(&self) -> Self {
        JobCall {
            name: self.name.clone(),
            args: self.args.clone(),
            config: self.config.clone(),
            priority: self.priority,
            key: self.key.clone(),
            idempotency_key: self.idempotency_key.clone(),
            run_at: self.run_at,
            long_running: self.long_running,
            long_running_forced: self.long_running_forced,
            wait_limit: self.wait_limit,
            budget: self.budget,
            _output: PhantomData,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct WireCall<'a> {
    name: Cow<'a, str>,
    #[serde(borrow)]
    args: Cow<'a, RawValue>,
    #[serde(default, skip_serializing_if = "is_zero")]
    priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    long_running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<Cow<'a, str>>,
    /// Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<crate::Budget>,
}

fn is_zero(p: &i32) -> bool {
    *p == 0
}

impl<T> Serialize for JobCall<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let args = self.args.as_ref().map_err(serde::ser::Error::custom)?;
        WireCall {
            name: Cow::Borrowed(&self.name),
            args: Cow::Borrowed(args),
            priority: self.priority,
            key: self.key.as_deref().map(Cow::Borrowed),
            key_limit: self.config.key_limit,
            long_running: self.long_running,
            idempotency_key: self.idempotency_key.as_deref().map(Cow::Borrowed),
            run_at_ms: self.run_at.map(crate::status::to_ms),
            wait_ms: self
                .wait_limit
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            budget: self.budget,
        }
        .serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for JobCall<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireCall::deserialize(deserializer)?;
        Ok(JobCall {
            name: Cow::Owned(wire.name.into_owned()),
            args: Ok(wire.args.into_owned()),
            config: JobConfig {
                key_limit: wire.key_limit,
                ..JobConfig::new()
            },
            priority: wire.priority,
            key: wire.key.map(Cow::into_owned),
            idempotency_key: wire.idempotency_key.map(Cow::into_owned),
            run_at: wire.run_at_ms.map(crate::status::from_ms),
            long_running: wire.long_running,
            long_running_forced: wire.long_running,
            wait_limit: wire.wait_ms.map(Duration::from_millis),
            budget: wire.budget,
            _output: PhantomData,
        })
    }
}

/// The outcome of running one attempt of a type-erased job: the serialized output, or the
/// error.
pub(crate) type ErasedOutcome = Result<String, JobError>;

/// A job in the registry: what the runtime needs to run it without knowing its types.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Registration {
    pub(crate) name: &'static str,
    pub(crate) type_name: fn() -> &'static str,
    pub(crate) config: fn() -> JobConfig,
    pub(crate) run: fn(JobContext, &str) -> Result<BoxFuture<ErasedOutcome>, String>,
    /// Checks JSON arguments against the job's and makes the typed call they stand for.
    pub(crate) call_from_json:
        fn(serde_json::Value) -> Result<JobCall<serde_json::Value>, ArgsError>,
}

impl Registration {
    /// The registration of job `J`.
    pub const fn of<J: Job>() -> Self {
        Registration {
            name: J::NAME,
            type_name: std::any::type_name::<J>,
            config: J::config,
            run: run_erased::<J>,
            call_from_json: call_from_json::<J>,
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("type_name", &(self.type_name)())
            .finish()
    }
}

inventory::collect!(Registration);

/// Why arguments do not deserialize into a job's: where, and what the deserializer said.
#[derive(Debug)]
pub(crate) struct ArgsError {
    /// The field path that failed (`words`, `items[2].text`); `None` for the arguments as a
    /// whole.
    pub(crate) path: Option<String>,
    pub(crate) message: String,
}

impl fmt::Display for ArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "field `{path}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Deserializes a job's arguments, naming the field path of a failure.
fn deserialize_args<'de, J: Job, D>(de: D) -> Result<J, ArgsError>
where
    D: serde::Deserializer<'de>,
    D::Error: fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ArgsError {
            path: (path != ".").then_some(path),
            message: e.inner().to_string(),
        }
    })
}

/// The typed call that JSON arguments stand for, as [`JobCall::new`] makes it: with the job's
/// own priority, keys and routing.
fn call_from_json<J: Job>(
    args: serde_json::Value,
) -> Result<JobCall<serde_json::Value>, ArgsError> {
    let args: J = deserialize_args(args)?;
    Ok(JobCall::new::<J>(&args).with_output())
}

impl<T> JobCall<T> {
    /// The same call, its output read as another type (JSON, for calls made from JSON).
    fn with_output<U>(self) -> JobCall<U> {
        JobCall {
            name: self.name,
            args: self.args,
            config: self.config,
            priority: self.priority,
            key: self.key,
            idempotency_key: self.idempotency_key,
            run_at: self.run_at,
            long_running: self.long_running,
            long_running_forced: self.long_running_forced,
            wait_limit: self.wait_limit,
            budget: self.budget,
            _output: PhantomData,
        }
    }
}

/// Deserializes the stored arguments and starts the body. A deserialization error names the
/// field path that failed (`words: invalid type: string "x", expected u32`).
fn run_erased<J: Job>(ctx: JobContext, args: &str) -> Result<BoxFuture<ErasedOutcome>, String> {
    let de = &mut serde_json::Deserializer::from_str(args);
    let args: J = deserialize_args(de)
        .map_err(|e| format!("arguments do not match job `{}`: {e}", J::NAME))?;
    Ok(Box::pin(async move {
        let output = J::run(ctx, args).await?;
        serde_json::to_string(&output).map_err(|e| {
            JobError::permanent(JobError::msg(format_args!(
                "cannot serialize the output of job `{}`: {e}",
                J::NAME
            )))
        })
    }))
}
