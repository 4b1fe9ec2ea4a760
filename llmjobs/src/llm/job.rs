//! LLM calls inside jobs: `ctx.llm()` with journaled answers, and the built-in durable
//! [`llm_call`] job; the built-in [`llm_batch`] job is in `job/batch.rs`.

mod batch;
mod budget;
mod cache;
mod errors;
mod ledger;

mod shared_limits;

pub(crate) use shared_limits::share_through;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    Attempt, AttemptPurpose, AttemptRunner, BoxFuture, ChatRequest, ChatResponse,
    DEFAULT_LONG_RUNNING_PATTERNS, LlmClient, LlmError, Stage, StreamEvent,
};
use crate::{Job, JobCall, JobContext, JobError, Progress};

pub use batch::{BatchOptions, BatchOutput, LlmBatch, llm_batch, llm_batch_with};
pub(crate) use budget::LlmPolicy;
pub use budget::{DEFAULT_OUTPUT_ESTIMATE, KeyBudget};
pub use cache::CompletionCache;

/// How often, at most, streamed output is reported as progress.
const STREAM_REPORT_INTERVAL: Duration = Duration::from_millis(50);

/// The LLM client as a job sees it (from [`JobContext::llm`]): every answer and every agent
/// check is a journaled step, so a job resumed after a crash gets the answers it already paid
/// for from the journal instead of calling the model again.
#[derive(Clone)]
pub struct JobLlm {
    ctx: JobContext,
    client: Result<LlmClient, String>,
}

impl std::fmt::Debug for JobLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLlm")
            .field("job", &self.ctx.id())
            .field("configured", &self.client.is_ok())
            .finish()
    }
}

impl JobLlm {
    pub(crate) fn new(ctx: JobContext, client: Result<LlmClient, String>) -> Self {
        JobLlm { ctx, client }
    }

    /// The underlying client, for calls that should not be journaled.
    pub fn client(&self) -> Result<&LlmClient, JobError> {
        self.client
            .as_ref()
            .map_err(|reason| JobError::permanent(JobError::msg(reason)))
    }

    /// Calls the model with HTTP retries, validators and staged escalation
    /// ([`LlmClient::call_with`]), journaling each answer and check. The stage of each answer
    /// is the job's progress stage (`answer`, `tool-assisted`), and is in the name of its
    /// journaled step; an answer that never passes is journaled and reported as
    /// `human-review`, and the job fails as needing review.
    pub async fn call(&self, request: &ChatRequest) -> Result<ChatResponse, JobError> {
        let client = self.client()?;
        let stage = Mutex::new(Stage::Answer);
        let runner = JournalRunner {
            ctx: &self.ctx,
            client,
            stage: &stage,
        };
        let result = client.call_with(request, &runner, None).await;
        let response = self.settle(result).await?;
        self.record_fallbacks(&response).await?;
        self.report_totals(&response, None);
        Ok(response)
    }

    /// Journals which fallback model answered, as a step named after it
    /// (`llm fallback openai/gpt-4o-mini`) holding why the models before it did not. The answer
    /// itself is the `llm answer-N` step, whichever model gave it, so a resumed job replays it.
    async fn record_fallbacks(&self, response: &ChatResponse) -> Result<(), JobError> {
        let Some(answered_by) = response_model(response) else {
            return Ok(());
        };
        let trail = response.fallback_trail.clone();
        self.ctx
            .step(&format!("llm fallback {answered_by}"), async {
                Ok::<_, JobError>(trail)
            })
            .await?;
        Ok(())
    }

    /// Adds the answer's usage and cost to the job's totals, and reports them as progress, so
    /// the job's status shows what its LLM calls used.
    fn report_totals(&self, response: &ChatResponse, output: Option<String>) {
        let totals = self.ctx.add_llm_usage(response);
        let mut message = format!(
            "{} LLM call(s), {} tokens; answer {} passed",
            totals.calls,
            totals.input_tokens + totals.output_tokens,
            response.attempts
        );
        if let Some(model) = response_model(response) {
            let skipped: Vec<String> = response
                .fallback_trail
                .iter()
                .map(|skip| format!("{}: {}", skip.model, skip.reason))
                .collect();
            message.push_str(&format!(
                "; answered by fallback {model} ({})",
                skipped.join("; ")
            ));
        }
        let mut report = Progress::stage(response.stage.name())
            .with_tokens(totals.input_tokens, totals.output_tokens)
            .with_cost(totals.cost_usd)
            .with_message(message);
        if let Some(output) = output {
            report = report.with_partial_output(output);
        }
        self.ctx.report(report);
    }

