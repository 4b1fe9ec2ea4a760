//! The deserialized shape of a [`ChatRequest`]: the original's `question` shorthand, and
//! lists given as one string.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{ChatRequest, Message, ResponseFormat, RetryConfig, WaitFor};
use crate::llm::validate::Validator;

fn yes() -> bool {
    true
}

/// The deserialized shape: [`ChatRequest`] plus the `question` shorthand.
#[derive(Deserialize)]
pub(super) struct ChatRequestWire {
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
