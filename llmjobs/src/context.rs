use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::runtime::Shared;
use crate::store::StepRecord;
use crate::{Error, JobError, JobId};

mod cancel;

pub(crate) use cancel::CancelSignal;

/// How often, at most, a job's latest progress report is written to the database.
const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_millis(250);

/// What a running job knows about itself, and the runtime's services for it: progress reports,
/// journaled steps and cancellation.
///
/// Cheap to clone; every clone refers to the same attempt.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<ContextInner>,
}

/// The one allocation of a running attempt besides its task and its body: what the body sees,
/// the cancel signal, and what the runtime's running map points to.
struct ContextInner {
    id: JobId,
    name: &'static str,
    attempt: u32,
    max_attempts: u32,
    next_step: AtomicU32,
    /// The job never ran before: its journal is empty.
    fresh: bool,
    shared: Arc<Shared>,
    cancel: CancelSignal,
    /// What a job that reports progress, journals steps or calls an LLM needs; allocated at
    /// its first use, so that a job waiting on something slow with none of these (a sleep, a
    /// plain HTTP call) costs a few bytes less for as long as it waits.
    services: std::sync::OnceLock<Box<Services>>,
}

struct Services {
    journal: tokio::sync::OnceCell<Vec<StepRecord>>,
    progress: Mutex<ProgressSlot>,
    /// Tokens and cost of the job's LLM calls so far.
    #[cfg(feature = "llm")]
    llm_usage: Mutex<crate::llm::UsageTotals>,
}

/// The latest report, whether it is written yet, and whether a writer task is on its way.
#[derive(Default)]
struct ProgressSlot {
    /// The latest report of this attempt. The job's final write always carries it: a write of
    /// the writer task may still be in flight when the job ends, and lands too late then.
    latest: Option<Arc<str>>,
    /// Whether `latest` still waits for the writer task.
    unsaved: bool,
    writer_active: bool,
}

/// A progress report: how far the job is, what it is doing, and what it has produced so far.
///
/// Build one with [`Progress::new`] or [`Progress::stage`] and the `with_*` methods, and report
/// it with [`JobContext::report`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Progress {
    /// How far along, from 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// The phase the job is in (`"drafting"`, `"validating"`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// What the job is doing now, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Output produced so far (the text streamed from a model, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_output: Option<String>,
    /// Tokens sent so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Tokens received so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// What the job's LLM calls have cost so far, in US dollars, where prices are known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl Progress {
    /// A report of `fraction` done (clamped to 0.0..=1.0) with a message.
    pub fn new(fraction: f64, message: impl Into<String>) -> Self {
        Progress {
            fraction: Some(fraction.clamp(0.0, 1.0)),
            message: Some(message.into()),
            ..Progress::default()
        }
    }

    /// A report that the job entered `stage`.
    pub fn stage(stage: impl Into<String>) -> Self {
        Progress {
            stage: Some(stage.into()),
            ..Progress::default()
        }
    }

    /// Sets the fraction done (clamped to 0.0..=1.0).
    pub fn with_fraction(mut self, fraction: f64) -> Self {
        self.fraction = Some(fraction.clamp(0.0, 1.0));
        self
    }

    /// Sets the message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Sets the output produced so far.
    pub fn with_partial_output(mut self, output: impl Into<String>) -> Self {
        self.partial_output = Some(output.into());
        self
    }

    /// Sets the token counts so far.
    pub fn with_tokens(mut self, input: u64, output: u64) -> Self {
        self.input_tokens = Some(input);
        self.output_tokens = Some(output);
        self
    }

    /// Sets the cost so far, in US dollars.
    pub fn with_cost(mut self, cost_usd: Option<f64>) -> Self {
        self.cost_usd = cost_usd;
        self
    }
}

/// A journal entry: the step's output, or the permanent error it ended with.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StepOutcome<T> {
    Ok(T),
    Err(String),
}

/// A running attempt as the runtime's running map holds it: weak, so that an entry left in the
/// map (its task dropped with the tokio runtime) keeps no runtime alive through the context.
pub(crate) struct AttemptRef(Weak<ContextInner>);

