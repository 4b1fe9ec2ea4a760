//! Wire formats: request bodies, responses, stream events and error bodies of each provider.

mod anthropic;
pub(crate) mod command;
mod openai;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::error::{excerpt, is_context_length_message};
use super::router::{ProviderConfig, ProviderKind};
use super::stream::SseEvent;
use super::{ChatRequest, FinishReason, LlmError, Usage};

/// Who is being called, for error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallCtx<'a> {
    pub(crate) provider: &'a str,
    /// The model as requested (with its routing prefix).
    pub(crate) model: &'a str,
}

impl CallCtx<'_> {
    pub(crate) fn invalid_response(&self, reason: impl Into<String>, body: &str) -> LlmError {
        LlmError::InvalidResponse {
            provider: self.provider.to_string(),
            model: self.model.to_string(),
            reason: reason.into(),
            body: excerpt(body),
        }
    }

    pub(crate) fn stream_error(&self, reason: impl Into<String>, retryable: bool) -> LlmError {
        LlmError::Stream {
            provider: self.provider.to_string(),
            model: self.model.to_string(),
            reason: reason.into(),
            retryable,
        }
    }

    pub(crate) fn invalid_request(&self, reason: impl Into<String>) -> LlmError {
        LlmError::InvalidRequest {
            model: self.model.to_string(),
            reason: reason.into(),
        }
    }

    /// An error object the provider sent inside a 2xx body or a stream.
    fn provider_error(&self, error: &Value, retryable: bool) -> LlmError {
        let message = error_message(error).unwrap_or_else(|| excerpt(&error.to_string()));
        if is_context_length_message(&message) {
            return LlmError::ContextLength {
                provider: self.provider.to_string(),
                model: self.model.to_string(),
                message,
            };
        }
        self.stream_error(
            format!("the provider reported an error: {message}"),
            retryable,
        )
    }
}

/// What a provider's answer amounts to, before usage and cost are settled.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) text: String,
    pub(crate) model: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) usage: Option<Usage>,
    pub(crate) finish_reason: Option<FinishReason>,
    pub(crate) tool_calls: Vec<Value>,
}

/// The URL requests to `provider` go to.
pub(crate) fn endpoint(provider: &ProviderConfig) -> String {
    match provider.kind {
        ProviderKind::Anthropic => format!("{}/v1/messages", provider.base_url),
        _ => format!("{}/chat/completions", provider.base_url),
    }
}

/// The authentication and extra headers of `provider`; keys are marked sensitive.
pub(crate) fn headers(provider: &ProviderConfig) -> Result<HeaderMap, LlmError> {
    let config_error = |what: &str| {
        LlmError::Config(format!(
            "provider `{}` has an invalid {what}",
            provider.name
        ))
    };
    let mut map = HeaderMap::new();
    if let Some(key) = &provider.api_key {
        let (name, value) = match provider.kind {
            ProviderKind::Anthropic => ("x-api-key", key.expose().to_string()),
            _ => ("authorization", format!("Bearer {}", key.expose())),
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| config_error("API key"))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    if provider.kind == ProviderKind::Anthropic {
        map.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
    }
    for (name, value) in &provider.headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| config_error("header name"))?;
        let mut value = HeaderValue::from_str(value).map_err(|_| config_error("header value"))?;
        // Extra headers often carry credentials (a proxy's key, an organisation token).
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
}

