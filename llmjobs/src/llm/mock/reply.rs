//! What the mock answers: scripted replies, the default deterministic answer, and the bodies
//! and event streams of both APIs.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::MockRoute;

/// A scripted reply of the [`MockLlmServer`](super::MockLlmServer).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum MockReply {
    /// The default answer: deterministic, derived from the prompt (valid JSON when JSON was
    /// asked for; a validation verdict for agent-check prompts), with plausible usage.
    Default,
    /// An answer with this text (streamed word by word when the request streams).
    Text(String),
    /// An HTTP error in the route's error shape.
    Status {
        /// The status code.
        status: u16,
        /// The error message.
        message: String,
        /// Extra response headers.
        headers: Vec<(String, String)>,
    },
    /// An answer cut off at `max_tokens`: this text (`content: null` when empty) with
    /// `finish_reason: "length"` (Anthropic: `stop_reason: "max_tokens"`).
    LengthLimited(String),
    /// A 200 whose body (or, for streams, whose second event) is not valid JSON.
    MalformedJson,
    /// For streams: half of the events, then a clean end of the body without the final event.
    /// For plain requests: the JSON body cut in half.
    TruncatedStream,
    /// For streams: half of the events, then the connection is aborted. For plain requests,
    /// the same as [`MockReply::DropConnection`].
    ResetMidStream,
    /// The connection is closed without any response.
    DropConnection,
    /// Another reply, after a delay.
    Delayed(Duration, Box<MockReply>),
    /// An answer with this text whose usage reports prompt tokens read from and written to
    /// the provider's prompt cache, in the route's own fields (OpenAI
    /// `prompt_tokens_details.cached_tokens`; Anthropic `cache_read_input_tokens` and
    /// `cache_creation_input_tokens`, left out of its `input_tokens`).
    CachedText {
        /// The answer.
        text: String,
        /// Prompt tokens read from the cache.
        cache_read: u64,
        /// Prompt tokens written to the cache (OpenAI reports none).
        cache_write: u64,
    },
}

impl MockReply {
    /// An answer with this text.
    pub fn text(text: impl Into<String>) -> Self {
        MockReply::Text(text.into())
    }

    /// An HTTP error with this status and message.
    pub fn status(status: u16, message: impl Into<String>) -> Self {
        MockReply::Status {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// An answer cut off at `max_tokens`, with this much text (maybe none).
    pub fn length_limited(text: impl Into<String>) -> Self {
        MockReply::LengthLimited(text.into())
    }

    /// A 429 with `Retry-After: <seconds>`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        MockReply::Status {
            status: 429,
            message: "Rate limit reached (mock)".into(),
            headers: vec![("retry-after".into(), retry_after_secs.to_string())],
        }
    }

    /// A 500.
    pub fn server_error() -> Self {
        MockReply::status(500, "The mock server had an internal error")
    }

    /// An answer with this text, `cache_read` of whose prompt tokens were read from the
    /// prompt cache and `cache_write` written to it.
    pub fn cached_text(text: impl Into<String>, cache_read: u64, cache_write: u64) -> Self {
        MockReply::CachedText {
            text: text.into(),
            cache_read,
            cache_write,
        }
    }

    /// This reply after `delay`.
    pub fn delayed(self, delay: Duration) -> Self {
        MockReply::Delayed(delay, Box::new(self))
    }
}

/// What the route's request asks for, as far as the mock cares.
pub(super) struct Prompt {
    pub(super) model: String,
    pub(super) stream: bool,
    include_usage: bool,
    wants_json: bool,
    all_text: String,
    last_user: String,
    messages: usize,
}

