//! The LLM client: OpenAI-compatible and Anthropic providers, with retries, rate limits,
//! streaming and validators.
//!
//! A [`ChatRequest`] names a model with a routing prefix (`openai/…`, `anthropic/…`,
//! `ollama/…`, `max/…`) and deserializes from the original system's `llm_config` objects. An
//! [`LlmClient`] sends it:
//!
//! - [`LlmClient::chat`] and [`LlmClient::chat_stream`] make exactly one provider call;
//! - [`LlmClient::call`] and [`LlmClient::call_stream`] add HTTP retries (back-off with jitter,
//!   `Retry-After`) and validators with feedback retries, ending in
//!   [`LlmError::NeedsReview`] when no answer passes;
//! - [`LlmClient::call_with`] runs every HTTP attempt through an [`AttemptRunner`], so a job
//!   can journal each one.
//!
//! Provider batches (OpenAI's Batch API, Anthropic's Message Batches; half the price, answered
//! within hours) run as the durable job [`llm_batch`]; the provider calls underneath are
//! [`LlmClient::batch_create`] and its siblings.
//!
//! Rate limits ([`RateLimit`]), prices ([`Price`]) and providers ([`ProviderConfig`]) are set on
//! the [`LlmClientBuilder`], or from the environment with [`LlmClient::from_env`].
//!
//! ```no_run
//! use llmjobs::llm::{ChatRequest, LlmClient, LlmError, Validator};
//!
//! # async fn demo() -> Result<(), LlmError> {
//! // OPENAI_API_KEY, ANTHROPIC_API_KEY, LLMJOBS_MAX_BASE_URL, … (see LlmClientBuilder::with_env)
//! let client = LlmClient::from_env()?;
//! let req = ChatRequest::new("openai/gpt-4o-mini")
//!     .system("You extract data.")
//!     .user("John Doe lives in New York. Give his name and city as JSON.")
//!     .json()
//!     .validate(Validator::JsonString)
//!     .validate(Validator::field_present("city"));
//! match client.call(&req).await {
//!     Ok(answer) => println!("{} ({} tokens)", answer.text, answer.total_usage.total()),
//!     Err(LlmError::NeedsReview { answer, feedback, .. }) => {
//!         eprintln!("needs review: {} ({feedback:?})", answer.text)
//!     }
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Streaming reports each delta to a callback:
//!
//! ```no_run
//! # use llmjobs::llm::{ChatRequest, LlmClient};
//! # async fn demo(client: LlmClient) -> Result<(), llmjobs::llm::LlmError> {
//! let req = ChatRequest::new("anthropic/claude-sonnet-4-5").user("Tell me a story.");
//! let answer = client
//!     .call_stream(&req, |event| print!("{}", event.delta_text))
//!     .await?;
//! println!("\n{} output tokens", answer.usage.output_tokens);
//! # Ok(())
//! # }
//! ```
//!
//! With the `mock` feature, [`mock::MockLlmServer`] serves both APIs on loopback for tests and
//! demos.

mod batch;
mod breaker;
mod client;
mod error;
mod escalation;
mod fallback;
mod job;
mod limits;
#[cfg(feature = "mock")]
pub mod mock;
mod pricing;
mod provider;
mod request;
mod response;
mod retry;
mod router;
mod secrets;
mod shared;
mod stream;
mod tool_call;
mod validate;

pub use batch::{
    BatchInfo, BatchItemError, BatchItemErrorKind, BatchItemResult, BatchRequest, BatchState,
};
pub use breaker::CircuitBreaker;
pub use client::{LlmClient, LlmClientBuilder};
pub use error::LlmError;
pub use escalation::Stage;
pub use fallback::{DEFAULT_FALLBACK_PATIENCE, FallbackSkip};
pub(crate) use job::LlmPolicy;
pub(crate) use job::share_through;
pub use job::{
    BatchOptions, BatchOutput, CompletionCache, DEFAULT_OUTPUT_ESTIMATE, JobLlm, KeyBudget,
    LlmBatch, LlmCall, UsageTotals, llm_batch, llm_batch_with, llm_call,
};
pub use limits::RateLimit;
pub use pricing::{
    ANTHROPIC_CACHE_READ_FACTOR, ANTHROPIC_CACHE_WRITE_FACTOR, BATCH_PRICE_FACTOR,
    OPENAI_CACHE_READ_FACTOR, Price,
};
pub use provider::command::{CommandSpec, MCP_CONFIG_FILE};
pub use request::{
    ChatRequest, Content, ContentPart, DEFAULT_LONG_RUNNING_PATTERNS, ImageUrl, Message,
    ResponseFormat, RetryConfig, Role, WaitFor,
};
pub use response::{ChatResponse, FinishReason, StreamEvent, Usage};
pub use retry::{
    Attempt, AttemptInfo, AttemptPurpose, AttemptRunner, BoxFuture, DirectRunner, RetryPolicy,
};
pub use router::{ApiKey, Capability, ProviderConfig, ProviderKind, Route};
pub use shared::{Admission, DEFAULT_LEASE, LimitScope, Reservation, SharedLimiter, Spent};
pub use tool_call::ToolCall;
pub use validate::{AgentCheck, ContradictionCheck, SuccessCriteria, Validator, render_template};