    /// The job's side of a finished call: an answer that needs review is counted, journaled
    /// as the `human-review` stage and reported before the job fails with it.
    async fn settle(
        &self,
        result: Result<ChatResponse, LlmError>,
    ) -> Result<ChatResponse, JobError> {
        let error = match result {
            Ok(response) => return Ok(response),
            Err(error) => error,
        };
        if let LlmError::NeedsReview {
            answer,
            feedback,
            attempts,
            ..
        } = &error
        {
            let totals = self.ctx.add_llm_usage(answer);
            let verdict = feedback.clone();
            self.ctx
                .step("llm human-review", async { Ok::<_, JobError>(verdict) })
                .await?;
            self.ctx.report(
                Progress::stage(Stage::HumanReview.name())
                    .with_tokens(totals.input_tokens, totals.output_tokens)
                    .with_cost(totals.cost_usd)
                    .with_partial_output(answer.text.clone())
                    .with_message(format!(
                        "no answer passed validation after {attempts} attempt(s): {}",
                        feedback.join("; ")
                    )),
            );
        }
        if let LlmError::BudgetExceeded { .. } = &error {
            // The status shows what was spent when the budget stopped the job.
            let totals = self.ctx.llm_totals();
            self.ctx.report(
                Progress::stage("budget")
                    .with_tokens(totals.input_tokens, totals.output_tokens)
                    .with_cost(totals.cost_usd)
                    .with_message(error.to_string()),
            );
        }
        Err(error.into_job_error())
    }

    /// Like [`JobLlm::call`], streaming: the text received so far and the token counts are
    /// reported as the job's progress (stage: the answer's stage), a few times a second.
    pub async fn call_streaming(&self, request: &ChatRequest) -> Result<ChatResponse, JobError> {
        let client = self.client()?;
        let stage = Mutex::new(Stage::Answer);
        let runner = JournalRunner {
            ctx: &self.ctx,
            client,
            stage: &stage,
        };
        let mut text = String::new();
        let mut attempt = 0;
        let mut last_report: Option<Instant> = None;
        let ctx = &self.ctx;
        let stage_now = &stage;
        let mut on_event = |event: &StreamEvent| {
            if event.attempt != attempt {
                // A retry started over: what came before is void.
                attempt = event.attempt;
                text.clear();
            }
            text.push_str(&event.delta_text);
            if last_report.is_none_or(|t| t.elapsed() >= STREAM_REPORT_INTERVAL) {
                last_report = Some(Instant::now());
                let stage = *stage_now.lock().expect("stage lock");
                ctx.report(
                    Progress::stage(stage.name())
                        .with_partial_output(text.clone())
                        .with_tokens(event.input_tokens.unwrap_or(0), event.output_tokens_so_far),
                );
            }
        };
        let result = client
            .call_with(request, &runner, Some(&mut on_event))
            .await;
        let response = self.settle(result).await?;
        self.record_fallbacks(&response).await?;
        self.report_totals(&response, Some(response.text.clone()));
        Ok(response)
    }
}

/// The fallback model that answered (with its routing prefix), if one did.
fn response_model(response: &ChatResponse) -> Option<&str> {
    response.fallback_model.as_deref()
}

/// Runs each provider attempt as a journaled step named after what it is for and its stage
/// (`llm answer-1`, `llm answer-2 tool-assisted`, `llm check-1.0`), and reports the stage as
/// the job's progress. Failed tries are not journaled, so the try that succeeds takes the
/// step's place, and a resumed job replays it.
struct JournalRunner<'c> {
    ctx: &'c JobContext,
    client: &'c LlmClient,
    /// The stage of the attempt under way, for the stream's progress reports.
    stage: &'c Mutex<Stage>,
}

impl AttemptRunner for JournalRunner<'_> {
    fn run<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let info = *attempt.info();
            let suffix = match info.stage {
                Stage::Answer => String::new(),
                stage => format!(" {stage}"),
            };
            let (name, doing) = match info.purpose {
                AttemptPurpose::Answer => (
                    format!("llm answer-{}{suffix}", info.round),
                    format!("answer {}", info.round),
                ),
                AttemptPurpose::Check { validator } => (
                    format!("llm check-{}.{validator}{suffix}", info.round),
                    format!("checking answer {}", info.round),
                ),
            };
            *self.stage.lock().expect("stage lock") = info.stage;
            let model = attempt.request().model.clone();
            self.ctx
                .report(Progress::stage(info.stage.name()).with_message(format!(
                    "{doing}: calling {model} (try {})",
                    info.try_number
                )));
            let failure: Mutex<Option<LlmError>> = Mutex::new(None);
            let result = self
                .ctx
                .step(&name, async {
                    self.send(attempt).await.map_err(|e| {
                        let kind = match e {
                            // Not journaled (as a permanent error would be): the job still
                            // fails permanently, but a retry of it checks the budget again.
                            LlmError::BudgetExceeded { .. } => crate::ErrorKind::Retryable,
                            _ => e.job_error_kind(),
                        };
                        let message = e.to_string();
                        *failure.lock().expect("failure slot") = Some(e);
                        JobError::msg(message).with_kind(kind)
                    })
                })
                .await;
            match result {
                Ok(response) => Ok(response),
                Err(job_error) => {
                    let error = failure
                        .into_inner()
                        .expect("failure slot")
                        .unwrap_or_else(|| {
                            LlmError::InvalidRequest {
                                // Replayed from the journal, or the journal itself failed.
                                model,
                                reason: job_error.to_string(),
                            }
                        });
                    if let LlmError::CircuitOpen { .. } = &error {
                        self.ctx.report(
                            Progress::stage(info.stage.name())
                                .with_message(format!("{doing}: {error}")),
                        );
                    }
                    Err(error)
                }
            }
        })
    }
}

