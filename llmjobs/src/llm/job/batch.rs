//! The built-in durable provider batch job: [`llm_batch`].
//!
//! Journaled steps, per round `N` (round 1 submits every request; later rounds resubmit the
//! expired or failed ones, when asked to):
//!
//! - `batch N upload`: OpenAI's input file id (Anthropic: nothing to upload);
//! - `batch N create`: the provider's batch, journaled the moment the provider returns it;
//! - `batch N results`: every request's outcome, once the batch is over.
//!
//! Polling between `create` and `results` is not journaled: a resumed job asks the provider
//! where the journaled batch is and polls on, and never submits it again.
//!
//! **Budgets and the ledger.** A batch is one submission that cannot be taken back, so it is
//! checked before it is created: the most all its requests could cost at the batch price is
//! reserved against the job's budget and its provider's key budgets (`budget.rs`), and a batch
//! that does not fit is not submitted. The reservation is held while the batch runs and
//! replaced by one usage-ledger row per request when its results come in (written with the
//! `results` step: a crash between the two writes the rows again, which errs on the side of
//! the budget). A batch resumed after a crash holds no reservation while it polls.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::budget::{self, Estimate, Hold};
use super::ledger;
use crate::llm::{
    BatchInfo, BatchItemError, BatchItemErrorKind, BatchItemResult, BatchRequest, ChatResponse,
    LlmClient, LlmError, Usage,
};
use crate::{Job, JobCall, JobContext, JobError, Progress};

/// How long a cancelled job tries to cancel its provider batch.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(30);

/// How an [`llm_batch_with`] job polls and resubmits. Fields left out of its JSON form take
/// their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BatchOptions {
    /// The first wait between two polls of the provider (default 10 s).
    pub poll_interval: Duration,
    /// The longest wait between two polls (default 5 minutes): the wait doubles after every
    /// poll that shows no request settled, up to this.
    pub max_poll_interval: Duration,
    /// How many times requests that expired, were cancelled by the provider or went missing
    /// are resubmitted as a new batch (default 0: they end as errors).
    pub resubmit_rounds: u32,
    /// Whether requests that failed with a retryable error (a rate limit, a server error) are
    /// resubmitted too, within [`BatchOptions::resubmit_rounds`] (default `false`). Requests
    /// the provider refused (a bad request) are never resubmitted.
    pub resubmit_failed: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            poll_interval: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            resubmit_rounds: 0,
            resubmit_failed: false,
        }
    }
}

impl BatchOptions {
    /// The default options.
    pub fn new() -> Self {
        BatchOptions::default()
    }

    /// Sets the first wait between two polls, and the longest (back-off doubles the wait after
    /// each poll that shows no progress).
    pub fn poll_interval(mut self, first: Duration, max: Duration) -> Self {
        self.poll_interval = first;
        self.max_poll_interval = max.max(first);
        self
    }

    /// Resubmits expired (and provider-cancelled, or missing) requests as a new batch, up to
    /// `rounds` times.
    pub fn resubmit_expired(mut self, rounds: u32) -> Self {
        self.resubmit_rounds = rounds;
        self
    }

    /// Resubmits requests that failed with a retryable error too.
    pub fn resubmit_failed(mut self, on: bool) -> Self {
        self.resubmit_failed = on;
        self
    }
}

/// What an [`llm_batch`] job returns: every request's answer or error, by custom id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchOutput {
    /// Every request of the batch, by [`BatchRequest::custom_id`]: its answer (priced at the
    /// batch price), or why it has none (from the last round that sent it).
    pub results: BTreeMap<String, Result<ChatResponse, BatchItemError>>,
    /// The provider's ids of the batches submitted, one per round.
    pub batch_ids: Vec<String>,
    /// How many requests have an answer.
    pub succeeded: u64,
    /// How many have none.
    pub failed: u64,
    /// The tokens of every answer.
    pub usage: Usage,
    /// The cost of every answer at the batch price, in US dollars; `None` when a model's price
    /// is not configured.
    pub cost_usd: Option<f64>,
}

impl BatchOutput {
    /// The answer to the request named `custom_id`, if it has one.
    pub fn answer(&self, custom_id: &str) -> Option<&ChatResponse> {
        self.results.get(custom_id).and_then(|r| r.as_ref().ok())
    }

