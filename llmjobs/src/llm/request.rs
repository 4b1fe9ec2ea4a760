//! [`ChatRequest`]: what to ask which model, in the shape of the original system's `llm_config`.
//!
//! The request's parts live in `request/`: its wire shape, its builder methods, what it says
//! about how to run it, its messages, and its option types.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod builder;
mod inspect;
mod message;
mod options;
#[cfg(test)]
mod tests;
mod wire;

use super::validate::Validator;
use wire::ChatRequestWire;

pub(crate) use inspect::estimate_tokens;
pub use message::{Content, ContentPart, ImageUrl, Message, Role};
pub use options::{ResponseFormat, RetryConfig, WaitFor};

/// The model patterns whose calls are long-running by default: the `max/` proxy's agents.
pub const DEFAULT_LONG_RUNNING_PATTERNS: &[&str] = &["max/*"];

/// A chat request: the model, the conversation, sampling settings, validators and retries.
///
/// It deserializes from the `llm_config` objects of the original Python system, including its
/// `question` shorthand (one user message, appended after `messages`), `validation` entries,
/// `retry_config` and `default_validate`. Fields this client does not interpret (such as
/// `image_directory`) are kept in [`ChatRequest::extra`] so that a config round-trips; they are
/// never sent to a provider. Fields meant for the provider that have no field here go in
/// [`ChatRequest::provider_options`].
///
/// ```
/// use llmjobs::llm::ChatRequest;
///
/// let req: ChatRequest = serde_json::from_str(
///     r#"{"model": "max/text-generation", "question": "Hello?", "default_validate": false}"#,
/// )?;
/// assert_eq!(req.messages.len(), 1);
/// assert!(req.validators().is_empty());
///
/// let same = ChatRequest::new("max/text-generation").user("Hello?").default_validate(false);
/// assert_eq!(req, same);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ChatRequestWire")]
#[non_exhaustive]
pub struct ChatRequest {
    /// The model, with its routing prefix (`openai/gpt-4o-mini`, `anthropic/claude-…`, `max/…`).
    pub model: String,
    /// The conversation so far.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
    /// A system prompt, sent before any system messages in `messages`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling probability mass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// The most tokens the answer may have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Ask for plain text, any JSON object, or JSON matching a schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Sequences that end the answer (a string or a list of strings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Tool definitions, passed through (OpenAI's `{"type": "function", …}` shape is converted
    /// for Anthropic; Anthropic's own shape is passed as is).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Value>,
    /// Tool choice, passed through (OpenAI's shape; `auto`, `none`, `required` and a named
    /// function are converted for Anthropic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Checks every answer must pass (see [`ChatRequest::validators`] for the default).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub validation: Vec<Validator>,
    /// Whether `response_not_empty` is checked even when `validation` does not list it.
    #[serde(skip_serializing_if = "is_true")]
    pub default_validate: bool,
    /// How many answers to try before giving up, and the back-off between HTTP retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_config: Option<RetryConfig>,
    /// Whether the call should go straight to the background (see
    /// [`ChatRequest::is_long_running`]).
    #[serde(skip_serializing_if = "is_false")]
    pub long_running: bool,
    /// What the user originally asked, available to agent validators as
    /// `{ORIGINAL_USER_PROMPT}` and restated in the feedback of every retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_user_prompt: Option<String>,
    /// MCP servers for an agent proxy (the original's Claude proxy), sent as the request's
    /// `mcp_config`. A request with one goes to the background.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp_config: Option<Value>,
    /// From this answer on (1-based: `1` means from the second answer), a retry is
    /// tool-assisted: the request carries [`ChatRequest::debug_tool_mcp_config`] as its
    /// `mcp_config` and the feedback tells the model to use [`ChatRequest::debug_tool_name`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts_before_tool_use: Option<u32>,
    /// After this many rejected answers the call stops and ends as needing human review
    /// ([`LlmError::NeedsReview`](super::LlmError::NeedsReview)), even if
    /// `retry_config.max_attempts` allows more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts_before_human: Option<u32>,
    /// The tool the feedback of a tool-assisted retry names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_tool_name: Option<String>,
    /// The MCP servers a tool-assisted retry carries as its `mcp_config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_tool_mcp_config: Option<Value>,
    /// The original's `polling` / `use_polling`: `true` sends the call to the background,
    /// `false` keeps it in the foreground, whatever [`ChatRequest::is_long_running`] would say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polling: Option<bool>,
    /// The original's `wait_for_completion`: `false` sends the call to the background; a
    /// number of seconds is how long a caller waits before getting a handle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_for_completion: Option<WaitFor>,
    /// The original's `timeout` (seconds): how long a caller waits for the answer before
    /// getting a handle; the same call keeps going.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Models that answer, in order, when this one is rate-limited past
    /// [`ChatRequest::fallback_patience`], overloaded or down (see [`ChatRequest::fallbacks`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// The longest wait (seconds) a model with a fallback after it may ask for (a 429's
    /// `Retry-After`, an open circuit) before the next model is asked instead (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_patience: Option<f64>,
    /// Extra top-level fields merged into the provider's request body as they are (`seed`,
    /// `presence_penalty`, a proxy's `mcp_config`, …). Also accepted as `extra_body`.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub provider_options: Map<String, Value>,
    /// Fields of the original config that this client does not interpret. Kept so the config
    /// round-trips; never sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}
