//! [`ChatRequest`]: what to ask which model, in the shape of the original system's `llm_config`.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::LlmError;
use super::router::matches_pattern;
use super::validate::Validator;

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
    /// ([`LlmError::NeedsReview`]), even if `retry_config.max_attempts` allows more.
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

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The deserialized shape: [`ChatRequest`] plus the `question` shorthand.
#[derive(Deserialize)]
struct ChatRequestWire {
    model: String,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    response_format: Option<ResponseFormat>,
    #[serde(default, deserialize_with = "one_or_many")]
    stop: Vec<String>,
    #[serde(default)]
    tools: Vec<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    validation: Vec<Validator>,
    #[serde(default = "yes")]
    default_validate: bool,
    #[serde(default)]
    retry_config: Option<RetryConfig>,
    #[serde(default)]
    long_running: bool,
    #[serde(default)]
    original_user_prompt: Option<String>,
    #[serde(default)]
    mcp_config: Option<Value>,
    #[serde(default)]
    max_attempts_before_tool_use: Option<u32>,
    #[serde(default)]
    max_attempts_before_human: Option<u32>,
    #[serde(default)]
    debug_tool_name: Option<String>,
    #[serde(default)]
    debug_tool_mcp_config: Option<Value>,
    #[serde(default, alias = "use_polling")]
    polling: Option<bool>,
    #[serde(default)]
    wait_for_completion: Option<WaitFor>,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default, deserialize_with = "one_or_many")]
    fallbacks: Vec<String>,
    #[serde(default)]
    fallback_patience: Option<f64>,
    #[serde(default, alias = "extra_body")]
    provider_options: Map<String, Value>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl TryFrom<ChatRequestWire> for ChatRequest {
    type Error = String;

    fn try_from(w: ChatRequestWire) -> Result<Self, String> {
        for (key, seconds) in [
            ("timeout", w.timeout),
            ("fallback_patience", w.fallback_patience),
            (
                "wait_for_completion",
                match w.wait_for_completion {
                    Some(WaitFor::Seconds(s)) => Some(s),
                    _ => None,
                },
            ),
        ] {
            if let Some(s) = seconds
                && !(s.is_finite() && s >= 0.0)
            {
                return Err(format!(
                    "`{key}` must be a number of seconds, zero or more (got {s})"
                ));
            }
        }
        let mut messages = w.messages;
        if let Some(question) = w.question {
            messages.push(Message::user(question));
        }
        Ok(ChatRequest {
            model: w.model,
            messages,
            system: w.system,
            temperature: w.temperature,
            top_p: w.top_p,
            max_tokens: w.max_tokens,
            response_format: w.response_format,
            stop: w.stop,
            tools: w.tools,
            tool_choice: w.tool_choice,
            validation: w.validation,
            default_validate: w.default_validate,
            retry_config: w.retry_config,
            long_running: w.long_running,
            original_user_prompt: w.original_user_prompt,
            mcp_config: w.mcp_config,
            max_attempts_before_tool_use: w.max_attempts_before_tool_use,
            max_attempts_before_human: w.max_attempts_before_human,
            debug_tool_name: w.debug_tool_name,
            debug_tool_mcp_config: w.debug_tool_mcp_config,
            polling: w.polling,
            wait_for_completion: w.wait_for_completion,
            timeout: w.timeout,
            fallbacks: w.fallbacks,
            fallback_patience: w.fallback_patience,
            provider_options: w.provider_options,
            extra: w.extra,
        })
    }
}

/// The original's `wait_for_completion`: a yes or no, or how many seconds to wait.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WaitFor {
    /// `true`: wait in the foreground (up to `timeout`, if set); `false`: go to the
    /// background at once.
    Wait(bool),
    /// Wait this many seconds, then take a handle.
    Seconds(f64),
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