    /// Why the request named `custom_id` has no answer, if it has none.
    pub fn error(&self, custom_id: &str) -> Option<&BatchItemError> {
        self.results.get(custom_id).and_then(|r| r.as_ref().err())
    }
}

/// The built-in durable provider batch; spawn it with [`llm_batch`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmBatch {
    requests: Vec<BatchRequest>,
    #[serde(default)]
    options: BatchOptions,
}

impl Job for LlmBatch {
    const NAME: &'static str = "llmjobs.llm_batch";
    type Output = BatchOutput;

    /// A batch takes minutes to hours: always in the background.
    fn is_long_running(&self) -> bool {
        true
    }

    async fn run(ctx: JobContext, args: Self) -> Result<BatchOutput, JobError> {
        let client = ctx.llm().client()?.clone();
        Runner {
            ctx,
            client,
            options: args.options,
        }
        .run(args.requests)
        .await
    }
}

inventory::submit! { crate::job::Registration::of::<LlmBatch>() }

/// A durable provider batch (OpenAI's Batch API, Anthropic's Message Batches) at half the
/// price of single calls ([`crate::llm::Price::batch`]), with the default [`BatchOptions`].
///
/// Every request must route to the same provider (and, for OpenAI, ask the same model); the
/// job fails at once, naming the request, when one does not. The job runs in the background
/// ([`Jobs::run_with_timeout`](crate::Jobs::run_with_timeout) gives its handle at once), polls
/// the provider with back-off and reports `done`, `failed` and `total` counts as progress.
///
/// **Submitted once.** The provider's batch id is journaled the moment the provider returns
/// it, so a job resumed after a crash or a restart polls the same batch. A crash in the short
/// window after the provider accepted the batch but before the journal write is covered for
/// OpenAI: the input file is named after the job and round (`llmjobs-<job id>-<round>.jsonl`)
/// and its id is journaled before the batch is created, so the resumed job finds the batch
/// made from that file (listing the provider's batches) and adopts it instead of creating a
/// second one. Anthropic's batches carry nothing to find them by, so a crash inside that window
/// (the length of one HTTP response plus one commit) submits the batch again.
///
/// **Cancel.** Cancelling the job asks the provider to cancel the batch, best effort: from the
/// process running the job, one try of up to 30 s; answers the provider already produced are
/// still billed. A job cancelled while no process runs it leaves its batch to finish.
///
/// The job's attempts have no deadline of their own: give the runtime no default timeout
/// shorter than a batch takes (up to 24 hours).
pub fn llm_batch(requests: Vec<BatchRequest>) -> JobCall<BatchOutput> {
    llm_batch_with(requests, BatchOptions::default())
}

/// [`llm_batch`] with options: poll interval and back-off, resubmission of expired and failed
/// requests.
pub fn llm_batch_with(requests: Vec<BatchRequest>, options: BatchOptions) -> JobCall<BatchOutput> {
    JobCall::new::<LlmBatch>(&LlmBatch { requests, options })
}

struct Runner {
    ctx: JobContext,
    client: LlmClient,
    options: BatchOptions,
}

/// The counts of requests settled in earlier rounds, for progress.
#[derive(Clone, Copy, Default)]
struct Settled {
    done: u64,
    failed: u64,
    total: u64,
}

impl Runner {
    async fn run(&self, requests: Vec<BatchRequest>) -> Result<BatchOutput, JobError> {
        let provider = self
            .client
            .batch_provider(&requests)
            .map_err(LlmError::into_job_error)?;
        let mut settled = Settled {
            total: requests.len() as u64,
            ..Settled::default()
        };
        let mut results = BTreeMap::new();
        let mut batch_ids = Vec::new();
        let mut pending = requests;
        let mut round = 1;
        loop {
            let (batch, hold) = self.submit(round, &provider, &pending).await?;
            batch_ids.push(batch.batch.id.clone());
            let finished = match &hold {
                Some(hold) => hold.keep(self.poll(batch, settled)).await?,
                None => self.poll(batch, settled).await?,
            };
            let outcomes: Vec<BatchItemResult> = self
                .ctx
                .step(&format!("batch {round} results"), async {
                    let outcomes = self
                        .client
                        .batch_results(&finished, &pending)
                        .await
                        .map_err(LlmError::into_job_error)?;
                    let rows = ledger::batch_entries(&self.ctx, &provider, &pending, &outcomes);
                    match hold {
                        Some(hold) => hold.settle(rows).await,
                        None => ledger::write(&self.ctx, rows).await,
                    }
                    Ok::<_, JobError>(outcomes)
                })
                .await?;
            let may_resubmit = round <= self.options.resubmit_rounds;
            let mut again = Vec::new();
            for (request, result) in pending.into_iter().zip(outcomes) {
                match &result.outcome {
                    Ok(_) => settled.done += 1,
                    Err(e) if may_resubmit && self.resubmits(e) => again.push(request),
                    Err(_) => settled.failed += 1,
                }
                results.insert(result.custom_id, result.outcome);
            }
            if again.is_empty() {
                break;
            }
            tracing::info!(
                round,
                requests = again.len(),
                "resubmitting requests as a new batch"
            );
            pending = again;
            round += 1;
        }
        Ok(self.finish(results, batch_ids))
    }

