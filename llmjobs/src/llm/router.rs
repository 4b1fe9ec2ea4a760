//! Providers and model-prefix routing: which base URL, key and wire format a model goes to.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::{ChatRequest, CommandSpec, Content, ContentPart, LlmError, Role};

/// The wire format a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderKind {
    /// OpenAI's chat completions (`POST {base_url}/chat/completions`): OpenAI, Ollama, vLLM,
    /// LM Studio, OpenRouter, a LiteLLM proxy, the original Claude proxy.
    OpenAiCompatible,
    /// Anthropic's messages API (`POST {base_url}/v1/messages`).
    Anthropic,
    /// No model at all: the answer is the request's last assistant message. This is how the
    /// original system's `meta-task/…` configs run validators over a text they already have.
    Given,
    /// A command run once per call, speaking JSON lines on stdin and stdout (see
    /// [`CommandSpec`] and [`ProviderConfig::command`]): how a CLI such as the Claude CLI is
    /// driven directly, instead of through a proxy.
    Command,
}

/// An API key. Never printed by `Debug`, never serialized, sent only as a sensitive header.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        ApiKey(key)
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        ApiKey(key.to_string())
    }
}

/// One provider: a name, a wire format, a base URL, and how to authenticate.
///
/// `Debug` prints the names of the extra headers, never their values.
#[derive(Clone)]
#[non_exhaustive]
pub struct ProviderConfig {
    /// The provider's name, used by routes, limits and in [`super::ChatResponse::provider`].
    pub name: String,
    /// The wire format.
    pub kind: ProviderKind,
    /// The base URL. For OpenAI-compatible providers it includes the version segment
    /// (`https://api.openai.com/v1`, `http://localhost:11434/v1`); for Anthropic it does not
    /// (`https://api.anthropic.com`), following each vendor's SDK convention.
    pub base_url: String,
    /// The API key, if the provider needs one.
    pub api_key: Option<ApiKey>,
    /// When set, calls fail with [`LlmError::MissingApiKey`] (with this hint) if no key is set,
    /// instead of being sent and refused.
    pub key_hint: Option<String>,
    /// Extra headers sent with every request (`OpenAI-Organization`, `HTTP-Referer`, …).
    pub headers: Vec<(String, String)>,
    /// Whether to ask an OpenAI-compatible server for usage in streams
    /// (`stream_options.include_usage`). On by default; turn off for servers that reject it.
    pub stream_usage: bool,
    /// What a [`ProviderKind::Command`] provider runs.
    pub command: Option<CommandSpec>,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, _)| (name.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("key_hint", &self.key_hint)
            .field("headers", &headers)
            .field("stream_usage", &self.stream_usage)
            .field("command", &self.command)
            .finish()
    }
}

impl ProviderConfig {
    /// A provider with the given wire format.
    pub fn new(name: impl Into<String>, kind: ProviderKind, base_url: impl Into<String>) -> Self {
        ProviderConfig {
            name: name.into(),
            kind,
            base_url: base_url.into().trim_end_matches('/').to_string(),
            api_key: None,
            key_hint: None,
            headers: Vec::new(),
            stream_usage: true,
            command: None,
        }
    }

    /// An OpenAI-compatible provider; `base_url` includes the version segment (`…/v1`).
    pub fn openai_compatible(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        ProviderConfig::new(name, ProviderKind::OpenAiCompatible, base_url)
    }

    /// A provider that runs `command` for each call (see [`CommandSpec`] for the protocol).
    ///
    /// ```
    /// use llmjobs::llm::{CommandSpec, LlmClient, ProviderConfig};
    ///
    /// let client = LlmClient::builder()
    ///     .provider(ProviderConfig::command(
    ///         "max",
    ///         CommandSpec::new("/usr/local/bin/claude-bridge").arg("--json"),
    ///     ))
    ///     .build()?;
    /// # let _ = client;
    /// # Ok::<(), llmjobs::llm::LlmError>(())
    /// ```
    pub fn command(name: impl Into<String>, command: CommandSpec) -> Self {
        let mut provider = ProviderConfig::new(name, ProviderKind::Command, "");
        provider.command = Some(command);
        provider
    }

    /// An Anthropic messages provider; `base_url` excludes the version segment.
    pub fn anthropic(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        ProviderConfig::new(name, ProviderKind::Anthropic, base_url)
    }

    /// Sets the API key.
    pub fn api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Requires a key: without one, calls fail early with this hint.
    pub fn require_api_key(mut self, hint: impl Into<String>) -> Self {
        self.key_hint = Some(hint.into());
        self
    }

