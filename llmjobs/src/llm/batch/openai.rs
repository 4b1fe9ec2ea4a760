//! OpenAI's Batch API: a JSONL input file uploaded to `/files`, a batch created from it at
//! `/batches`, polled, and output and error files downloaded.

use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use super::wire::{self, Body, Found, ItemOutcome};
use super::{BatchInfo, BatchItemError, BatchItemErrorKind, BatchRequest, BatchState};
use crate::llm::router::ProviderConfig;
use crate::llm::{LlmClient, LlmError};

/// The chat endpoint every request of a batch goes to.
const ENDPOINT: &str = "/v1/chat/completions";

/// How many pages of 100 files or batches a lookup reads, newest first, before it concludes
/// there is no match: a marker is looked up right after the crash that left it unrecorded.
const LOOKUP_PAGES: usize = 10;

/// The metadata key holding the submitter's marker.
pub(super) const MARKER_KEY: &str = "llmjobs_marker";

pub(super) async fn upload(
    client: &LlmClient,
    provider: &ProviderConfig,
    requests: &[BatchRequest],
    bodies: Vec<Value>,
    marker: &str,
) -> Result<String, LlmError> {
    let filename = format!("{marker}.jsonl");
    if let Some(id) = find_file(client, provider, &filename).await? {
        tracing::info!(file = %id, %filename, "batch input file uploaded before; reusing it");
        return Ok(id);
    }
    let mut jsonl = String::new();
    for (item, body) in requests.iter().zip(bodies) {
        let line = json!({
            "custom_id": item.custom_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": body,
        });
        jsonl.push_str(&line.to_string());
        jsonl.push('\n');
    }
    let file = Part::bytes(jsonl.into_bytes())
        .file_name(filename)
        .mime_str("application/jsonl")
        .map_err(|e| LlmError::Config(format!("cannot build the upload: {e}")))?;
    let form = Form::new().text("purpose", "batch").part("file", file);
    let url = format!("{}/files", provider.base_url);
    let value = wire::send_json(
        client,
        provider,
        Method::POST,
        url,
        Body::Form(form),
        "file upload",
    )
    .await?;
    wire::str_at(&value, "id").ok_or_else(|| missing(provider, "id", &value))
}

/// The id of the newest batch input file named `filename`.
async fn find_file(
    client: &LlmClient,
    provider: &ProviderConfig,
    filename: &str,
) -> Result<Option<String>, LlmError> {
    let mut after: Option<String> = None;
    for _ in 0..LOOKUP_PAGES {
        let mut url = format!(
            "{}/files?purpose=batch&limit=100&order=desc",
            provider.base_url
        );
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let page =
            wire::send_json(client, provider, Method::GET, url, Body::None, "file list").await?;
        let data = page.get("data").and_then(Value::as_array);
        for file in data.into_iter().flatten() {
            if file.get("filename").and_then(Value::as_str) == Some(filename) {
                return Ok(wire::str_at(file, "id"));
            }
        }
        after = data
            .and_then(|d| d.last())
            .and_then(|f| wire::str_at(f, "id"));
        if page.get("has_more").and_then(Value::as_bool) != Some(true) || after.is_none() {
            break;
        }
    }
    Ok(None)
}

pub(super) async fn find(
    client: &LlmClient,
    provider: &ProviderConfig,
    input_file_id: &str,
) -> Result<Option<BatchInfo>, LlmError> {
    let mut after: Option<String> = None;
    for _ in 0..LOOKUP_PAGES {
        let mut url = format!("{}/batches?limit=100", provider.base_url);
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let page =
            wire::send_json(client, provider, Method::GET, url, Body::None, "batch list").await?;
        let data = page.get("data").and_then(Value::as_array);
        for batch in data.into_iter().flatten() {
            if batch.get("input_file_id").and_then(Value::as_str) == Some(input_file_id) {
                return parse(provider, batch).map(Some);
            }
        }
        after = data
            .and_then(|d| d.last())
            .and_then(|b| wire::str_at(b, "id"));
        if page.get("has_more").and_then(Value::as_bool) != Some(true) || after.is_none() {
            break;
        }
    }
    Ok(None)
}

