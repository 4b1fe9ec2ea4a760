//! Building a [`ChatRequest`]: `new`, parsing an `llm_config`, and the setters.

use serde_json::{Map, Value};

use super::{ChatRequest, Content, Message, ResponseFormat, RetryConfig};
use crate::llm::LlmError;
use crate::llm::validate::Validator;

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
    /// The answer's [`ChatResponse::fallback_trail`](crate::llm::ChatResponse::fallback_trail)
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
}