    fn resubmits(&self, error: &BatchItemError) -> bool {
        match error.kind {
            BatchItemErrorKind::Failed => self.options.resubmit_failed && error.is_retryable(),
            _ => true,
        }
    }

    /// Round `round`'s batch: created now (with its budget reservation, if a budget applies),
    /// found after a crash, or replayed from the journal.
    async fn submit(
        &self,
        round: u32,
        provider: &str,
        requests: &[BatchRequest],
    ) -> Result<(Submitted, Option<Hold>), JobError> {
        let marker = format!("llmjobs-{}-{round}", self.ctx.id());
        let file: Option<String> = self
            .ctx
            .step(&format!("batch {round} upload"), async {
                self.client
                    .batch_upload(requests, &marker)
                    .await
                    .map_err(LlmError::into_job_error)
            })
            .await?;
        let mut how = How::Resumed;
        let mut hold = None;
        // A refusal is not journaled (as a permanent error would be): the job still fails
        // permanently, but a retry of it checks the budget again.
        let mut refused = None;
        let batch: BatchInfo = self
            .ctx
            .step(&format!("batch {round} create"), async {
                if let Some(file) = &file
                    && let Some(found) = self
                        .client
                        .batch_find(provider, file)
                        .await
                        .map_err(LlmError::into_job_error)?
                {
                    how = How::Found;
                    return Ok::<_, JobError>(found);
                }
                how = How::Created;
                hold = self.reserve(provider, requests).await.map_err(|e| {
                    let error = JobError::msg(e.to_string()).with_kind(crate::ErrorKind::Retryable);
                    refused = Some(e);
                    error
                })?;
                self.client
                    .batch_create(requests, file.as_deref(), &marker)
                    .await
                    .map_err(LlmError::into_job_error)
            })
            .await
            .map_err(|e| refused.take().map_or(e, LlmError::into_job_error))?;
        tracing::info!(batch = %batch.id, provider, round, "{} batch", how.verb());
        Ok((Submitted { batch, how, round }, hold))
    }

    /// Reserves the most `requests` could cost at the batch price against the budgets of the
    /// job and of `provider`.
    async fn reserve(
        &self,
        provider: &str,
        requests: &[BatchRequest],
    ) -> Result<Option<Hold>, LlmError> {
        let model = requests.first().map_or("", |r| r.request.model.as_str());
        let ceiling = || {
            requests.iter().fold(Estimate::ZERO, |sum, r| {
                let price = self.client.price_of(&r.request.model).map(|p| p.batch());
                sum.plus(Estimate::of(&r.request, price))
            })
        };
        budget::reserve(&self.ctx, model, Some(provider), ceiling).await
    }

    /// Polls the batch until it is over, with back-off; a cancel of the job meanwhile cancels
    /// the provider batch.
    async fn poll(&self, submitted: Submitted, settled: Settled) -> Result<BatchInfo, JobError> {
        let Submitted { batch, how, round } = submitted;
        let _watch = CancelWatch::start(&self.ctx, &self.client, &batch);
        let verb = how.verb();
        let mut interval = self.options.poll_interval;
        let mut last = batch;
        loop {
            match self.client.batch_status(&last.provider, &last.id).await {
                Ok(info) => {
                    if info.succeeded + info.failed == last.succeeded + last.failed {
                        interval = (interval * 2).min(self.options.max_poll_interval);
                    }
                    last = info;
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(batch = %last.id, error = %e, "polling the batch failed; polling on");
                    interval = (interval * 2).min(self.options.max_poll_interval);
                }
                Err(e) => return Err(e.into_job_error()),
            }
            self.report(verb, round, &last, settled);
            if last.state.is_terminal() {
                return Ok(last);
            }
            tokio::time::sleep(interval).await;
        }
    }