pub(super) async fn create(
    client: &LlmClient,
    provider: &ProviderConfig,
    input_file_id: &str,
    marker: &str,
) -> Result<BatchInfo, LlmError> {
    let body = json!({
        "input_file_id": input_file_id,
        "endpoint": ENDPOINT,
        "completion_window": "24h",
        "metadata": {MARKER_KEY: marker},
    });
    let url = format!("{}/batches", provider.base_url);
    let value = wire::send_json(
        client,
        provider,
        Method::POST,
        url,
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
    let url = format!("{}/batches/{id}", provider.base_url);
    let what = format!("batch {id}");
    let value = wire::send_json(client, provider, Method::GET, url, Body::None, &what).await?;
    parse(provider, &value)
}

pub(super) async fn cancel(
    client: &LlmClient,
    provider: &ProviderConfig,
    id: &str,
) -> Result<BatchInfo, LlmError> {
    let url = format!("{}/batches/{id}/cancel", provider.base_url);
    let what = format!("batch {id}");
    let value = wire::send_json(client, provider, Method::POST, url, Body::None, &what).await?;
    parse(provider, &value)
}

pub(super) async fn results(
    client: &LlmClient,
    provider: &ProviderConfig,
    batch: &BatchInfo,
) -> Result<Found, LlmError> {
    let mut found = Found::new();
    for file in [&batch.output_file_id, &batch.error_file_id]
        .into_iter()
        .flatten()
    {
        let url = format!("{}/files/{file}/content", provider.base_url);
        let what = format!("file {file}");
        let bytes = wire::send(client, provider, Method::GET, url, Body::None, &what).await?;
        for line in wire::jsonl(provider, &what, &bytes)? {
            let Some(custom_id) = wire::str_at(&line, "custom_id") else {
                continue;
            };
            found.insert(custom_id, outcome(&line));
        }
    }
    Ok(found)
}

/// One line of an output or error file.
fn outcome(line: &Value) -> ItemOutcome {
    let response = line.get("response").filter(|r| r.is_object());
    let status = response
        .and_then(|r| r.get("status_code"))
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok());
    let body = response.and_then(|r| r.get("body"));
    if let (Some(200..=299), Some(body)) = (status, body) {
        return ItemOutcome::Answer(body.clone());
    }
    let error = line.get("error").filter(|e| e.is_object());
    let kind = match error.and_then(|e| e.get("code")).and_then(Value::as_str) {
        Some("batch_expired") => BatchItemErrorKind::Expired,
        Some("batch_cancelled") => BatchItemErrorKind::Cancelled,
        _ => BatchItemErrorKind::Failed,
    };
    let message = body
        .and_then(|b| b.get("error"))
        .or(error)
        .map(wire::error_text)
        .unwrap_or_else(|| "the provider gave no reason".into());
    ItemOutcome::Error(BatchItemError {
        kind,
        status,
        message,
    })
}

fn parse(provider: &ProviderConfig, v: &Value) -> Result<BatchInfo, LlmError> {
    let id = wire::str_at(v, "id").ok_or_else(|| missing(provider, "id", v))?;
    let status = v.get("status").and_then(Value::as_str).unwrap_or_default();
    let state = match status {
        "validating" => BatchState::Validating,
        "in_progress" => BatchState::InProgress,
        "finalizing" => BatchState::Finalizing,
        "cancelling" => BatchState::Cancelling,
        "completed" => BatchState::Completed,
        "expired" => BatchState::Expired,
        "failed" => BatchState::Failed,
        "cancelled" => BatchState::Cancelled,
        other => {
            return Err(crate::llm::provider::CallCtx {
                provider: &provider.name,
                model: &id,
            }
            .invalid_response(format!("unknown batch status `{other}`"), &v.to_string()));
        }
    };
    let errors = v
        .pointer("/errors/data")
        .and_then(Value::as_array)
        .map(|list| list.iter().map(wire::error_text).collect())
        .unwrap_or_default();
    Ok(BatchInfo {
        id,
        provider: provider.name.clone(),
        state,
        total: wire::u64_at(v, "/request_counts/total"),
        succeeded: wire::u64_at(v, "/request_counts/completed"),
        failed: wire::u64_at(v, "/request_counts/failed"),
        input_file_id: wire::str_at(v, "input_file_id"),
        output_file_id: wire::str_at(v, "output_file_id"),
        error_file_id: wire::str_at(v, "error_file_id"),
        errors,
    })
}

fn missing(provider: &ProviderConfig, field: &str, v: &Value) -> LlmError {
    crate::llm::provider::CallCtx {
        provider: &provider.name,
        model: "batch",
    }
    .invalid_response(format!("the answer has no `{field}`"), &v.to_string())
}
