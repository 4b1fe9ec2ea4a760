//! [`LlmClient`] and its builder: configuration, and one provider call.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod permit;

use super::breaker::{Admission, Breakers};
use super::limits::{Limiter, Tokens};
use super::pricing::PriceTable;
use super::provider::{self, CallCtx, Parsed, StreamState};
use super::request::estimate_tokens;
use super::retry::retry_after_from_headers;
use super::router::{Capability, ProviderConfig, ProviderKind, Route, Router};
use super::shared::{DEFAULT_LEASE, SharedLimiter};
use super::stream::SseParser;
use super::{
    ApiKey, ChatRequest, ChatResponse, CircuitBreaker, LlmError, Price, RateLimit, RetryPolicy,
    StreamEvent, Usage,
};

/// The output tokens assumed for rate limiting when a request sets no `max_tokens`.
const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;

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

    /// One provider call; streamed when `on_event` is given. `attempt` is reported in stream
    /// events. Refused at once when the route cannot take the request; sent to the provider's
    /// fallback, or refused, while the provider's circuit is open.
    pub(crate) async fn send_attempt(
        &self,
        req: &ChatRequest,
        attempt: u32,
        on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Result<ChatResponse, LlmError> {
        let inner = &*self.inner;
        let resolved = inner.router.resolve(&req.model)?;
        let mut provider = resolved.provider.clone();
        if let Some(route) = &resolved.route
            && let Some(capability) = route.refused_by(req)
        {
            return Err(LlmError::Unsupported {
                route: route.prefix.clone(),
                provider: provider.name.clone(),
                model: req.model.clone(),
                capability,
            });
        }
        if provider.kind == ProviderKind::Given {
            let ctx = CallCtx {
                provider: &provider.name,
                model: &req.model,
            };
            return given_answer(ctx, req);
        }
        let ticket = match inner.breakers.admit(&provider.name) {
            Admission::Go(ticket) => ticket,
            Admission::Refused(wait) => {
                let fallback = inner
                    .fallbacks
                    .get(&provider.name)
                    .and_then(|name| inner.router.providers.get(name));
                let Some(fallback) = fallback else {
                    return Err(LlmError::CircuitOpen {
                        provider: provider.name.clone(),
                        model: req.model.clone(),
                        retry_after: wait,
                    });
                };
                match inner.breakers.admit(&fallback.name) {
                    Admission::Go(ticket) => {
                        tracing::debug!(provider = %provider.name, fallback = %fallback.name, "circuit open: sending to the fallback");
                        provider = fallback.clone();
                        ticket
                    }
                    Admission::Refused(_) => {
                        return Err(LlmError::CircuitOpen {
                            provider: provider.name.clone(),
                            model: req.model.clone(),
                            retry_after: wait,
                        });
                    }
                }
            }
        };
        let result = self
            .send_to(&provider, &resolved.wire_model, req, attempt, on_event)
            .await;
        ticket.settle(&result);
        result
    }

    /// One call to `provider`, which has been admitted.
    async fn send_to(
        &self,
        provider: &ProviderConfig,
        wire_model: &str,
        req: &ChatRequest,
        attempt: u32,
        on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Result<ChatResponse, LlmError> {
        let inner = &*self.inner;
        let ctx = CallCtx {
            provider: &provider.name,
            model: &req.model,
        };
        if provider.api_key.is_none()
            && let Some(hint) = &provider.key_hint
        {
            return Err(LlmError::MissingApiKey {
                provider: provider.name.clone(),
                hint: hint.clone(),
            });
        }
        if let Some(command) = provider
            .command
            .as_ref()
            .filter(|_| provider.kind == ProviderKind::Command)
        {
            return self
                .send_command(provider, command, wire_model, req, attempt, on_event)
                .await;
        }
        let streaming = on_event.is_some();
        let body = provider::build_body(
            provider,
            ctx,
            wire_model,
            req,
            streaming,
            inner.default_max_tokens,
        )?;
        let headers = provider::headers(provider)?;
        tracing::debug!(provider = %provider.name, model = %req.model, attempt, streaming, "sending LLM request");
        let request = inner
            .http
            .post(provider::endpoint(provider))
            .headers(headers)
            .json(&body);
        let exchange = self.exchange(ctx, provider, request, attempt, on_event);
        self.limited(ctx, req, provider, exchange).await
    }

    /// Runs `call`, one exchange with `provider`, under the rate limits: it waits for its
    /// place, holds it while it runs, shares a rate limit's pause with every caller of the
    /// model, and settles the place with the tokens the answer used.
    async fn limited(
        &self,
        ctx: CallCtx<'_>,
        req: &ChatRequest,
        provider: &ProviderConfig,
        call: impl Future<Output = Result<Parsed, LlmError>>,
    ) -> Result<ChatResponse, LlmError> {
        let inner = &*self.inner;
        let estimate = Tokens {
            input: req.estimated_input_tokens(),
            output: req.max_tokens.map_or(DEFAULT_OUTPUT_ESTIMATE, u64::from),
        };
        let permit = self
            .limits
            .acquire(&inner.limiter, &provider.name, &req.model, estimate)
            .await?;
        let parsed = match permit.hold(call).await {
            Ok(parsed) => parsed,
            Err(error) => {
                if error.is_rate_limited() {
                    let pause = error
                        .retry_after()
                        .unwrap_or(inner.retry.base_delay)
                        .min(inner.retry.max_retry_after);
                    tracing::warn!(provider = %provider.name, model = %req.model, ?pause, "rate limited; pausing");
                    self.limits
                        .pause(&inner.limiter, &provider.name, &req.model, pause)
                        .await;
                }
                permit.settle(Tokens::default()).await;
                return Err(error);
            }
        };
        let response = self.finish_response(ctx, req, provider, parsed);
        permit
            .settle(Tokens {
                input: response.usage.input_tokens,
                output: response.usage.output_tokens,
            })
            .await;
        Ok(response)
    }

    /// Sends the request and reads the answer, plain or streamed.
    async fn exchange(
        &self,
        ctx: CallCtx<'_>,
        provider: &ProviderConfig,
        mut request: reqwest::RequestBuilder,
        attempt: u32,
        on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Result<Parsed, LlmError> {
        let inner = &*self.inner;
        if on_event.is_none() {
            request = request.timeout(inner.timeout);
        }
        // One deadline for the whole call, streamed or not: a stream that keeps trickling
        // data never trips the idle timeout, and must still end.
        let deadline = tokio::time::Instant::now() + inner.timeout;
        let response = tokio::time::timeout_at(deadline, request.send())
            .await
            .map_err(|_| timeout(ctx, inner.timeout))?
            .map_err(|e| transport(ctx, e, inner.timeout))?;
        let status = response.status();
        if !status.is_success() {
            // Only a rate limit says when to come back: a 500 or 529 is retried with back-off,
            // whatever reset times its headers carry.
            let retry_after = (status.as_u16() == 429)
                .then(|| retry_after_from_headers(response.headers(), SystemTime::now()))
                .flatten();
            let body = response.text().await.unwrap_or_default();
            return Err(provider::http_error(
                ctx,
                status.as_u16(),
                retry_after,
                &body,
            ));
        }
        match on_event {
            None => {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| transport(ctx, e, inner.timeout))?;
                provider::parse_body(provider.kind, ctx, &bytes)
            }
            Some(on_event) => tokio::time::timeout_at(
                deadline,
                self.read_stream(ctx, provider.kind, response, attempt, on_event),
            )
            .await
            .map_err(|_| timeout(ctx, inner.timeout))?,
        }
    }

    /// One call to a command-line provider, under the same rate limits and deadline as an
    /// HTTP call; dropping it (a cancelled or timed-out job) kills the command.
    async fn send_command(
        &self,
        provider: &ProviderConfig,
        command: &super::CommandSpec,
        wire_model: &str,
        req: &ChatRequest,
        attempt: u32,
        on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Result<ChatResponse, LlmError> {
        let inner = &*self.inner;
        let ctx = CallCtx {
            provider: &provider.name,
            model: &req.model,
        };
        tracing::debug!(provider = %provider.name, model = %req.model, attempt, "running the provider's command");
        let run = async {
            tokio::time::timeout(
                inner.timeout,
                provider::command::run(command, ctx, wire_model, req, attempt, on_event),
            )
            .await
            .map_err(|_| timeout(ctx, inner.timeout))?
        };
        self.limited(ctx, req, provider, run).await
    }

    async fn read_stream(
        &self,
        ctx: CallCtx<'_>,
        kind: ProviderKind,
        mut response: reqwest::Response,
        attempt: u32,
        on_event: &mut (dyn FnMut(&StreamEvent) + Send),
    ) -> Result<Parsed, LlmError> {
        let idle = self.inner.stream_idle_timeout;
        let mut parser = SseParser::default();
        let mut state = StreamState::new(kind);
        let mut chars = 0usize;
        while !state.is_done() {
            let chunk = tokio::time::timeout(idle, response.chunk())
                .await
                .map_err(|_| ctx.stream_error(format!("no data for {idle:?}"), true))?
                .map_err(|e| transport(ctx, e, idle))?;
            let Some(chunk) = chunk else {
                if parser.has_partial_event() {
                    return Err(
                        ctx.stream_error("the stream was cut off in the middle of an event", true)
                    );
                }
                break;
            };
            for event in parser.push(&chunk) {
                let Some(delta) = state.on_event(ctx, event)? else {
                    continue;
                };
                chars += delta.len();
                let (input, output) = state.reported_tokens();
                on_event(&StreamEvent {
                    output_tokens_so_far: output.unwrap_or(0).max(estimate_tokens(chars)),
                    input_tokens: input,
                    delta_text: delta,
                    attempt,
                });
            }
        }
        state.finish(ctx)
    }

    fn finish_response(
        &self,
        ctx: CallCtx<'_>,
        req: &ChatRequest,
        provider: &ProviderConfig,
        parsed: Parsed,
    ) -> ChatResponse {
        priced_response(parsed, req, provider, self.inner.prices.get(ctx.model))
    }
}

/// The answer `parsed` to `req` from `provider`, its usage estimated when the provider gave
/// none, and priced at `price`.
pub(super) fn priced_response(
    parsed: Parsed,
    req: &ChatRequest,
    provider: &ProviderConfig,
    price: Option<super::Price>,
) -> ChatResponse {
    let usage = parsed.usage.unwrap_or_else(|| Usage {
        input_tokens: req.estimated_input_tokens(),
        output_tokens: estimate_tokens(parsed.text.len()),
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        estimated: true,
    });
    let cost = price.map(|p| p.cost(&usage));
    let mut response = ChatResponse::new(
        parsed.text,
        parsed.model.unwrap_or_else(|| req.model.clone()),
        provider.name.clone(),
    );
    response.id = parsed.id;
    response.usage = usage;
    response.cost = cost;
    response.finish_reason = parsed.finish_reason;
    response.set_tool_calls(parsed.tool_calls);
    response.total_usage = usage;
    response.total_cost = cost;
    response
}

/// What the provider batch calls ([`super::batch`]) need of the client.
impl LlmClient {
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn resolve(&self, model: &str) -> Result<super::router::Resolved, LlmError> {
        self.inner.router.resolve(model)
    }

    pub(crate) fn provider_named(&self, name: &str) -> Option<Arc<ProviderConfig>> {
        self.inner.router.providers.get(name).cloned()
    }

    pub(crate) fn price_of(&self, model: &str) -> Option<Price> {
        self.inner.prices.get(model)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    pub(crate) fn max_tokens_default(&self) -> u32 {
        self.inner.default_max_tokens
    }
}

/// The answer of a [`ProviderKind::Given`] provider: the last assistant message.
fn given_answer(ctx: CallCtx<'_>, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
    let text = req.last_assistant_text().ok_or_else(|| {
        ctx.invalid_request(
            "a given answer needs an assistant message holding the text to validate",
        )
    })?;
    let mut response = ChatResponse::new(text, ctx.model, ctx.provider);
    response.finish_reason = Some(super::FinishReason::Stop);
    Ok(response)
}

fn timeout(ctx: CallCtx<'_>, after: Duration) -> LlmError {
    LlmError::Timeout {
        provider: ctx.provider.to_string(),
        model: ctx.model.to_string(),
        after,
    }
}

fn transport(ctx: CallCtx<'_>, error: reqwest::Error, after: Duration) -> LlmError {
    if error.is_timeout() {
        return timeout(ctx, after);
    }
    let error = error.without_url();
    LlmError::Transport {
        provider: ctx.provider.to_string(),
        model: ctx.model.to_string(),
        reason: super::error::describe_chain(&error),
        source: error,
    }
}

/// Configures an [`LlmClient`].
///
/// ```
/// use std::time::Duration;
/// use llmjobs::llm::{LlmClient, Price, ProviderConfig, RateLimit, RetryPolicy};
///
/// let client = LlmClient::builder()
///     .provider(ProviderConfig::openai_compatible("litellm", "http://localhost:4000/v1"))
///     .route_keeping_prefix("vertex_ai/", "litellm")
///     .api_key("openai", "sk-…")
///     .rate_limit("openai/*", RateLimit::new().requests_per_minute(500).max_concurrency(8))
///     .price("openai/gpt-4o-mini", Price::per_million_tokens(0.15, 0.60))
///     .retry(RetryPolicy::new().max_retries(3))
///     .timeout(Duration::from_secs(120))
///     .build()?;
/// # let _ = client;
/// # Ok::<(), llmjobs::llm::LlmError>(())
/// ```
#[derive(Debug)]
#[must_use]
pub struct LlmClientBuilder {
    share_limits: bool,
    shared_lease: Duration,
    router: Router,
    limiter: Limiter,
    breaker: CircuitBreaker,
    fallbacks: HashMap<String, String>,
    prices: PriceTable,
    retry: RetryPolicy,
    default_max_tokens: u32,
    timeout: Duration,
    connect_timeout: Duration,
    stream_idle_timeout: Duration,
    http: Option<reqwest::Client>,
    error: Option<LlmError>,
}

impl Default for LlmClientBuilder {
    fn default() -> Self {
        LlmClientBuilder::new()
    }
}

impl LlmClientBuilder {
    /// The standard providers and routes, with no API keys:
    ///
    /// | prefix | provider | base URL | prefix sent? |
    /// | --- | --- | --- | --- |
    /// | `openai/` | `openai` (OpenAI-compatible, key required) | `https://api.openai.com/v1` | no |
    /// | `anthropic/` | `anthropic` (Anthropic, key required) | `https://api.anthropic.com` | no |
    /// | `ollama/` | `ollama` (OpenAI-compatible) | `http://localhost:11434/v1` | no |
    /// | `max/` | `max` (OpenAI-compatible; configure it) | none | yes |
    /// | `meta-task/` | `meta-task` ([`ProviderKind::Given`]) | none | — |
    ///
    /// The `max/` proxy (the original system's Claude proxy) picks its agent by the full alias
    /// (`max/code_tester_agent`), so the prefix is kept; the public APIs want bare model names.
    /// Models without a routed prefix go to the default provider, if one is set, unchanged.
    pub fn new() -> Self {
        let mut router = Router::default();
        for provider in [
            ProviderConfig::openai_compatible("openai", "https://api.openai.com/v1")
                .require_api_key("set OPENAI_API_KEY or LlmClientBuilder::api_key(\"openai\", …)"),
            ProviderConfig::anthropic("anthropic", "https://api.anthropic.com").require_api_key(
                "set ANTHROPIC_API_KEY or LlmClientBuilder::api_key(\"anthropic\", …)",
            ),
            ProviderConfig::openai_compatible("ollama", "http://localhost:11434/v1"),
            ProviderConfig::new("meta-task", ProviderKind::Given, ""),
        ] {
            router
                .providers
                .insert(provider.name.clone(), Arc::new(provider));
        }
        for (prefix, provider, strip_prefix) in [
            ("openai/", "openai", true),
            ("anthropic/", "anthropic", true),
            ("ollama/", "ollama", true),
            ("max/", "max", false),
            ("meta-task/", "meta-task", false),
        ] {
            let mut route = Route::new(prefix, provider, strip_prefix);
            if prefix == "max/" {
                // The Claude proxy drives the Claude CLI, which takes a text prompt: no
                // images, and something from the user to answer.
                route.refuses = vec![Capability::Images, Capability::NoUserMessage];
            }
            router.add_route(route);
        }
        LlmClientBuilder {
            share_limits: false,
            shared_lease: DEFAULT_LEASE,
            router,
            limiter: Limiter::default(),
            breaker: CircuitBreaker::default(),
            fallbacks: HashMap::new(),
            prices: PriceTable::default(),
            retry: RetryPolicy::default(),
            default_max_tokens: 4096,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(300),
            http: None,
            error: None,
        }
    }

    /// Reads the environment:
    ///
    /// | variable | sets |
    /// | --- | --- |
    /// | `OPENAI_API_KEY`, `OPENAI_BASE_URL` | the `openai` provider |
    /// | `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL` | the `anthropic` provider |
    /// | `OLLAMA_BASE_URL` | the `ollama` provider (OpenAI-compatible URL, with `/v1`) |
    /// | `LLMJOBS_MAX_BASE_URL`, `LLMJOBS_MAX_API_KEY` | the `max` provider (the Claude proxy, OpenAI-compatible) |
    /// | `LLMJOBS_DEFAULT_PROVIDER` | the provider for models with no routed prefix |
    ///
    /// Unset or empty variables leave the setting as it was.
    pub fn with_env(self) -> Self {
        self.with_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        for (provider, url_var, key_var) in [
            ("openai", "OPENAI_BASE_URL", "OPENAI_API_KEY"),
            ("anthropic", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
            ("ollama", "OLLAMA_BASE_URL", ""),
        ] {
            if let Some(url) = var(url_var) {
                self = self.base_url(provider, url);
            }
            if let Some(key) = var(key_var) {
                self = self.api_key(provider, key);
            }
        }
        if let Some(url) = var("LLMJOBS_MAX_BASE_URL") {
            let mut max = ProviderConfig::openai_compatible("max", url);
            if let Some(key) = var("LLMJOBS_MAX_API_KEY") {
                max = max.api_key(key);
            }
            self = self.provider(max);
        }
        if let Some(name) = var("LLMJOBS_DEFAULT_PROVIDER") {
            self = self.default_provider(name);
        }
        self
    }

    /// Adds a provider, or replaces the one with the same name.
    pub fn provider(mut self, provider: ProviderConfig) -> Self {
        self.router
            .providers
            .insert(provider.name.clone(), Arc::new(provider));
        self
    }

    fn update_provider(mut self, name: &str, update: impl FnOnce(&mut ProviderConfig)) -> Self {
        match self.router.providers.get_mut(name) {
            Some(provider) => update(Arc::make_mut(provider)),
            None => {
                self.error.get_or_insert_with(|| {
                    LlmError::Config(format!("there is no provider named `{name}` to configure"))
                });
            }
        }
        self
    }

    /// Sets a provider's API key.
    pub fn api_key(self, provider: &str, key: impl Into<ApiKey>) -> Self {
        let key = key.into();
        self.update_provider(provider, |p| p.api_key = Some(key))
    }

    /// Sets a provider's base URL.
    pub fn base_url(self, provider: &str, url: impl Into<String>) -> Self {
        let url = url.into().trim_end_matches('/').to_string();
        self.update_provider(provider, |p| p.base_url = url)
    }

    /// Routes models starting with `prefix` to `provider`, without the prefix.
    pub fn route(self, prefix: impl Into<String>, provider: impl Into<String>) -> Self {
        self.add_route(Route::new(prefix, provider, true))
    }

    /// Adds a route, or replaces the one with the same prefix (with [`Route::refuses`] set,
    /// for a route that cannot take every request).
    pub fn add_route(mut self, route: Route) -> Self {
        self.router.add_route(route);
        self
    }

    /// Sets what requests on the route of `prefix` may not use; a request that needs one fails
    /// at once with [`LlmError::Unsupported`]. (The `max/` route refuses images and requests
    /// without a user message by default; pass an empty list to lift that.)
    pub fn route_refuses(mut self, prefix: &str, refuses: impl Into<Vec<Capability>>) -> Self {
        let refuses = refuses.into();
        match self.router.routes.iter_mut().find(|r| r.prefix == prefix) {
            Some(route) => route.refuses = refuses,
            None => {
                self.error.get_or_insert_with(|| {
                    LlmError::Config(format!("there is no route with the prefix `{prefix}`"))
                });
            }
        }
        self
    }

    /// Routes models starting with `prefix` to `provider`, sending the full name (for proxies
    /// such as LiteLLM or the `max/` proxy that route on it).
    pub fn route_keeping_prefix(
        self,
        prefix: impl Into<String>,
        provider: impl Into<String>,
    ) -> Self {
        self.add_route(Route::new(prefix, provider, false))
    }

    /// Sends models that match no route to `provider`, unchanged.
    pub fn default_provider(mut self, provider: impl Into<String>) -> Self {
        self.router.default_provider = Some(provider.into());
        self
    }

    /// Limits every model matching `pattern` (`*` and `?` wildcards, matched against the full
    /// name such as `openai/gpt-4o`); each matching model gets its own budget. The first
    /// matching pattern applies.
    pub fn rate_limit(mut self, pattern: impl Into<String>, limit: RateLimit) -> Self {
        self.limiter.add_model_rule(pattern.into(), limit);
        self
    }

    /// Limits a whole provider: one budget shared by all its models.
    pub fn provider_rate_limit(mut self, provider: impl Into<String>, limit: RateLimit) -> Self {
        self.limiter.add_provider_rule(provider.into(), limit);
        self
    }

    /// Keeps the rate limits ([`LlmClientBuilder::rate_limit`],
    /// [`LlmClientBuilder::provider_rate_limit`]) and the pauses after a 429 in the job
    /// database when the client is given to [`Jobs`](crate::Jobs), so every process (on
    /// PostgreSQL: every machine) sharing the database stays under them together, at one
    /// database round trip per call. Without it (the default) the limits hold per process, in
    /// memory, with no round trip: the right choice when one process is alone. A database that
    /// only one process can open (an in-memory SQLite database) keeps them in memory too.
    pub fn shared_limits(mut self) -> Self {
        self.share_limits = true;
        self
    }

    /// How long a shared reservation holds unless renewed (default 30 s; at least 1 s). A call
    /// renews its own every third of it while it runs; the places held by a process that died
    /// come back after it.
    pub fn shared_limits_lease(mut self, lease: Duration) -> Self {
        self.shared_lease = lease.max(Duration::from_secs(1));
        self
    }

    /// Sets the price of models matching `pattern` (first match wins).
    pub fn price(mut self, pattern: impl Into<String>, price: Price) -> Self {
        self.prices.set(pattern.into(), price);
        self
    }

    /// Sets when a provider's circuit opens, for every provider (see [`CircuitBreaker`]).
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// While `provider`'s circuit is open, sends its calls to `fallback` (with the same model
    /// name) instead of failing them.
    pub fn fallback(mut self, provider: impl Into<String>, fallback: impl Into<String>) -> Self {
        self.fallbacks.insert(provider.into(), fallback.into());
        self
    }

    /// Sets the retry policy for HTTP tries.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The longest one provider call may take, streamed or not, from sending the request to
    /// its last byte (default 10 minutes). Streams also end after
    /// [`LlmClientBuilder::stream_idle_timeout`] without data.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest a stream may go without data (default 5 minutes).
    pub fn stream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.stream_idle_timeout = timeout;
        self
    }

    /// The longest to wait for a connection (default 10 s; ignored with
    /// [`LlmClientBuilder::http_client`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The `max_tokens` sent to Anthropic when a request sets none (it is required there;
    /// default 4096).
    pub fn default_max_tokens(mut self, max_tokens: u32) -> Self {
        self.default_max_tokens = max_tokens;
        self
    }

    /// Uses this HTTP client (for proxies, custom TLS roots, …).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Builds the client, checking the configuration.
    pub fn build(self) -> Result<LlmClient, LlmError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        self.router.check()?;
        for (provider, fallback) in &self.fallbacks {
            for name in [provider, fallback] {
                if !self.router.providers.contains_key(name) {
                    return Err(LlmError::Config(format!(
                        "the fallback from `{provider}` to `{fallback}` names `{name}`, which is \
                         not a configured provider"
                    )));
                }
            }
        }
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                .user_agent(concat!("llmjobs/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?,
        };
        Ok(LlmClient {
            limits: permit::Limits::Local,
            inner: Arc::new(Inner {
                share_limits: self.share_limits,
                shared_lease: self.shared_lease,
                http,
                router: self.router,
                limiter: self.limiter,
                breakers: Breakers::new(self.breaker),
                fallbacks: self.fallbacks,
                prices: self.prices,
                retry: self.retry,
                default_max_tokens: self.default_max_tokens,
                timeout: self.timeout,
                stream_idle_timeout: self.stream_idle_timeout,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_environment_configures_providers() {
        let vars: HashMap<&str, &str> = [
            ("OPENAI_API_KEY", "sk-test"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
            ("LLMJOBS_MAX_BASE_URL", "http://127.0.0.1:3010/v1"),
        ]
        .into();
        let client = LlmClientBuilder::new()
            .with_vars(|k| vars.get(k).map(|v| v.to_string()))
            .build()
            .unwrap();
        let openai = &client.inner.router.providers["openai"];
        assert_eq!(openai.base_url, "http://127.0.0.1:9/v1");
        assert_eq!(openai.api_key.as_ref().unwrap().expose(), "sk-test");
        assert_eq!(client.provider_for("max/agent").unwrap(), "max");
        assert!(!format!("{client:?}").contains("sk-test"));
    }

    #[test]
    fn configuring_an_unknown_provider_fails_the_build() {
        let err = LlmClient::builder()
            .api_key("nope", "k")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("nope"));
    }

    #[tokio::test]
    async fn a_missing_required_key_fails_before_sending() {
        let client = LlmClient::builder().build().unwrap();
        let err = client
            .chat(&ChatRequest::new("openai/gpt-4o").user("hi"))
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::MissingApiKey { .. }), "{err}");
        assert!(err.to_string().contains("OPENAI_API_KEY"));
    }

    #[tokio::test]
    async fn meta_task_models_answer_with_the_given_text() {
        let client = LlmClient::builder().build().unwrap();
        let req = ChatRequest::new("meta-task/check").assistant("Some output.");
        let answer = client.chat(&req).await.unwrap();
        assert_eq!(answer.text, "Some output.");
        assert_eq!(answer.provider, "meta-task");
    }
}
