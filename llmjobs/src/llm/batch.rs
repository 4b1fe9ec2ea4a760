//! Provider batch APIs: OpenAI's Batch API and Anthropic's Message Batches, at half the price
//! of single calls, answered within hours.
//!
//! These are the raw provider calls, one HTTP request each (no retries): submit, look up,
//! poll, fetch results, cancel. The durable job that drives them ([`super::llm_batch`]) adds
//! the journal, polling with back-off, progress and resubmission.

mod anthropic;
mod openai;
mod wire;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::provider::{self, CallCtx};
use super::router::{ProviderConfig, ProviderKind};
use super::{ChatRequest, ChatResponse, LlmClient, LlmError};

/// One request of a provider batch, named by an id unique within the batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchRequest {
    /// The caller's id for the request: results are matched to requests by it. Anthropic
    /// accepts 1 to 64 characters of `a-z`, `A-Z`, `0-9`, `_` and `-`.
    pub custom_id: String,
    /// The request.
    pub request: ChatRequest,
}

impl BatchRequest {
    /// A request named `custom_id`.
    pub fn new(custom_id: impl Into<String>, request: ChatRequest) -> Self {
        BatchRequest {
            custom_id: custom_id.into(),
            request,
        }
    }
}

/// Where a provider batch is. OpenAI's statuses; Anthropic's `in_progress`, `canceling` and
/// `ended` map to [`BatchState::InProgress`], [`BatchState::Cancelling`] and
/// [`BatchState::Completed`] (or [`BatchState::Cancelled`] when it was cancelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BatchState {
    /// The input is being checked.
    Validating,
    /// Requests are being answered.
    InProgress,
    /// The answers are being written out.
    Finalizing,
    /// A cancel was asked for; requests under way finish.
    Cancelling,
    /// Every request was answered or failed.
    Completed,
    /// The completion window passed; unanswered requests expired.
    Expired,
    /// The batch as a whole was refused (its input did not validate).
    Failed,
    /// The batch was cancelled.
    Cancelled,
}

impl BatchState {
    /// Whether the batch is over: its results (if any) can be fetched.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            BatchState::Completed
                | BatchState::Expired
                | BatchState::Failed
                | BatchState::Cancelled
        )
    }

    /// The state's name, as OpenAI spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            BatchState::Validating => "validating",
            BatchState::InProgress => "in_progress",
            BatchState::Finalizing => "finalizing",
            BatchState::Cancelling => "cancelling",
            BatchState::Completed => "completed",
            BatchState::Expired => "expired",
            BatchState::Failed => "failed",
            BatchState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for BatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider batch, as the provider last described it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchInfo {
    /// The provider's id for the batch (`batch_…`, `msgbatch_…`).
    pub id: String,
    /// The name of the provider that holds it.
    pub provider: String,
    /// Where it is.
    pub state: BatchState,
    /// How many requests it holds.
    pub total: u64,
    /// How many were answered so far.
    pub succeeded: u64,
    /// How many failed, expired or were cancelled so far.
    pub failed: u64,
    /// OpenAI: the uploaded input file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_file_id: Option<String>,
    /// OpenAI: the file of answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file_id: Option<String>,
    /// OpenAI: the file of failed requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_file_id: Option<String>,
    /// Why the batch as a whole failed, when it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Why one request of a batch has no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BatchItemErrorKind {
    /// The provider answered it with an error.
    Failed,
    /// The batch's completion window passed before it was answered.
    Expired,
    /// The batch was cancelled before it was answered.
    Cancelled,
    /// The batch ended without a word about it.
    Missing,
}

/// Why one request of a batch has no answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchItemError {
    /// What happened.
    pub kind: BatchItemErrorKind,
    /// The HTTP status the provider gave the request, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The provider's message.
    pub message: String,
}

impl BatchItemError {
    /// Whether sending the request again may succeed: it expired, was cancelled or went
    /// missing, or failed with a rate limit or a server error.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            BatchItemErrorKind::Failed => {
                self.status.is_some_and(super::error::is_retryable_status)
            }
            _ => true,
        }
    }
}

impl BatchItemErrorKind {
    /// The kind's name: `failed`, `expired`, `cancelled`, `missing`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BatchItemErrorKind::Failed => "failed",
            BatchItemErrorKind::Expired => "expired",
            BatchItemErrorKind::Cancelled => "cancelled",
            BatchItemErrorKind::Missing => "missing",
        }
    }
}

impl std::fmt::Display for BatchItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind.as_str();
        match self.status {
            Some(status) => write!(f, "{kind} (HTTP {status}): {}", self.message),
            None => write!(f, "{kind}: {}", self.message),
        }
    }
}

