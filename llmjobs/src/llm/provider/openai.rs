//! OpenAI-compatible chat completions.

use serde_json::{Map, Value, json};

use super::{CallCtx, Parsed, content_text, u64_at};
use crate::llm::stream::SseEvent;
use crate::llm::{ChatRequest, FinishReason, Message, Usage};

/// The request body. The system prompt becomes the first message; messages are sent in
/// OpenAI's own shape.
pub(super) fn body(wire_model: &str, req: &ChatRequest, stream: bool, stream_usage: bool) -> Value {
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &req.system {
        messages.push(to_value(&Message::system(system.as_str())));
    }
    messages.extend(req.messages.iter().map(to_value));
    let mut body = Map::new();
    body.insert("model".into(), json!(wire_model));
    body.insert("messages".into(), Value::Array(messages));
    let optional = [
        ("temperature", req.temperature.map(|t| json!(t))),
        ("top_p", req.top_p.map(|t| json!(t))),
        (
            max_tokens_field(wire_model),
            req.max_tokens.map(|t| json!(t)),
        ),
        (
            "response_format",
            req.response_format.as_ref().map(to_value),
        ),
        ("stop", (!req.stop.is_empty()).then(|| json!(req.stop))),
        ("tools", (!req.tools.is_empty()).then(|| json!(req.tools))),
        ("tool_choice", req.tool_choice.clone()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            body.insert(key.into(), value);
        }
    }
    if stream {
        body.insert("stream".into(), json!(true));
        if stream_usage {
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
    }
    Value::Object(body)
}

/// OpenAI's reasoning models (o1, o3, o4, gpt-5 families) refuse `max_tokens` and take
/// `max_completion_tokens`, which also bounds their hidden reasoning tokens.
fn max_tokens_field(wire_model: &str) -> &'static str {
    let name = wire_model.rsplit('/').next().unwrap_or(wire_model);
    let reasoning = ["o1", "o3", "o4", "gpt-5"].iter().any(|family| {
        name.strip_prefix(family)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', '.']))
    });
    if reasoning {
        "max_completion_tokens"
    } else {
        "max_tokens"
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    // Messages and formats are plain data and always serialize.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some(
        Usage::new(
            u64_at(u, "prompt_tokens").or_else(|| u64_at(u, "input_tokens"))?,
            u64_at(u, "completion_tokens")
                .or_else(|| u64_at(u, "output_tokens"))
                .unwrap_or(0),
        )
        .with_cache(
            u.pointer("/prompt_tokens_details/cached_tokens")
                .or_else(|| u.pointer("/input_tokens_details/cached_tokens"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            0,
        ),
    )
}

/// Parses a complete response.
pub(super) fn parse(
    ctx: CallCtx<'_>,
    v: &Value,
    raw: &str,
) -> Result<Parsed, crate::llm::LlmError> {
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| ctx.invalid_response("the response has no choices", raw))?;
    let message = choice
        .get("message")
        .ok_or_else(|| ctx.invalid_response("the first choice has no message", raw))?;
    Ok(Parsed {
        text: message.get("content").map(content_text).unwrap_or_default(),
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        id: v.get("id").and_then(Value::as_str).map(str::to_string),
        usage: usage(v),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(FinishReason::from_provider),
        tool_calls: message
            .get("tool_calls")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    })
}

/// A streamed answer being assembled from `chat.completion.chunk` events.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(super) parsed: Parsed,
    /// `[DONE]` was received.
    pub(super) done: bool,
    /// Tool call fragments by index, merged as they arrive.
    tool_calls: Vec<Value>,
}