impl JournalRunner<'_> {
    /// One provider call, unless the completion cache answers it or a budget forbids it;
    /// recorded in the usage ledger either way it is answered.
    async fn send(&self, attempt: Attempt<'_>) -> Result<ChatResponse, LlmError> {
        let request = attempt.request();
        let model = request.model.clone();
        let policy = self.ctx.llm_policy();
        let cached = policy
            .cache
            .and_then(|cache| Some((cache, cache.key_for(request)?)));
        if let Some((cache, key)) = &cached
            && let Some(hit) = cache.lookup(self.ctx, key).await
        {
            ledger::record_cache_hit(self.ctx, &model, &hit).await;
            return Ok(hit);
        }
        let provider = self.client.provider_for(&model).ok();
        let estimate = || budget::Estimate::of(request, self.client.price_of(&model));
        let hold = budget::reserve(self.ctx, &model, provider.as_deref(), estimate).await?;
        let started = Instant::now();
        let result = match &hold {
            Some(hold) => hold.keep(attempt.send()).await,
            None => attempt.send().await,
        };
        let provider = provider.unwrap_or_default();
        ledger::record(
            self.ctx,
            &model,
            &provider,
            &result,
            started.elapsed(),
            hold,
        )
        .await;
        if let (Ok(response), Some((cache, key))) = (&result, cached) {
            cache.store(self.ctx, key, response).await;
        }
        result
    }
}

/// The built-in durable LLM call; spawn it with [`llm_call`].
///
/// Its stored arguments are the request without secrets: see [`llm_call`].
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct LlmCall {
    request: ChatRequest,
}

impl Serialize for LlmCall {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.request
            .for_storage()
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl Job for LlmCall {
    const NAME: &'static str = "llmjobs.llm_call";
    type Output = ChatResponse;

    fn is_long_running(&self) -> bool {
        self.request.is_long_running(DEFAULT_LONG_RUNNING_PATTERNS)
    }

    async fn run(ctx: JobContext, args: Self) -> Result<ChatResponse, JobError> {
        ctx.llm().call_streaming(&args.request).await
    }
}

inventory::submit! { crate::job::Registration::of::<LlmCall>() }

/// A durable LLM call: the original `llm_call`, without its defects.
///
/// - `jobs.run_with_timeout(llm_call(req), 30s)` is the original `llm_call_with_timeout`: past
///   the timeout you get a handle while the same request keeps going, instead of a second
///   request.
/// - `jobs.spawn(llm_call(req))` is the original background polling mode, durable.
/// - The original's routing rules decide what goes straight to the background
///   ([`ChatRequest::is_long_running`]): a model matching [`DEFAULT_LONG_RUNNING_PATTERNS`]
///   (`max/*`), an agent-checked request, an `mcp_config`, `long_running: true`; `polling` /
///   `use_polling` force it either way.
/// - The request's `timeout` or `wait_for_completion` seconds cap how long
///   [`Jobs::run_with_timeout`](crate::Jobs::run_with_timeout) waits before giving the handle
///   ([`JobCall::wait_at_most`]); the same call keeps going.
///
/// Secrets are not stored with the job: a literal credential in an MCP server's `env` or in
/// `provider_options` (a name with `key`, `token`, `secret`, `password`, …) makes the spawn
/// fail with an error naming it; write it as `"${GITHUB_TOKEN}"` instead, and the worker that
/// sends the call (the first, or the one resuming the job after a restart) reads it from its
/// environment. Credential-named fields of [`ChatRequest::extra`] (never sent) are dropped.
/// Provider API keys belong in the client's configuration ([`LlmClient::from_env`]), never in
/// the request.
///
/// The call streams, so its progress shows the text received so far and the escalation stage;
/// validators run with feedback retries and staged escalation, and an answer that never passes
/// fails the job with a "needs review" error carrying the validators' feedback.
pub fn llm_call(request: ChatRequest) -> JobCall<ChatResponse> {
    let wait = request.wait_limit();
    let call = JobCall::new::<LlmCall>(&LlmCall { request });
    match wait {
        Some(limit) => call.wait_at_most(limit),
        None => call,
    }
}

/// The tokens and cost of a job's LLM calls so far (answers, retries and agent checks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageTotals {
    /// How many calls were made (or replayed from the journal).
    pub calls: u32,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Cost in US dollars; `None` once any call had no known price.
    pub cost_usd: Option<f64>,
}

impl UsageTotals {
    pub(crate) fn add(&mut self, response: &ChatResponse) {
        self.cost_usd = match (self.calls, self.cost_usd, response.total_cost) {
            (0, _, cost) => cost,
            (_, Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        self.calls += 1;
        self.input_tokens += response.total_usage.input_tokens;
        self.output_tokens += response.total_usage.output_tokens;
    }
}
