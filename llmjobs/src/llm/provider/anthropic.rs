//! Anthropic messages.

use serde_json::{Map, Value, json};

use super::{CallCtx, Parsed, u64_at};
use crate::llm::stream::SseEvent;
use crate::llm::{ChatRequest, Content, ContentPart, FinishReason, LlmError, Role, Usage};

/// Appended to the system prompt when the request asks for JSON: Anthropic's API has no
/// `response_format`.
const JSON_INSTRUCTION: &str =
    "Respond with a single valid JSON object only: no prose, no code fences.";

/// The request body. System and developer messages join the top-level `system`; tool results
/// become `tool_result` blocks of a user message; OpenAI-shaped tools and tool calls are
/// converted.
pub(super) fn body(
    ctx: CallCtx<'_>,
    wire_model: &str,
    req: &ChatRequest,
    stream: bool,
    default_max_tokens: u32,
) -> Result<Value, LlmError> {
    let mut system: Vec<String> = req.system.iter().cloned().collect();
    let mut messages = Vec::with_capacity(req.messages.len());
    for message in &req.messages {
        match message.role {
            Role::System | Role::Developer => system.push(message.content.text()),
            Role::User => {
                messages.push(json!({"role": "user", "content": content(&message.content)}))
            }
            Role::Assistant => {
                let mut blocks = match content(&message.content) {
                    Value::String(s) if s.is_empty() => Vec::new(),
                    Value::String(s) => vec![json!({"type": "text", "text": s})],
                    Value::Array(blocks) => blocks,
                    other => vec![other],
                };
                blocks.extend(message.tool_calls.iter().map(tool_use_block));
                // Anthropic rejects empty assistant turns.
                if !blocks.is_empty() {
                    messages.push(json!({"role": "assistant", "content": blocks}));
                }
            }
            Role::Tool => messages.push(json!({
                "role": "user",
                "content": [{
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id.clone().unwrap_or_default(),
                    "content": message.content.text(),
                }],
            })),
        }
    }
    if messages.is_empty() {
        return Err(ctx.invalid_request(
            "Anthropic needs at least one user or assistant message besides the system prompt",
        ));
    }
    if req.wants_json() {
        system.push(JSON_INSTRUCTION.to_string());
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(wire_model));
    body.insert(
        "max_tokens".into(),
        json!(req.max_tokens.unwrap_or(default_max_tokens)),
    );
    body.insert("messages".into(), Value::Array(messages));
    let system = system
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>();
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let optional = [
        ("temperature", req.temperature.map(|t| json!(t))),
        ("top_p", req.top_p.map(|t| json!(t))),
        (
            "stop_sequences",
            (!req.stop.is_empty()).then(|| json!(req.stop)),
        ),
        (
            "tools",
            (!req.tools.is_empty()).then(|| Value::Array(req.tools.iter().map(tool).collect())),
        ),
        ("tool_choice", req.tool_choice.as_ref().map(tool_choice)),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            body.insert(key.into(), value);
        }
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

/// Message content: a string stays a string; parts become blocks.
fn content(content: &Content) -> Value {
    match content {
        Content::Text(text) => json!(text),
        Content::Parts(parts) => Value::Array(parts.iter().map(part).collect()),
    }
}

fn part(part: &ContentPart) -> Value {
    match part {
        ContentPart::Text { text } => json!({"type": "text", "text": text}),
        ContentPart::ImageUrl { image_url } => {
            let url = &image_url.url;
            let data_url = url
                .strip_prefix("data:")
                .and_then(|rest| rest.split_once(";base64,"));
            match data_url {
                Some((media_type, data)) => json!({"type": "image", "source": {
                    "type": "base64", "media_type": media_type, "data": data}}),
                None => json!({"type": "image", "source": {"type": "url", "url": url}}),
            }
        }
        ContentPart::Other(value) => value.clone(),
    }
}

/// OpenAI's `{"type": "function", "function": {name, description, parameters}}` becomes
/// `{name, description, input_schema}`; anything else is passed as it is.
fn tool(tool: &Value) -> Value {
    match tool.get("function") {
        Some(f) if tool.get("type").and_then(Value::as_str) == Some("function") => {
            let mut t = Map::new();
            t.insert("name".into(), f.get("name").cloned().unwrap_or(Value::Null));
            if let Some(d) = f.get("description") {
                t.insert("description".into(), d.clone());
            }
            t.insert(
                "input_schema".into(),
                f.get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            );
            Value::Object(t)
        }
        _ => tool.clone(),
    }
}

fn tool_choice(choice: &Value) -> Value {
    match choice {
        Value::String(s) if s == "required" => json!({"type": "any"}),
        Value::String(s) => json!({"type": s}),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            json!({"type": "tool", "name": o.get("function").and_then(|f| f.get("name"))})
        }
        other => other.clone(),
    }
}