impl AttemptRef {
    /// Stops the attempt: its body is dropped and the job marked cancelled (or handed back).
    pub(crate) fn cancel(&self) {
        if let Some(inner) = self.0.upgrade() {
            inner.cancel.cancel();
        }
    }

    /// Stops the attempt as its worker lost its liveness lock: its row goes back to the queue.
    pub(crate) fn cancel_unproven(&self) {
        if let Some(inner) = self.0.upgrade() {
            inner.cancel.cancel_unproven();
        }
    }

    /// Whether this is `ctx`'s attempt.
    pub(crate) fn is(&self, ctx: &JobContext) -> bool {
        std::ptr::eq(self.0.as_ptr(), Arc::as_ptr(&ctx.inner))
    }
}

impl JobContext {
    /// The context of attempt `attempt` of job `id`, which may make `max_attempts` in all;
    /// `fresh` when it never ran before.
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: JobId,
        name: &'static str,
        attempt: u32,
        max_attempts: u32,
        fresh: bool,
    ) -> Self {
        JobContext {
            inner: Arc::new(ContextInner {
                id,
                name,
                attempt,
                max_attempts,
                next_step: AtomicU32::new(0),
                fresh,
                shared,
                cancel: CancelSignal::default(),
                services: std::sync::OnceLock::new(),
            }),
        }
    }

    /// What the runtime's running map keeps of this attempt.
    pub(crate) fn attempt_ref(&self) -> AttemptRef {
        AttemptRef(Arc::downgrade(&self.inner))
    }

    pub(crate) fn cancel_signal(&self) -> &CancelSignal {
        &self.inner.cancel
    }

    pub(crate) fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The name as registered, for the runtime (the public [`JobContext::name`] borrows).
    pub(crate) fn static_name(&self) -> &'static str {
        self.inner.name
    }

    fn services(&self) -> &Services {
        self.inner.services.get_or_init(|| {
            Box::new(Services {
                // Steps are journaled only while an attempt runs, so a job that never ran
                // before starts with an empty journal: no need to read it.
                journal: if self.inner.fresh {
                    tokio::sync::OnceCell::new_with(Some(Vec::new()))
                } else {
                    tokio::sync::OnceCell::new()
                },
                progress: Mutex::new(ProgressSlot::default()),
                #[cfg(feature = "llm")]
                llm_usage: Mutex::new(crate::llm::UsageTotals::default()),
            })
        })
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.inner.id
    }

    /// The job's registered name.
    pub fn name(&self) -> &str {
        self.inner.name
    }

    /// Which attempt this is, starting at 1. An attempt cut short by a crash counts too.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Completes when the job is cancelled. The body's future is dropped right after, so use
    /// this in a `select!` only to clean up (kill a child process, say) before that happens.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await;
    }

    /// Whether the job has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Reports progress: `fraction` done (0.0 to 1.0) and what the job is doing.
    ///
    /// Never waits for the database: the latest report is written a few times a second at most,
    /// and the last one always, together with the job's outcome.
    pub async fn progress(&self, fraction: f64, message: impl Into<String>) {
        self.report(Progress::new(fraction, message));
    }

    /// Reports a full [`Progress`] value.
    ///
    /// In-process subscribers ([`JobHandle::progress`](crate::JobHandle::progress), the
    /// builder's [`on_progress`](crate::JobsBuilder::on_progress)) see every report at once;
    /// the database keeps the latest, written a few times a second at most.
    pub fn report(&self, progress: Progress) {
        self.inner
            .shared
            .publish_progress(self.inner.id, self.inner.name, &progress);
        let json = match serde_json::to_string(&progress) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(error = %e, "progress report does not serialize; dropped");
                return;
            }
        };
        let start_writer = {
            let mut slot = self.services().progress.lock().expect("progress lock");
            slot.latest = Some(json.into());
            slot.unsaved = true;
            !std::mem::replace(&mut slot.writer_active, true)
        };
        if start_writer {
            let ctx = self.clone();
            tokio::spawn(async move { ctx.write_progress().await });
        }
    }

    /// Writes the latest report, then at most one more per interval while reports keep coming.
    async fn write_progress(self) {
        loop {
            let unsaved = {
                let mut slot = self.services().progress.lock().expect("progress lock");
                match slot.latest.clone().filter(|_| slot.unsaved) {
                    Some(latest) => {
                        slot.unsaved = false;
                        latest.to_string()
                    }
                    _ => {
                        slot.writer_active = false;
                        return;
                    }
                }
            };
            let shared = &self.inner.shared;
            let written = shared
                .store
                .save_progress(
                    self.inner.id,
                    shared.owner.clone(),
                    self.inner.attempt,
                    unsaved,
                )
                .await;
            if let Err(e) = written {
                tracing::debug!(error = %e, "progress write failed");
            }
            tokio::time::sleep(PROGRESS_WRITE_INTERVAL).await;
        }
    }

    /// The attempt's latest report, for the job's final write, which must carry it.
    pub(crate) fn final_progress(&self) -> Option<String> {
        let services = self.inner.services.get()?;
        let slot = services.progress.lock().expect("progress lock");
        slot.latest.as_deref().map(str::to_string)
    }

    /// Runs `step` once for this job, durably.
    ///
    /// Its output is stored in the job's journal before this returns. When the job runs again
    /// (after a crash, or as a retry), the stored output is returned instead, without running
    /// `step` again: paid LLM calls are not paid for twice. Steps are identified by the order
    /// in which the body calls them; `name` guards that order: if a resumed body calls a step
    /// with a different name at a position than the journal recorded, the call fails with a
    /// permanent "journal mismatch" error rather than returning the wrong value.
    ///
    /// A step that fails with a retryable error is not journaled, so the next attempt runs it
    /// again; one that fails with a permanent error is journaled as that error.
    pub async fn step<T, E, F>(&self, name: &str, step: F) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        E: Into<JobError>,
        F: Future<Output = Result<T, E>>,
    {
        let seq = self.inner.next_step.fetch_add(1, Ordering::Relaxed);
        let shared = &self.inner.shared;
        let journal = self
            .services()
            .journal
            .get_or_try_init(|| shared.store.load_steps(self.inner.id))
            .await
            .map_err(|e| JobError::msg(format_args!("cannot read the step journal: {e}")))?;
        if let Some(record) = journal.iter().find(|r| r.seq == seq) {
            if record.name != name {
                return Err(JobError::permanent(JobError::msg(format_args!(
                    "journal mismatch at step #{seq}: the journal recorded step `{}`, but the job now calls `{name}`; \
                     the job's code changed while it was in flight",
                    record.name
                ))));
            }
            let stored: StepOutcome<T> = serde_json::from_str(&record.output).map_err(|e| {
                JobError::permanent(JobError::msg(format_args!(
                    "journal entry of step `{name}` (#{seq}) does not deserialize as `{}`: {e}",
                    std::any::type_name::<T>()
                )))
            })?;
            tracing::debug!(step = name, seq, "step replayed from the journal");
            return match stored {
                StepOutcome::Ok(value) => Ok(value),
                StepOutcome::Err(message) => Err(JobError::permanent(JobError::msg(message))),
            };
        }

        let (outcome, result) = match step.await.map_err(Into::into) {
            Ok(value) => {
                let json = serde_json::to_string(&StepOutcome::Ok(&value)).map_err(|e| {
                    JobError::permanent(JobError::msg(format_args!(
                        "the output of step `{name}` does not serialize: {e}"
                    )))
                })?;
                (json, Ok(value))
            }
            Err(e) if e.is_permanent() => {
                let json = serde_json::to_string(&StepOutcome::<()>::Err(e.to_string()))
                    .expect("a string serializes");
                (json, Err(e))
            }
            Err(e) => {
                // Not journaled, so the position is free again: a step retried in the same
                // attempt (an LLM call after a 500, say) takes it. Steps running side by side
                // may have moved on, in which case the position stays unused.
                let _ = self.inner.next_step.compare_exchange(
                    seq + 1,
                    seq,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                return Err(e);
            }
        };
        let record = StepRecord {
            seq,
            name: name.to_string(),
            output: outcome,
        };
        if !self.journal_step(record).await? {
            return Err(JobError::permanent(JobError::msg(
                "the job is no longer run by this worker (cancelled, or taken over after a lost lease)",
            )));
        }
        result
    }
}