/// One request's outcome in a finished batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchItemResult {
    /// The request's [`BatchRequest::custom_id`].
    pub custom_id: String,
    /// The answer (its cost at the batch price), or why there is none.
    pub outcome: Result<ChatResponse, BatchItemError>,
}

/// Why a request has no result: the batch's own errors, when it failed as a whole.
fn missing_message(batch: &BatchInfo) -> String {
    let mut message = format!(
        "batch {} ({}) has no result for this request",
        batch.id, batch.state
    );
    if !batch.errors.is_empty() {
        message.push_str(": ");
        message.push_str(&batch.errors.join("; "));
    }
    message
}

/// The provider a batch goes to, and the wire model of each request.
struct Target {
    provider: std::sync::Arc<ProviderConfig>,
    wire_models: Vec<String>,
}

impl LlmClient {
    /// Checks a batch before anything is sent, and names the provider it goes to: it is not
    /// empty, its custom ids are unique (and valid for Anthropic), every request routes to the
    /// same provider, which has a batch API (OpenAI-compatible or Anthropic), and, for OpenAI,
    /// asks for the same model.
    pub fn batch_provider(&self, requests: &[BatchRequest]) -> Result<String, LlmError> {
        Ok(self.batch_target(requests)?.provider.name.clone())
    }