/// An OpenAI-shaped tool call as a `tool_use` block.
fn tool_use_block(call: &Value) -> Value {
    let Some(function) = call.get("function") else {
        return call.clone();
    };
    let input = function
        .get("arguments")
        .and_then(Value::as_str)
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_else(|| json!({}));
    json!({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": input})
}

/// Anthropic's usage: its `input_tokens` leave out the cached ones, which are counted here as
/// part of the input (as OpenAI counts them), and also apart, to be priced as Anthropic prices
/// them.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
}

impl Counts {
    fn of(u: &Value) -> Counts {
        let (input, output) = usage(u);
        Counts {
            input,
            output,
            cache_read: u64_at(u, "cache_read_input_tokens"),
            cache_write: u64_at(u, "cache_creation_input_tokens"),
        }
    }

    /// Later counts (of a stream's `message_delta`) over earlier ones.
    fn or(self, earlier: Counts) -> Counts {
        Counts {
            input: self.input.or(earlier.input),
            output: self.output.or(earlier.output),
            cache_read: self.cache_read.or(earlier.cache_read),
            cache_write: self.cache_write.or(earlier.cache_write),
        }
    }

    fn usage(self) -> Option<Usage> {
        self.input.map(|i| {
            Usage::new(i, self.output.unwrap_or(0))
                .with_cache(self.cache_read.unwrap_or(0), self.cache_write.unwrap_or(0))
        })
    }
}

fn usage(u: &Value) -> (Option<u64>, Option<u64>) {
    let input = [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|k| u64_at(u, k))
    .reduce(|a, b| a + b);
    (input, u64_at(u, "output_tokens"))
}

/// Parses a complete response.
pub(super) fn parse(ctx: CallCtx<'_>, v: &Value, raw: &str) -> Result<Parsed, LlmError> {
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ctx.invalid_response("the response has no content blocks", raw))?;
    let text = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("");
    let tool_calls = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .cloned()
        .collect();
    let counts = v.get("usage").map(Counts::of).unwrap_or_default();
    Ok(Parsed {
        text,
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
        id: v.get("id").and_then(Value::as_str).map(str::to_string),
        usage: counts.usage(),
        finish_reason: v
            .get("stop_reason")
            .and_then(Value::as_str)
            .map(FinishReason::from_provider),
        tool_calls,
    })
}

/// A streamed answer being assembled from `message_*` and `content_block_*` events.
#[derive(Debug, Default)]
pub(crate) struct StreamState {
    pub(super) parsed: Parsed,
    /// `message_stop` was received.
    pub(super) done: bool,
    /// The usage reported so far.
    counts: Counts,
    /// Tool-use blocks by content index, with their partial JSON input.
    tool_blocks: Vec<(usize, Value, String)>,
}

impl StreamState {
    /// The input and output tokens reported so far.
    pub(super) fn tokens_so_far(&self) -> (Option<u64>, Option<u64>) {
        (self.counts.input, self.counts.output)
    }