impl JobContext {
    /// Appends a step's output to the journal. The step ran (an LLM call was paid for): a
    /// database error is waited out, with a capped back-off, rather than throwing the output
    /// away. Gives up only when the job is cancelled or the runtime stops. `false` when the job
    /// is no longer this attempt's.
    async fn journal_step(&self, record: StepRecord) -> Result<bool, JobError> {
        let shared = &self.inner.shared;
        let mut delay = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            let appended = shared
                .store
                .append_step(
                    self.inner.id,
                    shared.owner.clone(),
                    self.inner.attempt,
                    record.clone(),
                )
                .await;
            let e = match appended {
                Ok(owned) => {
                    if failures > 0 {
                        tracing::info!(step = %record.name, failures, "step journaled");
                    }
                    return Ok(owned);
                }
                Err(e) => e,
            };
            failures += 1;
            if matches!(e, Error::Shutdown) || shared.store.failure().is_some() {
                return Err(JobError::msg(format_args!(
                    "cannot journal step `{}`: {e}",
                    record.name
                )));
            }
            tracing::warn!(
                step = %record.name, error = %e, failures, retry_in = ?delay,
                "journaling a step failed; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                () = self.inner.cancel.cancelled() => {
                    return Err(JobError::msg(format_args!(
                        "cannot journal step `{}`: {e}",
                        record.name
                    )));
                }
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(feature = "llm")]
impl JobContext {
    /// The LLM client of the runtime ([`JobsBuilder::llm`](crate::JobsBuilder::llm)), with
    /// every call journaled: a resumed job gets answers that were already paid for from the
    /// journal, and streamed deltas are reported as the job's progress.
    pub fn llm(&self) -> crate::llm::JobLlm {
        crate::llm::JobLlm::new(self.clone(), self.inner.shared.settings.llm.clone())
    }