    fn batch_target(&self, requests: &[BatchRequest]) -> Result<Target, LlmError> {
        let invalid = |model: &str, reason: String| LlmError::InvalidRequest {
            model: model.to_string(),
            reason,
        };
        let first = requests
            .first()
            .ok_or_else(|| invalid("(batch)", "a batch needs at least one request".into()))?;
        let mut seen = HashSet::new();
        let mut wire_models = Vec::with_capacity(requests.len());
        let provider = self.resolve(&first.request.model)?.provider;
        for item in requests {
            let model = &item.request.model;
            if !seen.insert(item.custom_id.as_str()) {
                return Err(invalid(
                    model,
                    format!(
                        "the custom id `{}` is used twice in the batch",
                        item.custom_id
                    ),
                ));
            }
            let resolved = self.resolve(model)?;
            if resolved.provider.name != provider.name {
                return Err(invalid(
                    model,
                    format!(
                        "a batch goes to one provider: `{}` routes to `{}`, but `{}` routes to `{}`",
                        first.custom_id, provider.name, item.custom_id, resolved.provider.name
                    ),
                ));
            }
            match provider.kind {
                ProviderKind::Anthropic => anthropic::check_custom_id(model, &item.custom_id)?,
                ProviderKind::OpenAiCompatible => {
                    if item.request.model != first.request.model {
                        return Err(invalid(
                            model,
                            format!(
                                "an OpenAI batch asks one model: `{}` asks `{}`, but `{}` asks `{model}`",
                                first.custom_id, first.request.model, item.custom_id
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(invalid(
                        model,
                        format!("provider `{}` has no batch API", provider.name),
                    ));
                }
            }
            wire_models.push(resolved.wire_model);
        }
        if provider.api_key.is_none()
            && let Some(hint) = &provider.key_hint
        {
            return Err(LlmError::MissingApiKey {
                provider: provider.name.clone(),
                hint: hint.clone(),
            });
        }
        Ok(Target {
            provider,
            wire_models,
        })
    }

    /// The request bodies of a batch, in order, as the provider's chat API takes them.
    fn batch_bodies(
        &self,
        target: &Target,
        requests: &[BatchRequest],
    ) -> Result<Vec<serde_json::Value>, LlmError> {
        requests
            .iter()
            .zip(&target.wire_models)
            .map(|(item, wire_model)| {
                let ctx = CallCtx {
                    provider: &target.provider.name,
                    model: &item.request.model,
                };
                provider::build_body(
                    &target.provider,
                    ctx,
                    wire_model,
                    &item.request,
                    false,
                    self.max_tokens_default(),
                )
            })
            .collect()
    }

    /// The first half of submitting a batch. OpenAI: uploads the requests as a JSONL file named
    /// `{marker}.jsonl` and returns its id; a file of that name uploaded before (by an attempt
    /// that crashed before it could record the id) is reused instead. Anthropic takes the
    /// requests with the batch itself: `None`.
    pub async fn batch_upload(
        &self,
        requests: &[BatchRequest],
        marker: &str,
    ) -> Result<Option<String>, LlmError> {
        let target = self.batch_target(requests)?;
        match target.provider.kind {
            ProviderKind::Anthropic => Ok(None),
            _ => {
                let bodies = self.batch_bodies(&target, requests)?;
                openai::upload(self, &target.provider, requests, bodies, marker)
                    .await
                    .map(Some)
            }
        }
    }

    /// The batch created from `input_file_id`, if there is one (OpenAI; always `None` for
    /// Anthropic, whose batches carry nothing of their submitter to find them by).
    pub async fn batch_find(
        &self,
        provider: &str,
        input_file_id: &str,
    ) -> Result<Option<BatchInfo>, LlmError> {
        let provider = self.batch_provider_named(provider)?;
        match provider.kind {
            ProviderKind::Anthropic => Ok(None),
            _ => openai::find(self, &provider, input_file_id).await,
        }
    }

    /// Creates the batch: from the uploaded `input_file_id` (OpenAI, with `marker` in its
    /// metadata), or from the requests themselves (Anthropic).
    pub async fn batch_create(
        &self,
        requests: &[BatchRequest],
        input_file_id: Option<&str>,
        marker: &str,
    ) -> Result<BatchInfo, LlmError> {
        let target = self.batch_target(requests)?;
        match (target.provider.kind, input_file_id) {
            (ProviderKind::Anthropic, _) => {
                let bodies = self.batch_bodies(&target, requests)?;
                anthropic::create(self, &target.provider, requests, bodies).await
            }
            (_, Some(file)) => openai::create(self, &target.provider, file, marker).await,
            (_, None) => Err(LlmError::InvalidRequest {
                model: requests[0].request.model.clone(),
                reason: "an OpenAI batch is created from an uploaded input file: call \
                         batch_upload first"
                    .into(),
            }),
        }
    }

    /// The batch as the provider describes it now.
    pub async fn batch_status(&self, provider: &str, id: &str) -> Result<BatchInfo, LlmError> {
        let provider = self.batch_provider_named(provider)?;
        match provider.kind {
            ProviderKind::Anthropic => anthropic::status(self, &provider, id).await,
            _ => openai::status(self, &provider, id).await,
        }
    }

    /// Asks the provider to cancel the batch; requests under way still finish, and answered
    /// ones stay in the results.
    pub async fn batch_cancel(&self, provider: &str, id: &str) -> Result<BatchInfo, LlmError> {
        let provider = self.batch_provider_named(provider)?;
        match provider.kind {
            ProviderKind::Anthropic => anthropic::cancel(self, &provider, id).await,
            _ => openai::cancel(self, &provider, id).await,
        }
    }

    /// The outcome of every request of a finished batch, in the order of `requests` (the
    /// requests it was created from): answers priced at the batch price
    /// ([`super::Price::batch`]), per-request errors, and expired, cancelled or missing
    /// requests.
    pub async fn batch_results(
        &self,
        batch: &BatchInfo,
        requests: &[BatchRequest],
    ) -> Result<Vec<BatchItemResult>, LlmError> {
        let provider = self.batch_provider_named(&batch.provider)?;
        let mut found = match provider.kind {
            ProviderKind::Anthropic => anthropic::results(self, &provider, batch).await?,
            _ => openai::results(self, &provider, batch).await?,
        };
        let results = requests
            .iter()
            .map(|item| {
                let outcome = match found.remove(&item.custom_id) {
                    Some(wire::ItemOutcome::Answer(body)) => {
                        Ok(self.batch_answer(&provider, &item.request, &body))
                    }
                    Some(wire::ItemOutcome::Error(error)) => Err(error),
                    None => Err(BatchItemError {
                        kind: BatchItemErrorKind::Missing,
                        status: None,
                        message: missing_message(batch),
                    }),
                };
                BatchItemResult {
                    custom_id: item.custom_id.clone(),
                    outcome: outcome.and_then(|r| r),
                }
            })
            .collect();
        Ok(results)
    }

    /// A successful item's body as an answer, priced at the batch price; a body that does not
    /// parse is the item's error.
    fn batch_answer(
        &self,
        provider: &ProviderConfig,
        request: &ChatRequest,
        body: &serde_json::Value,
    ) -> Result<ChatResponse, BatchItemError> {
        let ctx = CallCtx {
            provider: &provider.name,
            model: &request.model,
        };
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let parsed =
            provider::parse_body(provider.kind, ctx, &bytes).map_err(|e| BatchItemError {
                kind: BatchItemErrorKind::Failed,
                status: None,
                message: e.to_string(),
            })?;
        let price = self.price_of(&request.model).map(|price| price.batch());
        let response = super::client::priced_response(parsed, request, provider, price);
        Ok(response)
    }

    fn batch_provider_named(&self, name: &str) -> Result<std::sync::Arc<ProviderConfig>, LlmError> {
        self.provider_named(name).ok_or_else(|| {
            LlmError::Config(format!(
                "the batch's provider `{name}` is not configured in this client"
            ))
        })
    }
}