    pub(super) fn on_event(
        &mut self,
        ctx: CallCtx<'_>,
        event: SseEvent,
    ) -> Result<Option<String>, LlmError> {
        if event.data.trim().is_empty() {
            return Ok(None);
        }
        let v: Value = serde_json::from_str(&event.data).map_err(|e| {
            ctx.stream_error(
                format!(
                    "an event is not valid JSON ({e}): {}",
                    crate::llm::error::excerpt(&event.data)
                ),
                true,
            )
        })?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        match kind {
            "message_start" => {
                let message = v.get("message").unwrap_or(&Value::Null);
                self.parsed.id = message
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.parsed.model = message
                    .get("model")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.counts = message.get("usage").map(Counts::of).unwrap_or_default();
            }
            "content_block_start" => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        self.tool_blocks.push((index, block.clone(), String::new()))
                    }
                    Some("text") => {
                        let text = block
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if !text.is_empty() {
                            self.parsed.text.push_str(text);
                            return Ok(Some(text.to_string()));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = v.get("delta").unwrap_or(&Value::Null);
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta
                            .get("text")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        self.parsed.text.push_str(text);
                        return Ok((!text.is_empty()).then(|| text.to_string()));
                    }
                    Some("input_json_delta") => {
                        let part = delta
                            .get("partial_json")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if let Some((_, _, json)) =
                            self.tool_blocks.iter_mut().find(|(i, _, _)| *i == index)
                        {
                            json.push_str(part);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.parsed.finish_reason = Some(FinishReason::from_provider(reason));
                }
                if let Some(u) = v.get("usage") {
                    self.counts = Counts::of(u).or(self.counts);
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                let error = v.get("error").unwrap_or(&v);
                let retryable = matches!(
                    error.get("type").and_then(Value::as_str),
                    Some("overloaded_error" | "rate_limit_error" | "api_error" | "timeout_error")
                );
                return Err(ctx.provider_error(error, retryable));
            }
            _ => {}
        }
        Ok(None)
    }

    pub(super) fn finish(mut self, ctx: CallCtx<'_>) -> Result<Parsed, LlmError> {
        if !self.done {
            return Err(ctx.stream_error(
                "the stream ended before message_stop: the answer is truncated",
                true,
            ));
        }
        for (_, mut block, json) in self.tool_blocks {
            if !json.is_empty() {
                block["input"] = serde_json::from_str(&json).map_err(|e| {
                    ctx.stream_error(format!("a tool call's input is not valid JSON ({e})"), true)
                })?;
            }
            self.parsed.tool_calls.push(block);
        }
        self.parsed.usage = self.counts.usage();
        Ok(self.parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Message;

    const CTX: CallCtx<'static> = CallCtx {
        provider: "anthropic",
        model: "anthropic/claude",
    };

    #[test]
    fn system_messages_move_to_the_system_field() {
        let req = ChatRequest::new("anthropic/claude")
            .system("one")
            .message(Message::system("two"))
            .user("hi")
            .json();
        let body = body(CTX, "claude", &req, false, 1024).unwrap();
        assert_eq!(body["system"], format!("one\n\ntwo\n\n{JSON_INSTRUCTION}"));
        assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(body["max_tokens"], 1024);
    }

    #[test]
    fn a_system_prompt_alone_is_an_invalid_request() {
        let req = ChatRequest::new("anthropic/claude").message(Message::system("only"));
        assert!(matches!(
            body(CTX, "claude", &req, false, 1),
            Err(LlmError::InvalidRequest { .. })
        ));
    }

    #[test]
    fn tools_images_and_tool_results_are_converted() {
        let req = ChatRequest::new("anthropic/claude")
            .user(vec![ContentPart::text("see"), ContentPart::image_url("data:image/png;base64,AAAA")])
            .tool(json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}))
            .message(Message::tool_result("t1", "42"));
        let body = body(CTX, "claude", &req, true, 1).unwrap();
        assert_eq!(
            body["messages"][0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        assert_eq!(
            body["tools"][0],
            json!({"name": "f", "input_schema": {"type": "object"}})
        );
        assert_eq!(body["messages"][1]["content"][0]["tool_use_id"], "t1");
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn a_response_is_parsed() {
        let v = json!({"id": "m1", "model": "claude", "content": [{"type": "text", "text": "Hi"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 4, "output_tokens": 1}});
        let p = parse(CTX, &v, "").unwrap();
        assert_eq!(p.text, "Hi");
        assert_eq!(p.usage, Some(Usage::new(4, 1)));
        assert_eq!(p.finish_reason, Some(FinishReason::Stop));
    }

    #[test]
    fn stream_events_assemble_the_answer() {
        let events = [
            json!({"type": "message_start", "message": {"id": "m", "model": "claude", "usage": {"input_tokens": 7, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\": 1}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
            json!({"type": "message_stop"}),
        ];
        let mut s = StreamState::default();
        let mut deltas = Vec::new();
        for e in events {
            let event = SseEvent {
                event: None,
                data: e.to_string(),
            };
            deltas.extend(s.on_event(CTX, event).unwrap());
        }
        assert_eq!(deltas, ["Hel", "lo"]);
        let p = s.finish(CTX).unwrap();
        assert_eq!(p.usage, Some(Usage::new(7, 3)));
        assert_eq!(p.tool_calls[0]["input"], json!({"a": 1}));
    }

    #[test]
    fn an_overloaded_error_event_is_retryable() {
        let mut s = StreamState::default();
        let data = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let err = s
            .on_event(
                CTX,
                SseEvent {
                    event: Some("error".into()),
                    data: data.to_string(),
                },
            )
            .unwrap_err();
        assert!(err.is_retryable());
        assert!(err.to_string().contains("Overloaded"));
    }
}