impl ChatRequest {
    /// A request to `model` with no messages yet.
    pub fn new(model: impl Into<String>) -> Self {
        ChatRequest {
            model: model.into(),
            messages: Vec::new(),
            system: None,
            temperature: None,
            top_p: None,
            max_tokens: None,
            response_format: None,
            stop: Vec::new(),
            tools: Vec::new(),
            tool_choice: None,
            validation: Vec::new(),
            default_validate: true,
            retry_config: None,
            long_running: false,
            original_user_prompt: None,
            mcp_config: None,
            max_attempts_before_tool_use: None,
            max_attempts_before_human: None,
            debug_tool_name: None,
            debug_tool_mcp_config: None,
            polling: None,
            wait_for_completion: None,
            timeout: None,
            fallbacks: Vec::new(),
            fallback_patience: None,
            provider_options: Map::new(),
            extra: Map::new(),
        }
    }

    /// Parses an `llm_config` object, naming the offending field on error.
    pub fn from_value(config: Value) -> Result<Self, LlmError> {
        let model = config
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        serde_path_to_error::deserialize(config).map_err(|e| LlmError::InvalidRequest {
            model,
            reason: format!("at `{}`: {}", e.path(), e.inner()),
        })
    }

    /// Appends a user message.
    pub fn user(mut self, content: impl Into<Content>) -> Self {
        self.messages.push(Message::user(content));
        self
    }

    /// Appends an assistant message (a previous answer, or a prefill).
    pub fn assistant(mut self, content: impl Into<Content>) -> Self {
        self.messages.push(Message::assistant(content));
        self
    }

    /// Appends any message.
    pub fn message(mut self, message: Message) -> Self {
        self.messages.push(message);
        self
    }

    /// Sets the system prompt.
    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// Sets the sampling temperature.
    pub fn temperature(mut self, temperature: f64) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the most tokens the answer may have.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Asks for a JSON object as the answer.
    pub fn json(mut self) -> Self {
        self.response_format = Some(ResponseFormat::JsonObject);
        self
    }

