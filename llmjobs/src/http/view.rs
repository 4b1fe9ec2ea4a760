//! What a job looks like in a response, and the durations requests name.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::redact::Redactor;
use crate::{JobId, JobState, JobStatus};

/// A job as the API shows it: its status, times in RFC 3339, and its result once completed,
/// with secret-named fields hidden.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Job)]
pub(crate) struct JobView {
    #[schema(value_type = String, format = "uuid")]
    id: JobId,
    name: String,
    #[schema(value_type = String, example = "completed")]
    state: JobState,
    attempts: u32,
    max_attempts: u32,
    /// The job's result (JSON), once it completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    result: Option<serde_json::Value>,
    error: Option<String>,
    needs_review: bool,
    /// The latest progress report.
    #[schema(value_type = Option<Object>)]
    progress: Option<serde_json::Value>,
    cancel_requested: bool,
    idempotency_key: Option<String>,
    priority: i32,
    created_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    run_at: String,
}

impl JobView {
    pub(crate) fn new(
        status: JobStatus,
        result: Option<serde_json::Value>,
        redact: &Redactor,
    ) -> Self {
        JobView {
            id: status.id,
            name: status.name,
            state: status.state,
            attempts: status.attempts,
            max_attempts: status.max_attempts,
            result: result.map(|r| redact.applied(r)),
            error: status.error,
            needs_review: status.needs_review,
            progress: status.progress.map(|p| redact.applied(p)),
            cancel_requested: status.cancel_requested,
            idempotency_key: status.idempotency_key,
            priority: status.priority,
            created_at: rfc3339(status.created_at),
            started_at: status.started_at.map(rfc3339),
            completed_at: status.completed_at.map(rfc3339),
            run_at: rfc3339(status.run_at),
        }
    }

    pub(crate) fn state(&self) -> JobState {
        self.state
    }

    /// The latest progress report, as shown (secrets hidden).
    pub(crate) fn progress(&self) -> Option<&serde_json::Value> {
        self.progress.as_ref()
    }
}

/// A page of `GET /jobs`, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct JobPage {
    pub(crate) jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[schema(value_type = Option<String>, format = "uuid")]
    pub(crate) next_cursor: Option<JobId>,
}

/// What `DELETE /jobs/{id}` did, and the job after it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CancelView {
    /// `cancelled` (it was pending), `requested` (its worker was asked to stop) or
    /// `already_finished` (nothing changed).
    #[schema(example = "cancelled")]
    pub(crate) cancel: &'static str,
    pub(crate) job: JobView,
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A duration as a query names it: `30s`, `500ms`, `2m`, `1h`, or plain seconds (`30`, `0.5`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{text}` is not a duration (try 30s, 500ms, 2m)")),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 30s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(number * scale)
        .map_err(|_| format!("`{text}` is not a duration (try 30s, 500ms, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
        assert!(parse_duration("-1s").is_err());
    }
}
