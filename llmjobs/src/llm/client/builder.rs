//! [`LlmClientBuilder`]: the standard providers and routes, the environment, and every
//! setting of a client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Inner, LlmClient, permit};
use crate::llm::breaker::Breakers;
use crate::llm::limits::Limiter;
use crate::llm::pricing::PriceTable;
use crate::llm::router::{Capability, ProviderConfig, ProviderKind, Route, Router};
use crate::llm::shared::DEFAULT_LEASE;
use crate::llm::{ApiKey, CircuitBreaker, LlmError, Price, RateLimit, RetryPolicy};

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

    pub(super) fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
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