    /// Adds stop sequences.
    pub fn stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }

    /// Adds a tool definition.
    pub fn tool(mut self, tool: Value) -> Self {
        self.tools.push(tool);
        self
    }

    /// Adds a validator every answer must pass.
    pub fn validate(mut self, validator: Validator) -> Self {
        self.validation.push(validator);
        self
    }

    /// Whether `response_not_empty` is checked by default (it is unless turned off).
    pub fn default_validate(mut self, on: bool) -> Self {
        self.default_validate = on;
        self
    }

    /// How many answers to try before the call ends as needing review.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.retry_config
            .get_or_insert_with(RetryConfig::default)
            .max_attempts = Some(attempts);
        self
    }

    /// Marks the call as long-running: it should go straight to the background.
    pub fn long_running(mut self, long_running: bool) -> Self {
        self.long_running = long_running;
        self
    }

    /// Models to ask, in order, when the model before is rate-limited for longer than
    /// [`ChatRequest::fallback_patience`], overloaded (503, 529), or down (open circuit,
    /// connection errors, timeouts, retries exhausted on a transient error). Errors of the
    /// request itself (400, context length, authentication, validation) never fall through.
    /// The answer's [`ChatResponse::fallback_trail`](super::ChatResponse::fallback_trail)
    /// says which models did not answer and why.
    pub fn fallbacks<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fallbacks = models.into_iter().map(Into::into).collect();
        self
    }

    /// Sets how long a rate-limited or open-circuit model may make the call wait before the
    /// next fallback is asked instead.
    pub fn fallback_patience(mut self, patience: std::time::Duration) -> Self {
        self.fallback_patience = Some(patience.as_secs_f64());
        self
    }

    /// Sets a top-level field of the provider's request body.
    pub fn provider_option(mut self, key: impl Into<String>, value: Value) -> Self {
        self.provider_options.insert(key.into(), value);
        self
    }

    /// The validators every answer must pass: `validation`, preceded by `response_not_empty`
    /// when `default_validate` is on and `validation` does not already list it.
    pub fn validators(&self) -> Vec<Validator> {
        let mut validators = Vec::with_capacity(self.validation.len() + 1);
        if self.default_validate && !self.validation.contains(&Validator::ResponseNotEmpty) {
            validators.push(Validator::ResponseNotEmpty);
        }
        validators.extend(self.validation.iter().cloned());
        validators
    }

    /// How many answers the validation loop may produce (`retry_config.max_attempts`, at
    /// least 1; 3 when unset).
    pub fn max_answer_attempts(&self) -> u32 {
        self.retry_config
            .as_ref()
            .and_then(|r| r.max_attempts)
            .unwrap_or(RetryConfig::DEFAULT_MAX_ATTEMPTS)
            .max(1)
    }

    /// Whether this call should go straight to the background, by the original's rules.
    ///
    /// `polling` (or `use_polling`) decides when set, and `wait_for_completion: false` sends it
    /// to the background. Otherwise it goes there when it says so (`long_running`), when its
    /// model matches one of `patterns` (`*` matches any run of characters, `?` one; see
    /// [`DEFAULT_LONG_RUNNING_PATTERNS`]), when one of its validators is an agent check, or when
    /// it carries an `mcp_config` (agent work with tools).
    pub fn is_long_running<P: AsRef<str>>(&self, patterns: &[P]) -> bool {
        if let Some(polling) = self.polling {
            return polling;
        }
        if self.wait_for_completion == Some(WaitFor::Wait(false)) {
            return true;
        }
        self.long_running
            || patterns
                .iter()
                .any(|p| matches_pattern(p.as_ref(), &self.model))
            || self.validation.iter().any(Validator::is_agent_check)
            || self.mcp_config.is_some()
    }

    /// How long a caller should wait for the answer before taking a handle, when the request
    /// says (`wait_for_completion` as seconds, else `timeout`).
    pub fn wait_limit(&self) -> Option<std::time::Duration> {
        let seconds = match self.wait_for_completion {
            Some(WaitFor::Seconds(s)) => Some(s),
            _ => self.timeout,
        }?;
        std::time::Duration::try_from_secs_f64(seconds).ok()
    }

    /// What the user originally asked: `original_user_prompt`, else the last user message.
    pub fn original_prompt(&self) -> Option<String> {
        self.original_user_prompt
            .clone()
            .or_else(|| self.last_user_text())
    }

    /// Whether the answer should be JSON.
    pub fn wants_json(&self) -> bool {
        self.response_format
            .as_ref()
            .is_some_and(ResponseFormat::is_json)
    }

    /// A rough token count of the prompt (about four characters a token), for rate limiting
    /// before the provider reports the real count.
    pub fn estimated_input_tokens(&self) -> u64 {
        let chars: usize = self.system.as_deref().map_or(0, str::len)
            + self
                .messages
                .iter()
                .map(|m| m.content.text_len() + 16)
                .sum::<usize>()
            + self
                .tools
                .iter()
                .map(|t| t.to_string().len())
                .sum::<usize>();
        estimate_tokens(chars)
    }

    /// The text of the last user message, if any.
    pub fn last_user_text(&self) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.text())
    }

    /// The text of the last assistant message, if any.
    pub fn last_assistant_text(&self) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .map(|m| m.content.text())
    }

    /// The request for the next attempt after `answer` failed validation: the failed answer
    /// as an assistant message (unless it is blank, which some providers reject), then the
    /// validators' feedback as a user message.
    pub fn with_feedback(&self, answer: &str, feedback: &[String]) -> ChatRequest {
        let mut text = String::from(
            "Your previous answer did not pass validation. Please answer again, fixing these \
             problems:",
        );
        for item in feedback {
            text.push_str("\n- ");
            text.push_str(item);
        }
        self.with_feedback_text(answer, text)
    }

    /// [`ChatRequest::with_feedback`] with the feedback message already written.
    pub(crate) fn with_feedback_text(&self, answer: &str, text: String) -> ChatRequest {
        let mut next = self.clone();
        if !answer.trim().is_empty() {
            next.messages.push(Message::assistant(answer));
        }
        next.messages.push(Message::user(text));
        next
    }
}

