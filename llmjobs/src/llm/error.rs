//! [`LlmError`]: what can go wrong when calling a model, and how each failure is retried.

use std::time::Duration;

use super::{Capability, ChatResponse};

/// How many characters of a provider's error body an [`LlmError`] keeps.
const BODY_EXCERPT_CHARS: usize = 500;

/// Everything that can go wrong when calling a model.
///
/// Each error knows whether a retry can help ([`LlmError::is_retryable`]) and, for rate limits,
/// how long to wait first ([`LlmError::retry_after`]). In a job, [`LlmError::into_job_error`]
/// turns it into a [`JobError`](crate::JobError) of the matching
/// [`ErrorKind`](crate::ErrorKind).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The client configuration is invalid (a malformed base URL, a route to an unknown provider).
    #[error("invalid LLM client configuration: {0}")]
    Config(String),
    /// The limits shared through the job database could not be read or written (the database
    /// is unreachable, or shutting down). Retryable.
    #[error("the shared rate limits are unavailable: {0}")]
    SharedLimits(String),
    /// No configured route matches the model name.
    #[error(
        "no provider is configured for model `{model}` (known prefixes: {known}); add a route \
         or a default provider"
    )]
    UnknownProvider {
        /// The model name as requested.
        model: String,
        /// The prefixes that are routed, comma-separated.
        known: String,
    },
    /// The provider needs an API key and none was configured.
    #[error("provider `{provider}` needs an API key: {hint}")]
    MissingApiKey {
        /// The provider's name.
        provider: String,
        /// Where the key is usually configured (an environment variable, a builder method).
        hint: String,
    },
    /// The request cannot be sent as it is (no messages, a field the provider cannot express).
    #[error("invalid request for model `{model}`: {reason}")]
    InvalidRequest {
        /// The model name as requested.
        model: String,
        /// What is wrong with the request.
        reason: String,
    },
    /// The route the model goes to cannot take what the request needs (images on the Claude
    /// proxy): refused before any network call, and never retried.
    #[error(
        "route `{route}` (provider `{provider}`) does not accept {capability}, which the \
         request for model `{model}` needs"
    )]
    Unsupported {
        /// The route's prefix.
        route: String,
        /// The provider the route goes to.
        provider: String,
        /// The model name as requested.
        model: String,
        /// What the route does not accept.
        capability: Capability,
    },
    /// The provider's circuit breaker is open after repeated failures: the call was not sent.
    #[error(
        "circuit open for provider `{provider}` (model `{model}`) after repeated failures: not \
         sent; next try in {retry_after:?}"
    )]
    CircuitOpen {
        /// The provider's name.
        provider: String,
        /// The model name as requested.
        model: String,
        /// How long until the circuit lets a probe through.
        retry_after: Duration,
    },
    /// The request could not be delivered or the response could not be read (connection refused
    /// or reset, DNS failure, a body cut off mid-way).
    #[error("transport error calling {provider} (model `{model}`): {reason}")]
    Transport {
        /// The provider's name.
        provider: String,
        /// The model name as requested.
        model: String,
        /// What happened, with the underlying causes (`error sending request: … connection
        /// closed before message completed`).
        reason: String,
        /// The underlying HTTP client error.
        #[source]
        source: reqwest::Error,
    },
    /// The provider did not answer within the configured timeout.
    #[error("{provider} (model `{model}`) did not answer within {after:?}")]
    Timeout {
        /// The provider's name.
        provider: String,
        /// The model name as requested.
        model: String,
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The provider answered with an HTTP error status.
    #[error("HTTP {status} from {provider} (model `{model}`): {message}")]
    Http {
        /// The provider's name.
        provider: String,
        /// The model name as requested.
        model: String,
        /// The HTTP status code.
        status: u16,
        /// The provider's error message, or an excerpt of the response body.
        message: String,
        /// How long the provider asked us to wait (`Retry-After`, `x-ratelimit-reset-*`).
        retry_after: Option<Duration>,
    },
    /// The prompt and the requested output do not fit in the model's context window.
    #[error("context length exceeded for {provider} (model `{model}`): {message}")]
    ContextLength {
        /// The provider's name.
        provider: String,
        /// The model name as requested.
        model: String,
        /// The provider's error message.
        message: String,
    },
    /// The provider answered 2xx, but the body is not a response this client understands
    /// (malformed JSON, no choices, an error object in place of a completion).
    #[error("invalid response from {provider} (model `{model}`): {reason}; body: {body}")]
    InvalidResponse {
        /// The provider's name.
        provider: String,
        /// The model name as requested.
        model: String,
        /// What is wrong with the response.
        reason: String,
        /// An excerpt of the response body.
        body: String,
    },
    /// A streamed response broke off or carried an error event.
    #[error("stream from {provider} (model `{model}`) failed: {reason}")]
    Stream {
        /// The provider's name.
        provider: String,
        /// The model name as requested.
        model: String,
        /// What went wrong.
        reason: String,
        /// Whether the provider reported an overload or rate limit, which a retry can outlast.
        retryable: bool,
    },
    /// A command-line provider's command failed: it could not start, exited non-zero, ended
    /// without an answer, or reported an error event.
    #[error("command provider `{provider}` (model `{model}`) failed: {reason}{}",
        if .stderr.is_empty() { String::new() } else { format!("; stderr: {}", .stderr) })]
    Command {
        /// The provider's name.
        provider: String,
        /// The model name as requested.
        model: String,
        /// What went wrong (the exit status, the command's own error message).
        reason: String,
        /// The tail of the command's stderr (empty when it wrote none).
        stderr: String,
        /// Whether a retry can help (false only when the command's error event said so).
        retryable: bool,
    },
    /// A budget would be exceeded by this call, so it was not sent (see
    /// [`Budget`](crate::Budget)).
    #[error(
        "{budget} would be exceeded by a call to model `{model}`, so it was not sent: {spent} \
         spent so far, and the call could cost up to {call}"
    )]
    BudgetExceeded {
        /// The model name as requested.
        model: String,
        /// Which budget, and its limit (`the job's budget of $0.50`).
        budget: String,
        /// What was spent against it so far (`$0.4812, 20,310 tokens`).
        spent: String,
        /// The estimate of what the call could cost (`$0.0210, 1,124 tokens`).
        call: String,
    },
    /// Every try of a retryable failure failed; the last error is kept as the source.
    #[error("gave up after {tries} tries: {last}")]
    RetriesExhausted {
        /// How many HTTP tries were made.
        tries: u32,
        /// The error of the last try.
        #[source]
        last: Box<LlmError>,
    },
    /// The model answered, but the answer never passed validation within the allowed attempts:
    /// a person should look at it.
    #[error("answer from model `{model}` still fails validation after {attempts} attempts: {}",
        .feedback.join("; "))]
    NeedsReview {
        /// The model name as requested.
        model: String,
        /// How many answers were produced and checked.
        attempts: u32,
        /// The last answer (with usage and cost totals over every attempt).
        answer: Box<ChatResponse>,
        /// What the failing validators said about the last answer.
        feedback: Vec<String>,
    },
}