impl Prompt {
    pub(super) fn read(route: MockRoute, body: &Value) -> Prompt {
        let mut all_text = String::new();
        let mut last_user = String::new();
        if let Some(system) = body.get("system") {
            all_text.push_str(&text_of(system));
        }
        let messages = body.get("messages").and_then(Value::as_array);
        for m in messages.into_iter().flatten() {
            let text = m.get("content").map(text_of).unwrap_or_default();
            all_text.push('\n');
            all_text.push_str(&text);
            if m.get("role").and_then(Value::as_str) == Some("user") {
                last_user = text;
            }
        }
        let format = body
            .pointer("/response_format/type")
            .and_then(Value::as_str);
        let wants_json = match route {
            MockRoute::OpenAiChat => matches!(format, Some("json_object" | "json_schema")),
            MockRoute::AnthropicMessages => body
                .get("system")
                .map(text_of)
                .is_some_and(|s| s.contains("JSON object")),
        };
        Prompt {
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock")
                .to_string(),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            wants_json,
            all_text,
            last_user,
            messages: messages.map_or(0, Vec::len),
        }
    }

    /// The default answer.
    pub(super) fn default_answer(&self) -> String {
        let keys = quoted_identifiers(&self.all_text);
        if self.all_text.contains("validation_passed") {
            let details: Map<String, Value> = keys
                .into_iter()
                .filter(|k| !matches!(k.as_str(), "validation_passed" | "reasoning" | "details"))
                .map(|k| (k, json!(true)))
                .collect();
            return json!({
                "validation_passed": true,
                "reasoning": "Mock validator: the task was understood and executed; the answer looks correct.",
                "details": details,
            })
            .to_string();
        }
        let summary: String = self.last_user.chars().take(60).collect();
        let answer = if summary.trim().is_empty() {
            "Mock answer.".to_string()
        } else {
            format!("Mock answer to: {}", summary.trim())
        };
        if !self.wants_json {
            return answer;
        }
        let mut object = Map::new();
        object.insert("answer".into(), json!(answer));
        for key in quoted_identifiers(&self.all_text) {
            object.entry(key).or_insert_with(|| json!("mock"));
        }
        Value::Object(object).to_string()
    }

    /// Whether the prompt's text (system prompt and messages) contains `needle`.
    pub(super) fn contains(&self, needle: &str) -> bool {
        self.all_text.contains(needle)
    }

