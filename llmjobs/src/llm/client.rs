//! [`LlmClient`] and its builder: configuration, and one provider call.
//!
//! The client's parts live in `client/`: the builder, routing a call to its provider, the
//! HTTP exchange, the rate limits around a call, and what provider batch calls need of it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

mod accessors;
mod builder;
mod dispatch;
mod http;
mod limited;
mod permit;
#[cfg(test)]
mod tests;

use super::breaker::Breakers;
use super::limits::Limiter;
use super::pricing::PriceTable;
use super::router::Router;
use super::shared::SharedLimiter;
use super::{ChatRequest, ChatResponse, LlmError, RetryPolicy, StreamEvent};

pub use builder::LlmClientBuilder;
pub(super) use limited::priced_response;

/// A client for chat models behind OpenAI-compatible and Anthropic APIs.
///
/// Cheap to clone: clones share the HTTP connection pool, the rate limits and the 429 pauses,
/// so every caller in the process that uses clones of one client is limited together.
///
/// - [`LlmClient::chat`] / [`LlmClient::chat_stream`]: exactly one provider call (after waiting
///   for the rate limits), no retry, no validation.
/// - [`LlmClient::call`] / [`LlmClient::call_stream`] / [`LlmClient::call_with`]: HTTP retries
///   and validators with feedback.
#[derive(Clone)]
pub struct LlmClient {
    inner: Arc<Inner>,
    limits: permit::Limits,
}

struct Inner {
    /// Whether the limits should be shared through a job database when one is at hand.
    share_limits: bool,
    /// How long a shared reservation holds unless renewed.
    shared_lease: Duration,
    http: reqwest::Client,
    router: Router,
    limiter: Limiter,
    breakers: Breakers,
    /// Where calls to a provider go while its circuit is open.
    fallbacks: HashMap<String, String>,
    prices: PriceTable,
    retry: RetryPolicy,
    default_max_tokens: u32,
    timeout: Duration,
    stream_idle_timeout: Duration,
}

impl fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut providers: Vec<_> = self.inner.router.providers.values().collect();
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        f.debug_struct("LlmClient")
            .field("providers", &providers)
            .field("routes", &self.inner.router.routes)
            .field("default_provider", &self.inner.router.default_provider)
            .field("retry", &self.inner.retry)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl LlmClient {
    /// A builder, starting from the standard providers and routes (see
    /// [`LlmClientBuilder::new`]).
    pub fn builder() -> LlmClientBuilder {
        LlmClientBuilder::new()
    }

    /// A client configured from environment variables (see [`LlmClientBuilder::with_env`]).
    pub fn from_env() -> Result<LlmClient, LlmError> {
        LlmClientBuilder::new().with_env().build()
    }

    /// Whether the client asked for its rate limits to be shared by every process of the job
    /// database ([`LlmClientBuilder::shared_limits`]).
    pub(crate) fn wants_shared_limits(&self) -> bool {
        self.inner.share_limits
    }

    /// Whether the client's rate limits are shared ([`LlmClient::with_shared_limiter`]).
    pub(crate) fn has_shared_limits(&self) -> bool {
        matches!(self.limits, permit::Limits::Shared { .. })
    }

    /// This client (sharing its connections, breakers and settings) with its rate limits kept
    /// by `limiter` instead of this process's memory: every process whose client uses the same
    /// shared state stays under the limits together. Reservations hold for
    /// [`LlmClientBuilder::shared_limits_lease`] (30 s) unless renewed (a call renews its own
    /// while it runs), so a process that dies gives them back.
    ///
    /// [`Jobs`](crate::Jobs) does this for a client built with
    /// [`LlmClientBuilder::shared_limits`], with a limiter kept in its database.
    pub fn with_shared_limiter(&self, limiter: Arc<dyn SharedLimiter>) -> LlmClient {
        LlmClient {
            inner: self.inner.clone(),
            limits: permit::Limits::Shared {
                limiter,
                lease: self.inner.shared_lease,
            },
        }
    }

    /// The client's retry policy for HTTP tries.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry
    }

    /// The name of the provider `model` is routed to (for per-provider concurrency keys).
    pub fn provider_for(&self, model: &str) -> Result<String, LlmError> {
        Ok(self.inner.router.resolve(model)?.provider.name.clone())
    }

    /// The model name as sent to the provider `model` is routed to (`openai/gpt-4o` is sent as
    /// `gpt-4o`; the `max/` proxy gets the full name).
    pub fn wire_model_for(&self, model: &str) -> Result<String, LlmError> {
        Ok(self.inner.router.resolve(model)?.wire_model)
    }

    /// Exactly one provider call (after waiting for the rate limits): no retry, no validation.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.send_attempt(req, 1, None).await
    }

    /// Exactly one streamed provider call: `on_event` receives each delta as it arrives; the
    /// assembled answer is returned. No retry, no validation.
    pub async fn chat_stream<F>(
        &self,
        req: &ChatRequest,
        mut on_event: F,
    ) -> Result<ChatResponse, LlmError>
    where
        F: FnMut(&StreamEvent) + Send,
    {
        self.send_attempt(req, 1, Some(&mut on_event)).await
    }
}