impl LlmError {
    /// Whether retrying the same request may succeed (transport errors, timeouts, 408, 409,
    /// 429, 5xx, 529, malformed or truncated responses).
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Transport { source, .. } => !source.is_builder(),
            LlmError::Timeout { .. }
            | LlmError::SharedLimits(_)
            | LlmError::InvalidResponse { .. }
            | LlmError::CircuitOpen { .. } => true,
            LlmError::Http { status, .. } => is_retryable_status(*status),
            LlmError::Stream { retryable, .. } | LlmError::Command { retryable, .. } => *retryable,
            LlmError::RetriesExhausted { .. } => true,
            LlmError::Config(_)
            | LlmError::UnknownProvider { .. }
            | LlmError::MissingApiKey { .. }
            | LlmError::InvalidRequest { .. }
            | LlmError::Unsupported { .. }
            | LlmError::ContextLength { .. }
            | LlmError::BudgetExceeded { .. }
            | LlmError::NeedsReview { .. } => false,
        }
    }

    /// How long the provider asked callers to wait before the next request, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Http { retry_after, .. } => *retry_after,
            LlmError::CircuitOpen { retry_after, .. } => Some(*retry_after),
            LlmError::RetriesExhausted { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// The HTTP status the provider answered with, for HTTP errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            LlmError::Http { status, .. } => Some(*status),
            LlmError::RetriesExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// Whether the provider refused the request because of a rate limit (HTTP 429).
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(429)
    }

    /// Whether this is [`LlmError::NeedsReview`]: the job should end as "needs human review".
    pub fn needs_review(&self) -> bool {
        matches!(self, LlmError::NeedsReview { .. })
    }
}

/// An error and its causes as one line, skipping causes that repeat the previous message.
pub(crate) fn describe_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cause = c.source();
    }
    parts.join(": ")
}

/// Whether an HTTP status is worth retrying: 408, 409, 429 and every 5xx (including
/// Anthropic's 529 "overloaded").
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || (500..=599).contains(&status)
}

/// Whether a provider's error message says the prompt is too long for the model.
pub(crate) fn is_context_length_message(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "context_length_exceeded",
        "context length",
        "context window",
        "maximum context",
        "prompt is too long",
        "too many tokens",
        "input is too long",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// The first [`BODY_EXCERPT_CHARS`] characters of a body, for error messages.
pub(crate) fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(BODY_EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &body[..end]),
        None => body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, retry_after: Option<Duration>) -> LlmError {
        LlmError::Http {
            provider: "openai".into(),
            model: "gpt".into(),
            status,
            message: "nope".into(),
            retry_after,
        }
    }

    #[test]
    fn statuses_are_classified() {
        for status in [408, 409, 429, 500, 502, 503, 529] {
            assert!(http(status, None).is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 422] {
            assert!(!http(status, None).is_retryable(), "{status}");
        }
    }

    #[test]
    fn context_length_messages_are_recognised() {
        assert!(is_context_length_message(
            "This model's maximum context length is 8192 tokens"
        ));
        assert!(is_context_length_message(
            "prompt is too long: 210000 tokens"
        ));
        assert!(!is_context_length_message("invalid api key"));
    }

    #[test]
    fn excerpt_cuts_long_bodies_on_a_char_boundary() {
        let long = "é".repeat(BODY_EXCERPT_CHARS + 10);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), BODY_EXCERPT_CHARS + 1);
        assert_eq!(excerpt(" short "), "short");
    }

    #[test]
    fn the_message_names_status_provider_model_and_body() {
        let msg = http(401, None).to_string();
        assert_eq!(msg, "HTTP 401 from openai (model `gpt`): nope");
    }
}
