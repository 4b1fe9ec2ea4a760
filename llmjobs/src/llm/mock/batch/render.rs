//! How mock batches look on the wire: OpenAI batch objects and output and error files,
//! Anthropic message batch objects and results.

use serde_json::{Value, json};

use super::{Batch, MockBatchClock, Outcome, answered_so_far};

/// Counts of a batch: `(succeeded, failed, expired, cancelled)`; while it runs, the requests
/// the clock says are answered count as succeeded.
fn counts(batch: &Batch, clock: MockBatchClock) -> (usize, usize, usize, usize) {
    let Some(outcomes) = &batch.outcomes else {
        let answered = answered_so_far(batch, clock).min(batch.items.len().saturating_sub(1));
        return (answered, 0, 0, 0);
    };
    let mut counts = (0, 0, 0, 0);
    for outcome in outcomes {
        match outcome {
            Outcome::Answered { status, .. } if (200..300).contains(status) => counts.0 += 1,
            Outcome::Answered { .. } => counts.1 += 1,
            Outcome::Expired => counts.2 += 1,
            Outcome::Cancelled => counts.3 += 1,
        }
    }
    counts
}

pub(super) fn openai(batch: &Batch, clock: MockBatchClock, status: &str) -> Value {
    let (succeeded, failed, expired, cancelled) = counts(batch, clock);
    json!({
        "id": batch.id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": null,
        "input_file_id": batch.input_file_id,
        "completion_window": "24h",
        "status": status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "request_counts": {
            "total": batch.items.len(),
            "completed": succeeded,
            "failed": failed + expired + cancelled,
        },
        "metadata": batch.metadata,
    })
}

/// The output file (answers) and error file (errors, expired and cancelled requests).
pub(super) fn openai_files(batch: &Batch) -> (String, String) {
    let (mut output, mut errors) = (String::new(), String::new());
    let outcomes = batch.outcomes.as_deref().unwrap_or_default();
    for (n, (item, outcome)) in batch.items.iter().zip(outcomes).enumerate() {
        let id = format!("batch_req_mock_{n}");
        let (line, into) = match outcome {
            Outcome::Answered { status, body } => (
                json!({
                    "id": id,
                    "custom_id": item.custom_id,
                    "response": {"status_code": status, "request_id": format!("req_mock_{n}"), "body": body},
                    "error": null,
                }),
                if (200..300).contains(status) {
                    &mut output
                } else {
                    &mut errors
                },
            ),
            Outcome::Expired | Outcome::Cancelled => {
                let (code, message) = match outcome {
                    Outcome::Expired => (
                        "batch_expired",
                        "This request could not be executed before the completion window expired.",
                    ),
                    _ => (
                        "batch_cancelled",
                        "This request was not executed because the batch was cancelled.",
                    ),
                };
                (
                    json!({
                        "id": id,
                        "custom_id": item.custom_id,
                        "response": null,
                        "error": {"code": code, "message": message},
                    }),
                    &mut errors,
                )
            }
        };
        into.push_str(&line.to_string());
        into.push('\n');
    }
    (output, errors)
}

pub(super) fn anthropic(batch: &Batch, clock: MockBatchClock, host: &str) -> Value {
    let (succeeded, errored, expired, canceled) = counts(batch, clock);
    let ended = batch.outcomes.is_some();
    let processing = batch.items.len() - succeeded - errored - expired - canceled;
    let status = match (ended, batch.cancel_requested) {
        (true, _) => "ended",
        (false, true) => "canceling",
        (false, false) => "in_progress",
    };
    json!({
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": processing,
            "succeeded": succeeded,
            "errored": errored,
            "canceled": canceled,
            "expired": expired,
        },
        "created_at": batch.created_at.to_string(),
        "cancel_initiated_at": if batch.cancel_requested { json!(batch.created_at.to_string()) } else { Value::Null },
        "results_url": if ended { json!(format!("http://{host}/v1/messages/batches/{}/results", batch.id)) } else { Value::Null },
    })
}

pub(super) fn anthropic_results(batch: &Batch) -> String {
    let mut lines = String::new();
    let outcomes = batch.outcomes.as_deref().unwrap_or_default();
    for (item, outcome) in batch.items.iter().zip(outcomes) {
        let result = match outcome {
            Outcome::Answered { status, body } if (200..300).contains(status) => {
                json!({"type": "succeeded", "message": body})
            }
            Outcome::Answered { body, .. } => json!({"type": "errored", "error": body}),
            Outcome::Expired => json!({"type": "expired"}),
            Outcome::Cancelled => json!({"type": "canceled"}),
        };
        lines.push_str(&json!({"custom_id": item.custom_id, "result": result}).to_string());
        lines.push('\n');
    }
    lines
}
