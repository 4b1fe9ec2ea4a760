//! [`ChatResponse`], [`Usage`] and the [`StreamEvent`]s of a streamed answer.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{FallbackSkip, Stage, ToolCall};

/// A model's answer, with what it cost. Serializable, so a job can journal it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatResponse {
    /// The answer's text (text blocks joined; empty when the model only called tools).
    pub text: String,
    /// The model that answered, as the provider reports it (without the routing prefix).
    pub model: String,
    /// The name of the provider that answered.
    pub provider: String,
    /// The provider's id for the response, if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tokens of this call.
    pub usage: Usage,
    /// The cost of this call in US dollars, when a price is configured for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Why the model stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Tool calls, in the provider's own shape (OpenAI's `tool_calls` entries, or Anthropic's
    /// `tool_use` blocks); [`ChatResponse::calls`] has them in one shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
    /// The tool calls in one shape for every provider (see [`ToolCall`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<ToolCall>,
    /// How many answers the validation loop produced to get this one (1 for a single call).
    #[serde(default = "one")]
    pub attempts: u32,
    /// The escalation stage of this answer ([`Stage::ToolAssisted`] once the loop used the
    /// debug tool).
    #[serde(default = "first_stage")]
    pub stage: Stage,
    /// How many HTTP tries failed (a 429, a 500, a dropped connection) and were tried again on
    /// the way to this answer, its checks included.
    #[serde(default)]
    pub retries: u32,
    /// Tokens of every call made to get this answer: failed tries that reported usage,
    /// rejected answers, agent checks. Equal to `usage` for a single call.
    pub total_usage: Usage,
    /// The cost of every call made to get this answer, when prices are known for all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost: Option<f64>,
    /// The models of [`ChatRequest::fallbacks`](super::ChatRequest::fallbacks) asked before the
    /// one that answered, each with why it did not; empty when the first model answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_trail: Vec<FallbackSkip>,
    /// The model of [`ChatRequest::fallbacks`](super::ChatRequest::fallbacks) that answered
    /// (with its routing prefix), when the request's own model did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_model: Option<String>,
}

fn one() -> u32 {
    1
}

fn first_stage() -> Stage {
    Stage::Answer
}

impl ChatResponse {
    /// A response to one call, with totals equal to its own usage and cost.
    pub fn new(
        text: impl Into<String>,
        model: impl Into<String>,
        provider: impl Into<String>,
    ) -> Self {
        ChatResponse {
            text: text.into(),
            model: model.into(),
            provider: provider.into(),
            id: None,
            usage: Usage::default(),
            cost: None,
            finish_reason: None,
            tool_calls: Vec::new(),
            calls: Vec::new(),
            attempts: 1,
            stage: Stage::Answer,
            retries: 0,
            total_usage: Usage::default(),
            total_cost: None,
            fallback_trail: Vec::new(),
            fallback_model: None,
        }
    }

    /// Sets the provider's raw tool calls, and their normalized [`ChatResponse::calls`].
    pub(crate) fn set_tool_calls(&mut self, raw: Vec<Value>) {
        self.calls = raw.iter().filter_map(ToolCall::from_raw).collect();
        self.tool_calls = raw;
    }

    /// Parses the answer's text as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.text.trim())
    }

    /// Whether the model stopped because it hit `max_tokens`.
    pub fn is_truncated(&self) -> bool {
        self.finish_reason == Some(FinishReason::Length)
    }
}

/// Token counts of one or more calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Prompt tokens, those read from or written to the provider's prompt cache included.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the provider's prompt cache (OpenAI
    /// `prompt_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// Of `input_tokens`, those written to the provider's prompt cache (Anthropic
    /// `cache_creation_input_tokens`; OpenAI reports none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// Whether the counts are this client's estimate because the provider reported none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

impl Usage {
    /// Counts reported by a provider.
    pub fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            estimated: false,
        }
    }

    /// The same counts, of which `read` prompt tokens were read from the provider's prompt
    /// cache and `written` were written to it.
    pub fn with_cache(mut self, read: u64, written: u64) -> Self {
        self.cache_read_tokens = read;
        self.cache_write_tokens = written;
        self
    }

    /// Input plus output tokens.
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens + other.input_tokens,
            output_tokens: self.output_tokens + other.output_tokens,
            cache_read_tokens: self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens + other.cache_write_tokens,
            estimated: self.estimated || other.estimated,
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        *self = *self + other;
    }
}

/// Why a model stopped answering, normalized across providers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FinishReason {
    /// A natural end or a stop sequence (OpenAI `stop`, Anthropic `end_turn`/`stop_sequence`).
    Stop,
    /// `max_tokens` was reached (OpenAI `length`, Anthropic `max_tokens`).
    Length,
    /// The model called tools (OpenAI `tool_calls`, Anthropic `tool_use`).
    ToolCalls,
    /// The provider filtered the content.
    ContentFilter,
    /// Any other reason, as the provider said it.
    Other(String),
}

impl FinishReason {
    /// Normalizes a provider's finish or stop reason.
    pub fn from_provider(reason: &str) -> Self {
        match reason {
            "stop" | "end_turn" | "stop_sequence" => FinishReason::Stop,
            "length" | "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
            "tool_calls" | "tool_use" | "function_call" => FinishReason::ToolCalls,
            "content_filter" | "refusal" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_string()),
        }
    }

    /// The normalized name (`stop`, `length`, `tool_calls`, `content_filter`, or the
    /// provider's own word).
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(other) => other,
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FinishReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FinishReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| FinishReason::from_provider(&s))
    }
}

/// One increment of a streamed answer, as passed to a streaming callback.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StreamEvent {
    /// The new text since the previous event.
    pub delta_text: String,
    /// How many tokens of answer so far: the provider's count when it gives one, otherwise an
    /// estimate from the text received.
    pub output_tokens_so_far: u64,
    /// Prompt tokens, once the provider has reported them.
    pub input_tokens: Option<u64>,
    /// Which HTTP try of the call produced this event (1-based). When it changes, a retry has
    /// started over and the text received so far should be discarded.
    pub attempt: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_round_trip_through_json() {
        let mut r = ChatResponse::new("hi", "gpt", "openai");
        r.usage = Usage::new(3, 1);
        r.total_usage = r.usage;
        r.finish_reason = Some(FinishReason::from_provider("end_turn"));
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""finish_reason":"stop""#));
        assert_eq!(serde_json::from_str::<ChatResponse>(&json).unwrap(), r);
    }

    #[test]
    fn finish_reasons_are_normalized() {
        assert_eq!(
            FinishReason::from_provider("max_tokens"),
            FinishReason::Length
        );
        assert_eq!(
            FinishReason::from_provider("tool_use"),
            FinishReason::ToolCalls
        );
        assert_eq!(
            FinishReason::from_provider("pause_turn").as_str(),
            "pause_turn"
        );
    }
}