    /// Whether someone asked for this job to be cancelled (rather than its worker stopping or
    /// losing it), as the database tells: for clean-up that runs after the body is dropped,
    /// such as cancelling a provider batch.
    pub(crate) async fn cancel_was_requested(&self) -> bool {
        match self.inner.shared.store.get(self.inner.id).await {
            Ok(Some(row)) => {
                row.cancel_requested != 0 || row.status == crate::JobState::Cancelled.as_str()
            }
            _ => false,
        }
    }

    /// The job database, for the LLM bridge's ledger, cache and budgets.
    pub(crate) fn store(&self) -> &dyn crate::store::Store {
        &*self.inner.shared.store
    }

    /// The runtime's LLM cache and budget settings.
    pub(crate) fn llm_policy(&self) -> &crate::llm::LlmPolicy {
        &self.inner.shared.settings.llm_policy
    }

    /// The budget of this job's LLM calls: its call's own, else its kind's.
    pub(crate) async fn llm_budget(&self) -> Result<Option<crate::Budget>, Error> {
        if let Some(stored) = self.inner.shared.store.job_budget(self.inner.id).await? {
            let budget = serde_json::from_str(&stored).map_err(|e| Error::CorruptRow {
                id: self.inner.id.to_string(),
                reason: format!("its LLM budget is not a budget: {e}"),
            })?;
            return Ok(Some(budget));
        }
        Ok(self
            .inner
            .shared
            .registry
            .get(self.inner.name)
            .and_then(|entry| entry.config.budget))
    }

    /// The tokens and cost of the job's LLM calls so far.
    pub(crate) fn llm_totals(&self) -> crate::llm::UsageTotals {
        *self.services().llm_usage.lock().expect("usage lock")
    }

    /// Adds an LLM answer's usage to the job's totals; the new totals.
    pub(crate) fn add_llm_usage(
        &self,
        response: &crate::llm::ChatResponse,
    ) -> crate::llm::UsageTotals {
        let mut totals = self.services().llm_usage.lock().expect("usage lock");
        totals.add(response);
        *totals
    }
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("attempt", &self.inner.attempt)
            .finish()
    }
}