/// About four characters a token, rounded up.
pub(crate) fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said: a string or a list of parts (text, images).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: Content,
    /// The speaker's name, where the provider supports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For a tool result: the id of the tool call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For an assistant message: the tool calls it made, in OpenAI's shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
    Ok(Option::<Content>::deserialize(d)?.unwrap_or_default())
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<Content>) -> Self {
        Message {
            role,
            content: content.into(),
            name: None,
            tool_call_id: None,
            tool_calls: Vec::new(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<Content>) -> Self {
        Message::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<Content>) -> Self {
        Message::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<Content>) -> Self {
        Message::new(Role::Assistant, content)
    }

    /// A tool result answering the tool call `tool_call_id`.
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<Content>) -> Self {
        let mut message = Message::new(Role::Tool, content);
        message.tool_call_id = Some(tool_call_id.into());
        message
    }
}

/// Who speaks a [`Message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// Instructions for the model.
    System,
    /// OpenAI's newer name for system instructions; sent as system to Anthropic.
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// What a [`Message`] says: a string, or a list of parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text and image parts, in OpenAI's shape.
    Parts(Vec<ContentPart>),
}

impl Default for Content {
    fn default() -> Self {
        Content::Text(String::new())
    }
}

impl Content {
    /// The text of the content; text parts are joined with newlines, other parts skipped.
    pub fn text(&self) -> String {
        match self {
            Content::Text(text) => text.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// The length of the content's text in bytes, plus a flat allowance per non-text part.
    fn text_len(&self) -> usize {
        match self {
            Content::Text(text) => text.len(),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match p {
                    ContentPart::Text { text } => text.len(),
                    // Providers bill an image at roughly a thousand tokens.
                    _ => 4000,
                })
                .sum(),
        }
    }
}

impl From<String> for Content {
    fn from(text: String) -> Self {
        Content::Text(text)
    }
}

impl From<&str> for Content {
    fn from(text: &str) -> Self {
        Content::Text(text.to_string())
    }
}

impl From<Vec<ContentPart>> for Content {
    fn from(parts: Vec<ContentPart>) -> Self {
        Content::Parts(parts)
    }
}

/// One part of a multi-part [`Content`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image by URL (`https://…` or a `data:` URL).
    ImageUrl {
        /// The image.
        image_url: ImageUrl,
    },
    /// Any other part, passed through as it is.
    #[serde(untagged)]
    Other(Value),
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart::Text { text: text.into() }
    }

    /// An image part.
    pub fn image_url(url: impl Into<String>) -> Self {
        ContentPart::ImageUrl {
            image_url: ImageUrl {
                url: url.into(),
                detail: None,
            },
        }
    }
}

/// An image reference in a [`ContentPart::ImageUrl`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImageUrl {
    /// `https://…`, or `data:<media type>;base64,<data>`.
    pub url: String,
    /// OpenAI's `low`/`high`/`auto` detail setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The shape the answer should have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema (OpenAI's `json_schema` object: `name`, `schema`, `strict`).
    JsonSchema {
        /// The schema object, passed through.
        json_schema: Value,
    },
}

impl ResponseFormat {
    /// Whether the answer should be JSON.
    pub fn is_json(&self) -> bool {
        !matches!(self, ResponseFormat::Text)
    }
}

/// The original system's `retry_config`.
///
/// `max_attempts` bounds the answers the validation loop produces. `initial_delay`,
/// `backoff_factor` and `max_delay` (seconds), when set, replace the client's back-off for this
/// request's HTTP retries. Unknown fields (such as `debug_mode`'s companions) are ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RetryConfig {
    /// How many answers to try before the call ends as needing review (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The first back-off delay in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<f64>,
    /// The factor each back-off delay grows by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_factor: Option<f64>,
    /// The longest back-off delay in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<f64>,
    /// Log each attempt, its answer and the validators' verdicts at `info` level.
    #[serde(default, skip_serializing_if = "is_false")]
    pub debug_mode: bool,
}