    pub(super) fn input_tokens(&self) -> u64 {
        (self.all_text.len() as u64).div_ceil(4) + 3 * self.messages as u64
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Identifiers in quotes or backticks (`'status'`, `"syntax_ok"`, as well as validator
/// feedback's `` `name` ``), in order, deduplicated: the fields a prompt most likely asks for.
fn quoted_identifiers(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for quote in ['\'', '"', '`'] {
        let mut parts = text.split(quote);
        parts.next();
        for (i, candidate) in parts.enumerate() {
            let is_identifier = i % 2 == 0
                && !candidate.is_empty()
                && candidate.len() <= 40
                && candidate
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !candidate.starts_with(|c: char| c.is_ascii_digit());
            if is_identifier && !found.iter().any(|f| f == candidate) {
                found.push(candidate.to_string());
            }
        }
    }
    found
}

/// How a reply goes out on the wire.
pub(super) enum Wire {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        content_type: &'static str,
        body: String,
    },
    /// An event stream: these chunks, then either a clean end or an abort.
    Stream { chunks: Vec<String>, abort: bool },
    /// No response: close the connection.
    Drop,
}

pub(super) fn render(route: MockRoute, prompt: &Prompt, reply: &MockReply, serial: u64) -> Wire {
    match reply {
        MockReply::Default => answer(
            route,
            prompt,
            &prompt.default_answer(),
            serial,
            Ending::Complete,
        ),
        MockReply::Text(text) => answer(route, prompt, text, serial, Ending::Complete),
        MockReply::LengthLimited(text) => answer(route, prompt, text, serial, Ending::Length),
        MockReply::Status {
            status,
            message,
            headers,
        } => Wire::Full {
            status: *status,
            headers: headers.clone(),
            content_type: "application/json",
            body: error_body(route, *status, message),
        },
        MockReply::MalformedJson if prompt.stream => {
            let mut chunks = match answer(route, prompt, "partial", serial, Ending::Complete) {
                Wire::Stream { chunks, .. } => chunks,
                _ => Vec::new(),
            };
            chunks.truncate(1);
            chunks.push("data: {\"choices\": [{\"delta\": {\"content\": \"oops\"\n\n".to_string());
            Wire::Stream {
                chunks,
                abort: false,
            }
        }
        MockReply::MalformedJson => Wire::Full {
            status: 200,
            headers: Vec::new(),
            content_type: "application/json",
            body: "{\"id\": \"broken\", \"choices\": [{\"message\": <html>Bad Gateway</html>"
                .into(),
        },
        MockReply::TruncatedStream => {
            let text = prompt.default_answer();
            answer(
                route,
                prompt,
                &text,
                serial,
                Ending::Truncated { abort: false },
            )
        }
        MockReply::ResetMidStream if prompt.stream => {
            let text = prompt.default_answer();
            answer(
                route,
                prompt,
                &text,
                serial,
                Ending::Truncated { abort: true },
            )
        }
        MockReply::ResetMidStream | MockReply::DropConnection => Wire::Drop,
        MockReply::Delayed(_, inner) => render(route, prompt, inner, serial),
        MockReply::CachedText {
            text,
            cache_read,
            cache_write,
        } => answer_cached(
            route,
            prompt,
            text,
            serial,
            Ending::Complete,
            Cached {
                read: *cache_read,
                write: *cache_write,
            },
        ),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Ending {
    Complete,
    /// Complete, but stopped by `max_tokens`.
    Length,
    Truncated {
        abort: bool,
    },
}

/// Prompt tokens read from and written to the prompt cache, as an answer reports them.
#[derive(Clone, Copy, Default)]
struct Cached {
    read: u64,
    write: u64,
}

impl Cached {
    /// The usage object of `route`.
    fn usage(self, route: MockRoute, input: u64, output: u64) -> Value {
        match route {
            MockRoute::OpenAiChat => json!({
                "prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output,
                "prompt_tokens_details": {"cached_tokens": self.read},
            }),
            MockRoute::AnthropicMessages => json!({
                "input_tokens": input - self.read - self.write, "output_tokens": output,
                "cache_read_input_tokens": self.read, "cache_creation_input_tokens": self.write,
            }),
        }
    }
}

fn answer(route: MockRoute, prompt: &Prompt, text: &str, serial: u64, ending: Ending) -> Wire {
    answer_cached(route, prompt, text, serial, ending, Cached::default())
}

fn answer_cached(
    route: MockRoute,
    prompt: &Prompt,
    text: &str,
    serial: u64,
    ending: Ending,
    cached: Cached,
) -> Wire {
    let input = prompt.input_tokens().max(cached.read + cached.write);
    let output = (text.len() as u64).div_ceil(4).max(1);
    let length = ending == Ending::Length;
    let (finish, stop_reason) = if length {
        ("length", "max_tokens")
    } else {
        ("stop", "end_turn")
    };
    let content = if length && text.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    if !prompt.stream {
        let body = match route {
            MockRoute::OpenAiChat => json!({
                "id": format!("chatcmpl-mock-{serial}"),
                "object": "chat.completion",
                "created": 0,
                "model": prompt.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                "usage": cached.usage(route, input, output),
            }),
            MockRoute::AnthropicMessages => json!({
                "id": format!("msg_mock_{serial}"),
                "type": "message",
                "role": "assistant",
                "model": prompt.model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": cached.usage(route, input, output),
            }),
        };
        let mut body = body.to_string();
        if let Ending::Truncated { .. } = ending {
            body.truncate(body.len() / 2);
        }
        return Wire::Full {
            status: 200,
            headers: Vec::new(),
            content_type: "application/json",
            body,
        };
    }
    let words = if text.is_empty() {
        Vec::new()
    } else {
        split_words(text)
    };
    let mut chunks = match route {
        MockRoute::OpenAiChat => {
            openai_events(prompt, &words, input, output, serial, finish, cached)
        }
        MockRoute::AnthropicMessages => {
            anthropic_events(prompt, &words, input, output, serial, stop_reason, cached)
        }
    };
    match ending {
        Ending::Complete | Ending::Length => Wire::Stream {
            chunks,
            abort: false,
        },
        Ending::Truncated { abort } => {
            chunks.truncate(chunks.len() / 2);
            Wire::Stream { chunks, abort }
        }
    }
}

/// Splits text into word-sized pieces that join back to the text.
fn split_words(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' && i > start {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() || pieces.is_empty() {
        pieces.push(&text[start..]);
    }
    pieces
}

fn openai_events(
    prompt: &Prompt,
    words: &[&str],
    input: u64,
    output: u64,
    serial: u64,
    finish: &str,
    cached: Cached,
) -> Vec<String> {
    let chunk = |choices: Value, usage: Value| {
        let event = json!({
            "id": format!("chatcmpl-mock-{serial}"),
            "object": "chat.completion.chunk",
            "created": 0,
            "model": prompt.model,
            "choices": choices,
            "usage": usage,
        });
        format!("data: {event}\n\n")
    };
    let mut events = vec![chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        Value::Null,
    )];
    for word in words {
        events.push(chunk(
            json!([{"index": 0, "delta": {"content": word}, "finish_reason": null}]),
            Value::Null,
        ));
    }
    events.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
        Value::Null,
    ));
    if prompt.include_usage {
        events.push(chunk(
            json!([]),
            cached.usage(MockRoute::OpenAiChat, input, output),
        ));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

fn anthropic_events(
    prompt: &Prompt,
    words: &[&str],
    input: u64,
    output: u64,
    serial: u64,
    stop_reason: &str,
    cached: Cached,
) -> Vec<String> {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
            "id": format!("msg_mock_{serial}"), "type": "message", "role": "assistant",
            "model": prompt.model, "content": [], "stop_reason": null,
            "usage": cached.usage(MockRoute::AnthropicMessages, input, 1)}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for word in words {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": word}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output}})));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    events
}

fn error_body(route: MockRoute, status: u16, message: &str) -> String {
    let kind = match status {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    match route {
        MockRoute::OpenAiChat => json!({"error": {"message": message, "type": kind, "code": null}}),
        MockRoute::AnthropicMessages => {
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(body: Value) -> Prompt {
        Prompt::read(MockRoute::OpenAiChat, &body)
    }

    #[test]
    fn json_requests_get_json_with_the_quoted_fields() {
        let p = prompt(
            json!({"model": "m", "response_format": {"type": "json_object"}, "messages": [
            {"role": "user", "content": "Give a JSON object with a 'status' field and a \"data\" array."}]}),
        );
        let answer: Value = serde_json::from_str(&p.default_answer()).unwrap();
        assert_eq!(answer["status"], "mock");
        assert_eq!(answer["data"], "mock");
    }

    #[test]
    fn checker_prompts_get_a_passing_verdict() {
        let p = prompt(json!({"model": "m", "messages": [{"role": "user",
            "content": "Respond JSON: {\"validation_passed\": <bool>, \"details\": {\"syntax_ok\": <bool>}}"}]}));
        let verdict: Value = serde_json::from_str(&p.default_answer()).unwrap();
        assert_eq!(verdict["validation_passed"], true);
        assert_eq!(verdict["details"], json!({"syntax_ok": true}));
    }

    #[test]
    fn words_join_back_to_the_text() {
        assert_eq!(split_words("a bc  d").concat(), "a bc  d");
        assert_eq!(split_words(""), [""]);
    }
}