/// The JSON body of a request.
pub(crate) fn build_body(
    provider: &ProviderConfig,
    ctx: CallCtx<'_>,
    wire_model: &str,
    req: &ChatRequest,
    stream: bool,
    default_max_tokens: u32,
) -> Result<Value, LlmError> {
    let mut body = match provider.kind {
        ProviderKind::Anthropic => {
            anthropic::body(ctx, wire_model, req, stream, default_max_tokens)?
        }
        _ => openai::body(wire_model, req, stream, provider.stream_usage),
    };
    if let Value::Object(map) = &mut body {
        // `${VAR}` references are expanded here, at send time, so stored requests never hold
        // the secrets they name.
        let expand = |value: &Value| {
            super::secrets::expand_env(value).map_err(|reason| ctx.invalid_request(reason))
        };
        if let Some(mcp) = &req.mcp_config {
            map.insert("mcp_config".into(), expand(mcp)?);
        }
        for (key, value) in &req.provider_options {
            map.insert(key.clone(), expand(value)?);
        }
    }
    Ok(body)
}

/// Parses a complete (non-streamed) 2xx body.
pub(crate) fn parse_body(
    kind: ProviderKind,
    ctx: CallCtx<'_>,
    body: &[u8],
) -> Result<Parsed, LlmError> {
    let text = String::from_utf8_lossy(body);
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ctx.invalid_response(format!("the body is not valid JSON ({e})"), &text))?;
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        return Err(ctx.provider_error(error, true));
    }
    match kind {
        ProviderKind::Anthropic => anthropic::parse(ctx, &value, &text),
        _ => openai::parse(ctx, &value, &text),
    }
}

/// The state of a streamed answer being assembled.
#[derive(Debug)]
pub(crate) enum StreamState {
    OpenAi(openai::StreamState),
    Anthropic(anthropic::StreamState),
}

impl StreamState {
    pub(crate) fn new(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Anthropic => StreamState::Anthropic(Default::default()),
            _ => StreamState::OpenAi(Default::default()),
        }
    }

    /// Takes one event; returns the new answer text it carried, if any.
    pub(crate) fn on_event(
        &mut self,
        ctx: CallCtx<'_>,
        event: SseEvent,
    ) -> Result<Option<String>, LlmError> {
        match self {
            StreamState::OpenAi(s) => s.on_event(ctx, event),
            StreamState::Anthropic(s) => s.on_event(ctx, event),
        }
    }

    /// Whether the provider has said the answer is complete; later bytes are ignored.
    pub(crate) fn is_done(&self) -> bool {
        match self {
            StreamState::OpenAi(s) => s.done,
            StreamState::Anthropic(s) => s.done,
        }
    }

    /// Tokens the provider has reported so far: `(input, output)`.
    pub(crate) fn reported_tokens(&self) -> (Option<u64>, Option<u64>) {
        let usage = match self {
            StreamState::OpenAi(s) => s.parsed.usage,
            StreamState::Anthropic(s) => s.parsed.usage,
        };
        match self {
            StreamState::Anthropic(s) => s.tokens_so_far(),
            StreamState::OpenAi(_) => (
                usage.map(|u| u.input_tokens),
                usage.map(|u| u.output_tokens),
            ),
        }
    }

    /// The assembled answer, or an error if the stream ended before the provider's final event.
    pub(crate) fn finish(self, ctx: CallCtx<'_>) -> Result<Parsed, LlmError> {
        match self {
            StreamState::OpenAi(s) => s.finish(ctx),
            StreamState::Anthropic(s) => s.finish(ctx),
        }
    }
}

/// The error for a non-2xx answer.
pub(crate) fn http_error(
    ctx: CallCtx<'_>,
    status: u16,
    retry_after: Option<std::time::Duration>,
    body: &str,
) -> LlmError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| error_message(&v))
        .unwrap_or_else(|| {
            let body = excerpt(body);
            if body.is_empty() {
                "(empty body)".to_string()
            } else {
                body
            }
        });
    if matches!(status, 400 | 413 | 422) && is_context_length_message(&message) {
        return LlmError::ContextLength {
            provider: ctx.provider.to_string(),
            model: ctx.model.to_string(),
            message,
        };
    }
    LlmError::Http {
        provider: ctx.provider.to_string(),
        model: ctx.model.to_string(),
        status,
        message,
        retry_after,
    }
}