    /// Adds a header sent with every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Whether to ask for usage in OpenAI-compatible streams.
    pub fn stream_usage(mut self, on: bool) -> Self {
        self.stream_usage = on;
        self
    }
}

/// A routing rule: models starting with `prefix` go to `provider`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Route {
    /// The model-name prefix, such as `openai/`.
    pub prefix: String,
    /// The provider's name.
    pub provider: String,
    /// Whether the prefix is removed from the model name before sending.
    pub strip_prefix: bool,
    /// What requests on this route may not use (the Claude proxy takes no images). A request
    /// that uses one fails at once with [`LlmError::Unsupported`], without a network call.
    pub refuses: Vec<Capability>,
}

impl Route {
    /// A route from `prefix` to `provider`, which accepts every request.
    pub fn new(prefix: impl Into<String>, provider: impl Into<String>, strip_prefix: bool) -> Self {
        Route {
            prefix: prefix.into(),
            provider: provider.into(),
            strip_prefix,
            refuses: Vec::new(),
        }
    }

    /// The first capability `req` needs that this route refuses, if any.
    pub fn refused_by(&self, req: &ChatRequest) -> Option<Capability> {
        self.refuses.iter().copied().find(|c| c.is_used_by(req))
    }
}

/// Something a request may need that not every route accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Capability {
    /// Image parts in a message.
    Images,
    /// A conversation with no user message (a system prompt alone, or only assistant text).
    NoUserMessage,
}

impl Capability {
    /// Whether `req` needs this capability.
    pub fn is_used_by(&self, req: &ChatRequest) -> bool {
        match self {
            Capability::Images => req.messages.iter().any(|m| match &m.content {
                Content::Parts(parts) => parts
                    .iter()
                    .any(|p| matches!(p, ContentPart::ImageUrl { .. })),
                Content::Text(_) => false,
            }),
            Capability::NoUserMessage => !req.messages.iter().any(|m| m.role == Role::User),
        }
    }

    /// What the capability is, for error messages: `images`, `a request without a user
    /// message`.
    pub fn describe(&self) -> &'static str {
        match self {
            Capability::Images => "images",
            Capability::NoUserMessage => "a request without a user message",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Where one model goes.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// The route it matched (`None`: the default provider).
    pub(crate) route: Option<Route>,
    pub(crate) provider: Arc<ProviderConfig>,
    /// The model name as sent to the provider.
    pub(crate) wire_model: String,
}

/// The providers and routes of a client.
#[derive(Clone, Debug, Default)]
pub(crate) struct Router {
    pub(crate) providers: HashMap<String, Arc<ProviderConfig>>,
    /// Longest prefix first.
    pub(crate) routes: Vec<Route>,
    pub(crate) default_provider: Option<String>,
}

impl Router {
    pub(crate) fn add_route(&mut self, route: Route) {
        self.routes.retain(|r| r.prefix != route.prefix);
        self.routes.push(route);
        self.routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(a.prefix.cmp(&b.prefix))
        });
    }

    /// Checks that the default provider exists and that every base URL parses. (Routes to a
    /// provider that is not configured, such as `max/` without `LLMJOBS_MAX_BASE_URL`, fail
    /// when a call uses them, with a message saying how to configure it.)
    pub(crate) fn check(&self) -> Result<(), LlmError> {
        if let Some(name) = &self.default_provider
            && !self.providers.contains_key(name)
        {
            return Err(LlmError::Config(format!(
                "the default provider `{name}` is not configured"
            )));
        }
        for p in self.providers.values() {
            if p.kind == ProviderKind::Command && p.command.is_none() {
                return Err(LlmError::Config(format!(
                    "provider `{}` is a command provider without a command: use \
                     ProviderConfig::command",
                    p.name
                )));
            }
            if !matches!(p.kind, ProviderKind::Given | ProviderKind::Command) {
                reqwest::Url::parse(&p.base_url).map_err(|e| {
                    LlmError::Config(format!(
                        "provider `{}` has an invalid base URL `{}`: {e}",
                        p.name, p.base_url
                    ))
                })?;
            }
        }
        Ok(())
    }

    pub(crate) fn resolve(&self, model: &str) -> Result<Resolved, LlmError> {
        let route = self.routes.iter().find(|r| model.starts_with(&r.prefix));
        let (provider_name, wire_model) = match route {
            Some(route) => {
                let wire = if route.strip_prefix {
                    &model[route.prefix.len()..]
                } else {
                    model
                };
                (route.provider.as_str(), wire)
            }
            None => match &self.default_provider {
                Some(name) => (name.as_str(), model),
                None => {
                    let known = self
                        .routes
                        .iter()
                        .map(|r| r.prefix.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(LlmError::UnknownProvider {
                        model: model.to_string(),
                        known,
                    });
                }
            },
        };
        let provider = self.providers.get(provider_name).ok_or_else(|| {
            LlmError::Config(format!(
                "model `{model}` routes to provider `{provider_name}`, which is not configured{}",
                if provider_name == "max" {
                    " (set LLMJOBS_MAX_BASE_URL, or add it with LlmClientBuilder::provider)"
                } else {
                    " (add it with LlmClientBuilder::provider)"
                }
            ))
        })?;
        if wire_model.is_empty() {
            return Err(LlmError::InvalidRequest {
                model: model.to_string(),
                reason: "the model name is empty after its routing prefix".into(),
            });
        }
        Ok(Resolved {
            route: route.cloned(),
            provider: provider.clone(),
            wire_model: wire_model.to_string(),
        })
    }
}