impl StreamState {
    pub(super) fn on_event(
        &mut self,
        ctx: CallCtx<'_>,
        event: SseEvent,
    ) -> Result<Option<String>, crate::llm::LlmError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        if data.is_empty() {
            return Ok(None);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            ctx.stream_error(
                format!(
                    "an event is not valid JSON ({e}): {}",
                    crate::llm::error::excerpt(data)
                ),
                true,
            )
        })?;
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            return Err(ctx.provider_error(error, true));
        }
        if let Some(model) = chunk.get("model").and_then(Value::as_str) {
            self.parsed.model = Some(model.to_string());
        }
        if let Some(id) = chunk.get("id").and_then(Value::as_str) {
            self.parsed.id = Some(id.to_string());
        }
        if let Some(u) = usage(&chunk) {
            self.parsed.usage = Some(u);
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return Ok(None);
        };
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.parsed.finish_reason = Some(FinishReason::from_provider(reason));
        }
        let Some(delta) = choice.get("delta") else {
            return Ok(None);
        };
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                self.merge_tool_call(call);
            }
        }
        let text = delta.get("content").map(content_text).unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        self.parsed.text.push_str(&text);
        Ok(Some(text))
    }

    /// Merges a tool call fragment: the first fragment of an index carries the id and name,
    /// later ones append to `function.arguments`.
    fn merge_tool_call(&mut self, fragment: &Value) {
        let index = fragment.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        while self.tool_calls.len() <= index {
            self.tool_calls.push(
                json!({"id": null, "type": "function", "function": {"name": "", "arguments": ""}}),
            );
        }
        let call = &mut self.tool_calls[index];
        if let Some(id) = fragment.get("id").filter(|id| !id.is_null()) {
            call["id"] = id.clone();
        }
        if let Some(function) = fragment.get("function") {
            for key in ["name", "arguments"] {
                if let Some(part) = function.get(key).and_then(Value::as_str) {
                    let merged = format!("{}{part}", call["function"][key].as_str().unwrap_or(""));
                    call["function"][key] = Value::String(merged);
                }
            }
        }
    }

    pub(super) fn finish(mut self, ctx: CallCtx<'_>) -> Result<Parsed, crate::llm::LlmError> {
        if !self.done && self.parsed.finish_reason.is_none() {
            return Err(ctx.stream_error(
                "the stream ended before its final event (no finish_reason and no [DONE]): the \
                 answer is truncated",
                true,
            ));
        }
        self.parsed.tool_calls = self.tool_calls;
        Ok(self.parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: CallCtx<'static> = CallCtx {
        provider: "openai",
        model: "openai/gpt",
    };

    fn event(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_string(),
        }
    }

    #[test]
    fn the_body_carries_system_format_and_stream_options() {
        let req = ChatRequest::new("openai/gpt")
            .system("be brief")
            .user("hi")
            .json()
            .stop("END");
        let body = body("gpt", &req, true, true);
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            body["messages"][1],
            json!({"role": "user", "content": "hi"})
        );
        assert_eq!(body["response_format"], json!({"type": "json_object"}));
        assert_eq!(body["stop"], json!(["END"]));
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn a_response_is_parsed() {
        let v = json!({
            "id": "c1", "model": "gpt-4o-mini",
            "choices": [{"message": {"role": "assistant", "content": "Hi",
                "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2}
        });
        let p = parse(CTX, &v, "").unwrap();
        assert_eq!(p.text, "Hi");
        assert_eq!(p.usage, Some(Usage::new(5, 2)));
        assert_eq!(p.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(p.tool_calls.len(), 1);
    }

    #[test]
    fn stream_chunks_assemble_text_tool_calls_and_usage() {
        let mut s = StreamState::default();
        let chunks = [
            r#"{"model":"gpt","choices":[{"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"content":"lo","tool_calls":[{"index":0,"id":"t1","function":{"name":"get","arguments":"{\"a\""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            "[DONE]",
        ];
        let deltas: Vec<_> = chunks
            .iter()
            .filter_map(|c| s.on_event(CTX, event(c)).unwrap())
            .collect();
        assert_eq!(deltas, ["Hel", "lo"]);
        let p = s.finish(CTX).unwrap();
        assert_eq!(p.text, "Hello");
        assert_eq!(p.usage, Some(Usage::new(3, 2)));
        assert_eq!(p.tool_calls[0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(p.tool_calls[0]["id"], "t1");
    }

    #[test]
    fn a_stream_without_its_final_event_is_truncated() {
        let mut s = StreamState::default();
        s.on_event(CTX, event(r#"{"choices":[{"delta":{"content":"Hel"}}]}"#))
            .unwrap();
        let err = s.finish(CTX).unwrap_err();
        assert!(err.is_retryable());
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