/// The message of an error body: OpenAI's and Anthropic's `{"error": {"message"}}`, a bare
/// `{"error": "…"}`, or a proxy's `{"message"}` / `{"detail"}`.
fn error_message(v: &Value) -> Option<String> {
    let error = v.get("error").unwrap_or(v);
    let message = match error {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => ["message", "detail"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_string))
            .map(|m| {
                match map
                    .get("type")
                    .or_else(|| map.get("code"))
                    .and_then(Value::as_str)
                {
                    Some(kind) if !m.contains(kind) => format!("{m} ({kind})"),
                    _ => m,
                }
            }),
        _ => None,
    }?;
    Some(excerpt(&message))
}

/// The text of a content value that is a string or a list of `{"type": "text"}` parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CTX: CallCtx<'static> = CallCtx {
        provider: "openai",
        model: "openai/gpt",
    };

    #[test]
    fn error_bodies_yield_their_message() {
        let body = r#"{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}"#;
        let err = http_error(CTX, 401, None, body).to_string();
        assert_eq!(
            err,
            "HTTP 401 from openai (model `openai/gpt`): Incorrect API key provided (invalid_request_error)"
        );
        let err = http_error(CTX, 502, None, "<html>bad gateway</html>").to_string();
        assert!(err.ends_with("<html>bad gateway</html>"));
    }

    #[test]
    fn context_length_errors_are_permanent() {
        let body = json!({"error": {"message": "This model's maximum context length is 4097 tokens", "code": "context_length_exceeded"}});
        let err = http_error(CTX, 400, None, &body.to_string());
        assert!(matches!(err, LlmError::ContextLength { .. }));
        assert!(!err.is_retryable());
    }

    #[test]
    fn malformed_json_is_an_invalid_response() {
        let err = parse_body(ProviderKind::OpenAiCompatible, CTX, b"{\"choices\": [").unwrap_err();
        assert!(matches!(err, LlmError::InvalidResponse { .. }));
        assert!(err.is_retryable());
    }

    #[test]
    fn reasoning_models_take_max_completion_tokens() {
        let provider = ProviderConfig::openai_compatible("openai", "http://x/v1");
        let req = ChatRequest::new("openai/o3-mini").user("hi").max_tokens(50);
        for (model, field) in [
            ("o1", "max_completion_tokens"),
            ("o3-mini", "max_completion_tokens"),
            ("o4-mini-2025-04-16", "max_completion_tokens"),
            ("gpt-5", "max_completion_tokens"),
            ("gpt-5.1", "max_completion_tokens"),
            ("gpt-4o", "max_tokens"),
            ("o1x", "max_tokens"),
        ] {
            let body = build_body(&provider, CTX, model, &req, false, 1024).unwrap();
            assert_eq!(body[field], 50, "{model}");
            let other = if field == "max_tokens" {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            assert!(body.get(other).is_none(), "{model}");
        }
    }

    #[test]
    fn provider_options_are_merged_into_the_body() {
        let provider = ProviderConfig::openai_compatible("openai", "http://x/v1");
        let req = ChatRequest::new("openai/gpt")
            .user("hi")
            .provider_option("seed", json!(7));
        let body = build_body(&provider, CTX, "gpt", &req, false, 1024).unwrap();
        assert_eq!(body["seed"], 7);
        assert_eq!(body["model"], "gpt");
    }

    #[test]
    fn api_keys_are_sensitive_headers() {
        let provider = ProviderConfig::anthropic("anthropic", "http://x").api_key("sk-ant");
        let headers = headers(&provider).unwrap();
        assert!(headers["x-api-key"].is_sensitive());
        let provider = ProviderConfig::openai_compatible("proxy", "http://x/v1")
            .header("x-proxy-token", "secret-token");
        assert!(super::headers(&provider).unwrap()["x-proxy-token"].is_sensitive());
        assert_eq!(headers["anthropic-version"], "2023-06-01");
    }
}