/// Glob match: `*` matches any run of characters (including `/`), `?` exactly one.
pub(crate) fn matches_pattern(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_redacts_extra_header_values() {
        let provider = super::ProviderConfig::openai_compatible("proxy", "http://x/v1")
            .header("x-proxy-token", "secret-token");
        let printed = format!("{provider:?}");
        assert!(printed.contains("x-proxy-token"), "{printed}");
        assert!(!printed.contains("secret-token"), "{printed}");
    }

    use super::*;

    fn router() -> Router {
        let mut r = Router::default();
        for p in [
            ProviderConfig::openai_compatible("openai", "https://api.openai.com/v1/"),
            ProviderConfig::openai_compatible("max", "http://localhost:3010/v1"),
        ] {
            r.providers.insert(p.name.clone(), Arc::new(p));
        }
        r.add_route(Route::new("openai/", "openai", true));
        r.add_route(Route::new("max/", "max", false));
        r
    }

    #[test]
    fn prefixes_are_stripped_or_kept_per_route() {
        let r = router();
        let openai = r.resolve("openai/gpt-4o-mini").unwrap();
        assert_eq!(openai.provider.name, "openai");
        assert_eq!(openai.provider.base_url, "https://api.openai.com/v1");
        assert_eq!(openai.wire_model, "gpt-4o-mini");
        assert_eq!(
            r.resolve("max/code_agent").unwrap().wire_model,
            "max/code_agent"
        );
    }

    #[test]
    fn unrouted_models_need_a_default_provider() {
        let mut r = router();
        let err = r.resolve("vertex_ai/gemini").unwrap_err().to_string();
        assert!(
            err.contains("openai/") && err.contains("vertex_ai/gemini"),
            "{err}"
        );
        r.default_provider = Some("openai".into());
        assert_eq!(r.resolve("gpt-4o").unwrap().wire_model, "gpt-4o");
    }

    #[test]
    fn api_keys_never_show_in_debug_output() {
        let p = ProviderConfig::openai_compatible("openai", "https://x").api_key("sk-secret");
        assert!(!format!("{p:?}").contains("sk-secret"));
    }

    #[test]
    fn a_route_names_the_first_capability_it_refuses() {
        let mut route = Route::new("max/", "max", false);
        route.refuses = vec![Capability::Images, Capability::NoUserMessage];
        let image = ChatRequest::new("max/eye").user(vec![
            ContentPart::text("what is this?"),
            ContentPart::image_url("https://x/y.png"),
        ]);
        assert_eq!(route.refused_by(&image), Some(Capability::Images));
        let system_only = ChatRequest::new("max/x").message(crate::llm::Message::system("OK"));
        assert_eq!(
            route.refused_by(&system_only),
            Some(Capability::NoUserMessage)
        );
        assert_eq!(
            route.refused_by(&ChatRequest::new("max/x").user("hi")),
            None
        );
    }

    #[test]
    fn glob_patterns() {
        assert!(matches_pattern("max/*", "max/text-generation"));
        assert!(matches_pattern("*", ""));
        assert!(matches_pattern("openai/gpt-4?", "openai/gpt-4o"));
        assert!(matches_pattern(
            "*/claude-*-latest",
            "anthropic/claude-3-5-sonnet-latest"
        ));
        assert!(!matches_pattern("max/*", "openai/max"));
        assert!(!matches_pattern("gpt", "gpt-4"));
    }
}
