//! What both batch APIs share on the wire: one HTTP call with the provider's headers and
//! errors, and a request's outcome as read from a results file.

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::Value;

use super::BatchItemError;
use crate::llm::provider::{self, CallCtx};
use crate::llm::retry::retry_after_from_headers;
use crate::llm::router::ProviderConfig;
use crate::llm::{LlmClient, LlmError};

/// A request's outcome as a results file gives it: the chat API's response body, or an error.
pub(super) enum ItemOutcome {
    Answer(Value),
    Error(BatchItemError),
}

/// Outcomes by custom id.
pub(super) type Found = HashMap<String, ItemOutcome>;

/// The body of a request to a batch endpoint.
pub(super) enum Body {
    None,
    Json(Value),
    Form(reqwest::multipart::Form),
}

/// Sends one request to a batch endpoint of `provider`; the 2xx body, or the error.
/// `what` names the call in errors (`batch batch_abc`, `file upload`).
pub(super) async fn send(
    client: &LlmClient,
    provider: &ProviderConfig,
    method: reqwest::Method,
    url: String,
    body: Body,
    what: &str,
) -> Result<Vec<u8>, LlmError> {
    let ctx = CallCtx {
        provider: &provider.name,
        model: what,
    };
    let timeout = client.request_timeout();
    let mut request = client
        .http()
        .request(method, url)
        .headers(provider::headers(provider)?)
        .timeout(timeout);
    request = match body {
        Body::None => request,
        Body::Json(value) => request.json(&value),
        Body::Form(form) => request.multipart(form),
    };
    let response = request.send().await.map_err(|e| transport(ctx, e))?;
    let status = response.status();
    if !status.is_success() {
        let retry_after = retry_after_from_headers(response.headers(), SystemTime::now());
        let body = response.text().await.unwrap_or_default();
        return Err(provider::http_error(
            ctx,
            status.as_u16(),
            retry_after,
            &body,
        ));
    }
    response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| transport(ctx, e))
}

/// Sends one request and parses the answer as a JSON object.
pub(super) async fn send_json(
    client: &LlmClient,
    provider: &ProviderConfig,
    method: reqwest::Method,
    url: String,
    body: Body,
    what: &str,
) -> Result<Value, LlmError> {
    let bytes = send(client, provider, method, url, body, what).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let ctx = CallCtx {
            provider: &provider.name,
            model: what,
        };
        ctx.invalid_response(
            format!("the body is not valid JSON ({e})"),
            &String::from_utf8_lossy(&bytes),
        )
    })
}

/// The lines of a JSONL file, parsed; a line that is not JSON is an invalid response.
pub(super) fn jsonl(
    provider: &ProviderConfig,
    what: &str,
    bytes: &[u8],
) -> Result<Vec<Value>, LlmError> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|e| {
                let ctx = CallCtx {
                    provider: &provider.name,
                    model: what,
                };
                ctx.invalid_response(format!("a results line is not valid JSON ({e})"), line)
            })
        })
        .collect()
}

/// The message of an error object such as `{"message": "…", "type": "…"}`.
pub(super) fn error_text(error: &Value) -> String {
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| error.to_string());
    match error
        .get("type")
        .or_else(|| error.get("code"))
        .and_then(Value::as_str)
    {
        Some(kind) if !message.contains(kind) => format!("{message} ({kind})"),
        _ => message,
    }
}

pub(super) fn str_at(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

pub(super) fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn transport(ctx: CallCtx<'_>, error: reqwest::Error) -> LlmError {
    let error = error.without_url();
    LlmError::Transport {
        provider: ctx.provider.to_string(),
        model: ctx.model.to_string(),
        reason: crate::llm::error::describe_chain(&error),
        source: error,
    }
}
