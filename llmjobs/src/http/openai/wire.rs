//! OpenAI's wire format: the request as an OpenAI client sends it, and the completion,
//! chunks and errors as it expects them.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::JobId;
use crate::http::error::ApiError;
use crate::llm::{ChatRequest, ChatResponse};

/// OpenAI request fields that have no [`ChatRequest`] field and go to the provider as they are.
const PASSED_THROUGH: &[&str] = &[
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "user",
    "parallel_tool_calls",
    "reasoning_effort",
    "service_tier",
];

/// An OpenAI chat completions request, read.
#[derive(Debug)]
pub(crate) struct CompletionRequest {
    pub(crate) chat: ChatRequest,
    pub(crate) stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub(crate) include_usage: bool,
}

impl CompletionRequest {
    /// Reads an OpenAI request body into the `llm_call` job's arguments.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, OpenAiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| OpenAiError::invalid(format!("the body is not JSON: {e}"), None))?;
        let Value::Object(mut fields) = value else {
            return Err(OpenAiError::invalid("the body must be a JSON object", None));
        };
        let stream = match fields.remove("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(stream)) => stream,
            Some(_) => {
                return Err(OpenAiError::invalid(
                    "`stream` must be true or false",
                    Some("stream"),
                ));
            }
        };
        let include_usage = fields
            .remove("stream_options")
            .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
            .unwrap_or(false);
        match fields.remove("n") {
            None | Some(Value::Null) => {}
            Some(n) if n == json!(1) => {}
            Some(_) => {
                return Err(OpenAiError::invalid(
                    "only one choice (`n`: 1) is supported",
                    Some("n"),
                ));
            }
        }
        if let Some(max) = fields.remove("max_completion_tokens") {
            fields.entry("max_tokens").or_insert(max);
        }
        if !fields.get("model").is_some_and(Value::is_string) {
            return Err(OpenAiError::invalid("`model` is required", Some("model")));
        }
        if !fields.get("messages").is_some_and(Value::is_array) {
            return Err(OpenAiError::invalid(
                "`messages` is required (a list)",
                Some("messages"),
            ));
        }
        let mut passed = Map::new();
        for name in PASSED_THROUGH {
            if let Some(value) = fields.remove(*name) {
                passed.insert((*name).to_string(), value);
            }
        }
        if !passed.is_empty() {
            let options = fields
                .entry("extra_body")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(options) = options {
                for (name, value) in passed {
                    options.entry(name).or_insert(value);
                }
            }
        }
        let chat = ChatRequest::from_value(Value::Object(fields))
            .map_err(|e| OpenAiError::invalid(e.to_string(), None))?;
        Ok(CompletionRequest {
            chat,
            stream,
            include_usage,
        })
    }
}

/// The completion's id: the job's, so that a client can find the job from it.
pub(crate) fn completion_id(job: JobId) -> String {
    format!("chatcmpl-{job}")
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `chat.completion`: the whole answer.
pub(crate) fn completion(job: JobId, model: &str, answer: &ChatResponse) -> Value {
    let tool_calls = tool_calls(answer);
    let mut message = json!({
        "role": "assistant",
        "content": if answer.text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(answer.text.clone())
        },
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({
        "id": completion_id(job),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(answer),
            "logprobs": null,
        }],
        "usage": usage(answer),
    })
}

/// `chat.completion.chunk`: one piece of a streamed answer.
pub(crate) fn chunk(job: JobId, model: &str, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": completion_id(job),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": null}],
    })
}

/// The last chunk of a stream that asked for `include_usage`: no choices, the usage.
pub(crate) fn usage_chunk(job: JobId, model: &str, answer: &ChatResponse) -> Value {
    json!({
        "id": completion_id(job),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model,
        "choices": [],
        "usage": usage(answer),
    })
}

pub(crate) fn finish_reason(answer: &ChatResponse) -> String {
    answer
        .finish_reason
        .as_ref()
        .map_or_else(|| "stop".to_string(), |r| r.as_str().to_string())
}

fn usage(answer: &ChatResponse) -> Value {
    json!({
        "prompt_tokens": answer.usage.input_tokens,
        "completion_tokens": answer.usage.output_tokens,
        "total_tokens": answer.usage.total(),
    })
}

/// The answer's tool calls in OpenAI's shape (Anthropic's `tool_use` blocks converted).
pub(crate) fn tool_calls(answer: &ChatResponse) -> Vec<Value> {
    answer
        .tool_calls
        .iter()
        .map(|call| {
            if call.get("type").and_then(Value::as_str) == Some("tool_use") {
                json!({
                    "id": call.get("id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": call.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": call.get("input").map(Value::to_string).unwrap_or_default(),
                    },
                })
            } else {
                call.clone()
            }
        })
        .collect()
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct OpenAiError {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl OpenAiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &str,
        code: Option<&str>,
        message: impl std::fmt::Display,
    ) -> Self {
        OpenAiError {
            status,
            body: json!({"error": {
                "message": message.to_string(),
                "type": kind,
                "param": null,
                "code": code,
            }}),
        }
    }

    pub(crate) fn invalid(message: impl std::fmt::Display, param: Option<&str>) -> Self {
        let mut error = OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        );
        error.body["error"]["param"] = param.map_or(Value::Null, |p| Value::String(p.into()));
        error
    }

    /// The job behind the error, for a client that wants to look at it.
    pub(crate) fn with_job(mut self, job: JobId) -> Self {
        self.body["error"]["job_id"] = Value::String(job.to_string());
        self
    }
}

impl From<crate::Error> for OpenAiError {
    fn from(e: crate::Error) -> Self {
        ApiError::from(e).into()
    }
}

/// OpenAI's error type for a status code.
pub(crate) fn kind_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        429 | 503 => "rate_limit_error",
        _ => "api_error",
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        let (status, body) = e.into_parts();
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the request failed")
            .to_string();
        OpenAiError::new(status, kind_of(status), None, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_openai_request_becomes_the_jobs_arguments() {
        let body = json!({
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": true,
            "stream_options": {"include_usage": true},
            "seed": 7,
            "max_completion_tokens": 20,
        });
        let request = CompletionRequest::parse(body.to_string().as_bytes()).unwrap();
        assert!(request.stream && request.include_usage);
        assert_eq!(request.chat.max_tokens, Some(20));
        assert_eq!(request.chat.provider_options["seed"], json!(7));
        assert!(!request.chat.extra.contains_key("stream"));
    }

    #[test]
    fn bad_requests_say_which_parameter() {
        let no_model = CompletionRequest::parse(br#"{"messages": []}"#).unwrap_err();
        assert_eq!(no_model.status, StatusCode::BAD_REQUEST);
        assert_eq!(no_model.body["error"]["param"], "model");
        let many =
            CompletionRequest::parse(br#"{"model": "m", "messages": [], "n": 2}"#).unwrap_err();
        assert_eq!(many.body["error"]["param"], "n");
        assert_eq!(many.body["error"]["type"], "invalid_request_error");
    }
}