impl RetryConfig {
    /// The number of answers tried when `max_attempts` is not set.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn question_becomes_a_trailing_user_message() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [{"role": "system", "content": "be brief"}],
            "question": "why?"
        }))
        .unwrap();
        assert_eq!(req.messages.len(), 2);
        assert_eq!(req.messages[1], Message::user("why?"));
        assert!(
            serde_json::to_value(&req)
                .unwrap()
                .get("question")
                .is_none()
        );
    }

    #[test]
    fn multi_part_content_and_unknown_parts_round_trip() {
        let value = json!({
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                {"type": "input_audio", "input_audio": {"data": "…"}}
            ]
        });
        let message: Message = serde_json::from_value(value.clone()).unwrap();
        let Content::Parts(parts) = &message.content else {
            panic!("parts expected")
        };
        assert_eq!(parts[0], ContentPart::text("look"));
        assert_eq!(parts[1], ContentPart::image_url("https://x/y.png"));
        assert!(matches!(parts[2], ContentPart::Other(_)));
        assert_eq!(serde_json::to_value(&message).unwrap(), value);
    }

    #[test]
    fn null_content_is_empty_text() {
        let m: Message =
            serde_json::from_value(json!({"role": "assistant", "content": null})).unwrap();
        assert_eq!(m.content, Content::default());
    }

    #[test]
    fn stop_accepts_a_string_or_a_list() {
        let one: ChatRequest =
            serde_json::from_value(json!({"model": "m", "stop": "END"})).unwrap();
        let many: ChatRequest =
            serde_json::from_value(json!({"model": "m", "stop": ["a", "b"]})).unwrap();
        assert_eq!(one.stop, ["END"]);
        assert_eq!(many.stop, ["a", "b"]);
    }

    #[test]
    fn unknown_fields_are_kept_but_provider_options_are_separate() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "image_directory": "./img",
            "extra_body": {"seed": 7}
        }))
        .unwrap();
        assert_eq!(req.extra["image_directory"], "./img");
        assert_eq!(req.provider_options["seed"], 7);
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(back["image_directory"], "./img");
        assert_eq!(back["provider_options"]["seed"], 7);
    }

    #[test]
    fn default_validation_is_response_not_empty() {
        let req = ChatRequest::new("m").user("hi");
        assert_eq!(req.validators(), [Validator::ResponseNotEmpty]);
        let req = req.validate(Validator::JsonString).default_validate(false);
        assert_eq!(req.validators(), [Validator::JsonString]);
    }

    #[test]
    fn long_running_by_pattern_flag_or_agent_validator() {
        let patterns = DEFAULT_LONG_RUNNING_PATTERNS;
        assert!(ChatRequest::new("max/text-generation").is_long_running(patterns));
        assert!(!ChatRequest::new("openai/gpt-4o").is_long_running(patterns));
        assert!(
            ChatRequest::new("openai/gpt-4o")
                .long_running(true)
                .is_long_running(patterns)
        );
        let agent = Validator::agent_task("max/checker", "Is {answer} fine?");
        assert!(
            ChatRequest::new("openai/gpt-4o")
                .validate(agent)
                .is_long_running(&[] as &[&str])
        );
    }

    #[test]
    fn feedback_appends_the_failed_answer_and_the_reasons() {
        let req = ChatRequest::new("m").user("json please");
        let next = req.with_feedback("nope", &["answer is not valid JSON".into()]);
        assert_eq!(next.messages.len(), 3);
        assert_eq!(next.messages[1], Message::assistant("nope"));
        assert!(next.messages[2].content.text().contains("not valid JSON"));
    }

    #[test]
    fn from_value_names_the_bad_field() {
        let err = ChatRequest::from_value(json!({"model": "m", "max_tokens": "many"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_tokens"), "{err}");
    }
}
