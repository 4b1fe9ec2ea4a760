//! The JSON shapes of `--json` and `--jsonl`: times as RFC 3339 strings, durations in
//! milliseconds, every field present (null when unknown).

use llmjobs::{JobRecord, JobStatus, StepInfo};
use serde_json::{Value, json};

use crate::output::{ProgressFigures, between, rfc3339};

/// A job's status as JSON.
pub(crate) fn status(s: &JobStatus) -> Value {
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
    json!({
        "id": s.id.to_string(),
        "name": s.name,
        "state": s.state.as_str(),
        "attempts": s.attempts,
        "max_attempts": s.max_attempts,
        "error": s.error,
        "needs_review": s.needs_review,
        "cancel_requested": s.cancel_requested,
        "priority": s.priority,
        "owner": s.owner,
        "concurrency_key": s.concurrency_key,
        "idempotency_key": s.idempotency_key,
        "created_at": rfc3339(s.created_at),
        "run_at": rfc3339(s.run_at),
        "started_at": s.started_at.map(rfc3339),
        "completed_at": s.completed_at.map(rfc3339),
        "queue_wait_ms": ms(between(Some(s.created_at), s.started_at)),
        "run_time_ms": ms(between(s.started_at, s.completed_at)),
        "progress": s.progress,
        "earlier_runs": s.earlier_runs.iter().map(|r| json!({
            "state": r.state.as_str(),
            "attempts": r.attempts,
            "error": r.error,
            "needs_review": r.needs_review,
            "ended_at_ms": r.ended_at_ms,
            "attempt_errors": r.attempt_errors,
        })).collect::<Vec<_>>(),
        "attempt_errors": s.attempt_errors,
    })
}

/// A job with its arguments and result as JSON.
pub(crate) fn record(r: &JobRecord) -> Value {
    let mut value = status(&r.status);
    value["args"] = r.args.clone();
    value["result"] = r.result.clone().unwrap_or(Value::Null);
    let figures = ProgressFigures::of(&r.status);
    value["usage"] = json!({
        "input_tokens": figures.input_tokens,
        "output_tokens": figures.output_tokens,
        "cost_usd": figures.cost_usd,
    });
    value
}

/// A journal entry as JSON.
pub(crate) fn step(s: &StepInfo) -> Value {
    json!({
        "position": s.position,
        "name": s.name,
        "size_bytes": s.size,
        "recorded_at": rfc3339(s.recorded_at),
    })
}
