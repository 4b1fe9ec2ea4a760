//! Anthropic's Message Batches: `/v1/messages/batches`, created with the requests inline,
//! polled, and their results read as JSONL.

use reqwest::Method;
use serde_json::{Value, json};

use super::wire::{self, Body, Found, ItemOutcome};
use super::{BatchInfo, BatchItemError, BatchItemErrorKind, BatchRequest, BatchState};
use crate::llm::router::ProviderConfig;
use crate::llm::{LlmClient, LlmError};

/// Anthropic's rule for custom ids: 1 to 64 of `a-z A-Z 0-9 _ -`.
pub(super) fn check_custom_id(model: &str, custom_id: &str) -> Result<(), LlmError> {
    let valid = (1..=64).contains(&custom_id.len())
        && custom_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        return Ok(());
    }
    Err(LlmError::InvalidRequest {
        model: model.to_string(),
        reason: format!(
            "Anthropic batch custom ids are 1 to 64 characters of a-z, A-Z, 0-9, `_` and `-`; \
             `{custom_id}` is not"
        ),
    })
}

fn batches_url(provider: &ProviderConfig) -> String {
    format!("{}/v1/messages/batches", provider.base_url)
}

pub(super) async fn create(
    client: &LlmClient,
    provider: &ProviderConfig,
    requests: &[BatchRequest],
    bodies: Vec<Value>,
) -> Result<BatchInfo, LlmError> {
    let requests: Vec<Value> = requests
        .iter()
        .zip(bodies)
        .map(|(item, params)| json!({"custom_id": item.custom_id, "params": params}))
        .collect();
    let body = json!({ "requests": requests });
    let value = wire::send_json(
        client,
        provider,
        Method::POST,
        batches_url(provider),
        Body::Json(body),
        "batch create",
    )
    .await?;
    parse(provider, &value)
}

pub(super) async fn status(
    client: &LlmClient,
    provider: &ProviderConfig,
    id: &str,
) -> Result<BatchInfo, LlmError> {
    let url = format!("{}/{id}", batches_url(provider));
    let what = format!("batch {id}");
    let value = wire::send_json(client, provider, Method::GET, url, Body::None, &what).await?;
    parse(provider, &value)
}

pub(super) async fn cancel(
    client: &LlmClient,
    provider: &ProviderConfig,
    id: &str,
) -> Result<BatchInfo, LlmError> {
    let url = format!("{}/{id}/cancel", batches_url(provider));
    let what = format!("batch {id}");
    let value = wire::send_json(client, provider, Method::POST, url, Body::None, &what).await?;
    parse(provider, &value)
}

pub(super) async fn results(
    client: &LlmClient,
    provider: &ProviderConfig,
    batch: &BatchInfo,
) -> Result<Found, LlmError> {
    let url = format!("{}/{}/results", batches_url(provider), batch.id);
    let what = format!("batch {} results", batch.id);
    let bytes = wire::send(client, provider, Method::GET, url, Body::None, &what).await?;
    let mut found = Found::new();
    for line in wire::jsonl(provider, &what, &bytes)? {
        let Some(custom_id) = wire::str_at(&line, "custom_id") else {
            continue;
        };
        found.insert(custom_id, outcome(&line));
    }
    Ok(found)
}

fn outcome(line: &Value) -> ItemOutcome {
    let result = line.get("result").unwrap_or(&Value::Null);
    let error = |kind, status, message: String| {
        ItemOutcome::Error(BatchItemError {
            kind,
            status,
            message,
        })
    };
    match result.get("type").and_then(Value::as_str) {
        Some("succeeded") => match result.get("message") {
            Some(message) => ItemOutcome::Answer(message.clone()),
            None => error(
                BatchItemErrorKind::Failed,
                None,
                "a succeeded result without a message".into(),
            ),
        },
        Some("errored") => {
            let inner = result
                .pointer("/error/error")
                .or_else(|| result.get("error"))
                .unwrap_or(&Value::Null);
            let status = match inner.get("type").and_then(Value::as_str) {
                Some("invalid_request_error") => Some(400),
                Some("authentication_error") => Some(401),
                Some("permission_error") => Some(403),
                Some("not_found_error") => Some(404),
                Some("request_too_large") => Some(413),
                Some("rate_limit_error") => Some(429),
                Some("api_error") => Some(500),
                Some("overloaded_error") => Some(529),
                _ => None,
            };
            error(BatchItemErrorKind::Failed, status, wire::error_text(inner))
        }
        Some("canceled") => error(
            BatchItemErrorKind::Cancelled,
            None,
            "the batch was cancelled before this request was answered".into(),
        ),
        Some("expired") => error(
            BatchItemErrorKind::Expired,
            None,
            "the batch expired before this request was answered".into(),
        ),
        other => error(
            BatchItemErrorKind::Failed,
            None,
            format!("unknown result type {other:?}"),
        ),
    }
}

fn parse(provider: &ProviderConfig, v: &Value) -> Result<BatchInfo, LlmError> {
    let ctx = crate::llm::provider::CallCtx {
        provider: &provider.name,
        model: "batch",
    };
    let id = wire::str_at(v, "id")
        .ok_or_else(|| ctx.invalid_response("the answer has no `id`", &v.to_string()))?;
    let count = |name: &str| wire::u64_at(v, &format!("/request_counts/{name}"));
    let (processing, succeeded) = (count("processing"), count("succeeded"));
    let (errored, canceled, expired) = (count("errored"), count("canceled"), count("expired"));
    let cancel_asked = v.get("cancel_initiated_at").is_some_and(|t| !t.is_null());
    let state = match v.get("processing_status").and_then(Value::as_str) {
        Some("in_progress") => BatchState::InProgress,
        Some("canceling") => BatchState::Cancelling,
        Some("ended") if cancel_asked => BatchState::Cancelled,
        Some("ended") if expired > 0 => BatchState::Expired,
        Some("ended") => BatchState::Completed,
        other => {
            return Err(ctx.invalid_response(
                format!("unknown processing status {other:?}"),
                &v.to_string(),
            ));
        }
    };
    Ok(BatchInfo {
        id,
        provider: provider.name.clone(),
        state,
        total: processing + succeeded + errored + canceled + expired,
        succeeded,
        failed: errored + canceled + expired,
        input_file_id: None,
        output_file_id: None,
        error_file_id: None,
        errors: Vec::new(),
    })
}
