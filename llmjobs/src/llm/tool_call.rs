//! [`ToolCall`]: a model's tool call in one shape, whichever provider it came from.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A tool call, the same for every provider: OpenAI's `tool_calls` entries
/// (`{"id", "function": {"name", "arguments": "<JSON text>"}}`) and Anthropic's `tool_use`
/// blocks (`{"id", "name", "input": {…}}`) both become `{id, name, arguments}` with the
/// arguments parsed. The provider's own entries stay in
/// [`ChatResponse::tool_calls`](super::ChatResponse::tool_calls).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ToolCall {
    /// The provider's id for the call, to send its result back with
    /// ([`Message::tool_result`](super::Message::tool_result)).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments: a JSON value, or the raw text when the model wrote invalid JSON.
    pub arguments: Value,
}

impl ToolCall {
    /// Normalizes one raw entry of either provider's shape; `None` for anything else.
    pub fn from_raw(raw: &Value) -> Option<ToolCall> {
        let id = raw.get("id").and_then(Value::as_str).unwrap_or_default();
        if let Some(function) = raw.get("function") {
            let arguments = match function.get("arguments") {
                Some(Value::String(text)) if text.trim().is_empty() => {
                    Value::Object(Default::default())
                }
                Some(Value::String(text)) => {
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
                }
                Some(other) => other.clone(),
                None => Value::Object(Default::default()),
            };
            return Some(ToolCall {
                id: id.to_string(),
                name: function.get("name")?.as_str()?.to_string(),
                arguments,
            });
        }
        Some(ToolCall {
            id: id.to_string(),
            name: raw.get("name")?.as_str()?.to_string(),
            arguments: raw
                .get("input")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default())),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_providers_shapes_become_one() {
        let openai = json!({"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}});
        let anthropic = json!({"type": "tool_use", "id": "call_1", "name": "get_weather",
            "input": {"city": "Paris"}});
        let expected = ToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        };
        assert_eq!(ToolCall::from_raw(&openai), Some(expected.clone()));
        assert_eq!(ToolCall::from_raw(&anthropic), Some(expected));
    }

    #[test]
    fn invalid_argument_json_is_kept_as_text() {
        let raw = json!({"id": "c", "function": {"name": "f", "arguments": "{\"a\":"}});
        assert_eq!(
            ToolCall::from_raw(&raw).unwrap().arguments,
            json!("{\"a\":")
        );
        assert_eq!(ToolCall::from_raw(&json!({"id": "x"})), None);
    }
}