    fn report(&self, verb: &str, round: u32, batch: &BatchInfo, settled: Settled) {
        let done = settled.done + batch.succeeded;
        let failed = settled.failed + batch.failed;
        let fraction = if settled.total == 0 {
            1.0
        } else {
            (done + failed) as f64 / settled.total as f64
        };
        let round = if round > 1 {
            format!(" (round {round})")
        } else {
            String::new()
        };
        self.ctx.report(
            Progress::stage("batch")
                .with_fraction(fraction)
                .with_message(format!(
                    "{verb} batch {}{round}, {}: {done} done, {failed} failed, of {}",
                    batch.id, batch.state, settled.total
                )),
        );
    }

    fn finish(
        &self,
        results: BTreeMap<String, Result<ChatResponse, BatchItemError>>,
        batch_ids: Vec<String>,
    ) -> BatchOutput {
        let mut output = BatchOutput {
            results: BTreeMap::new(),
            batch_ids,
            succeeded: 0,
            failed: 0,
            usage: Usage::default(),
            cost_usd: Some(0.0),
        };
        let mut totals = None;
        for result in results.values() {
            match result {
                Ok(answer) => {
                    output.succeeded += 1;
                    output.usage.input_tokens += answer.usage.input_tokens;
                    output.usage.output_tokens += answer.usage.output_tokens;
                    output.usage.estimated |= answer.usage.estimated;
                    output.cost_usd = output.cost_usd.zip(answer.cost).map(|(a, b)| a + b);
                    totals = Some(self.ctx.add_llm_usage(answer));
                }
                Err(_) => output.failed += 1,
            }
        }
        output.results = results;
        let mut report = Progress::stage("batch")
            .with_fraction(1.0)
            .with_message(format!(
                "batch over: {} done, {} failed, of {}",
                output.succeeded,
                output.failed,
                output.results.len()
            ));
        if let Some(totals) = totals {
            report = report
                .with_tokens(totals.input_tokens, totals.output_tokens)
                .with_cost(totals.cost_usd);
        }
        self.ctx.report(report);
        output
    }
}

/// How a round's batch came to be.
#[derive(Clone, Copy)]
enum How {
    /// Created by this attempt.
    Created,
    /// Found at the provider: an earlier attempt created it but crashed before journaling it.
    Found,
    /// Replayed from the journal.
    Resumed,
}

impl How {
    fn verb(self) -> &'static str {
        match self {
            How::Created => "submitted",
            How::Found => "found the already submitted",
            How::Resumed => "resumed",
        }
    }
}

struct Submitted {
    batch: BatchInfo,
    how: How,
    round: u32,
}

/// While the batch is polled: when the job is cancelled, asks the provider to cancel the
/// batch. The task outlives the job's body, which the runtime drops at the cancel; it is
/// stopped when polling ends any other way.
struct CancelWatch {
    ctx: JobContext,
    task: tokio::task::JoinHandle<()>,
}

impl CancelWatch {
    fn start(ctx: &JobContext, client: &LlmClient, batch: &BatchInfo) -> CancelWatch {
        let (watched, client) = (ctx.clone(), client.clone());
        let (provider, id) = (batch.provider.clone(), batch.id.clone());
        let task = tokio::spawn(async move {
            watched.cancelled().await;
            // The body stops for a shutdown or a lost lease too: then the batch is resumed by
            // the next process, not cancelled.
            if !watched.cancel_was_requested().await {
                return;
            }
            match tokio::time::timeout(CANCEL_TIMEOUT, client.batch_cancel(&provider, &id)).await {
                Ok(Ok(info)) => {
                    tracing::info!(batch = %id, state = %info.state, "job cancelled: provider batch cancelled")
                }
                Ok(Err(error)) => {
                    tracing::warn!(batch = %id, %error, "job cancelled, but the provider batch could not be cancelled")
                }
                Err(_) => {
                    tracing::warn!(batch = %id, "job cancelled, but cancelling the provider batch timed out")
                }
            }
        });
        CancelWatch {
            ctx: ctx.clone(),
            task,
        }
    }
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        if !self.ctx.is_cancelled() {
            self.task.abort();
        }
    }
}
