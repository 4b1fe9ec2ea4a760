//! What a job looks like in a response, and the durations requests name.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::{JobId, JobState, JobStatus};

/// A job as the API shows it: its status, times in RFC 3339, and its result once completed.
#[derive(Debug, Serialize)]
pub(crate) struct JobView {
    id: JobId,
    name: String,
    state: JobState,
    attempts: u32,
    max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<serde_json::Value>,
    error: Option<String>,
    needs_review: bool,
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
    pub(crate) fn new(status: JobStatus, result: Option<serde_json::Value>) -> Self {
        JobView {
            id: status.id,
            name: status.name,
            state: status.state,
            attempts: status.attempts,
            max_attempts: status.max_attempts,
            result,
            error: status.error,
            needs_review: status.needs_review,
            progress: status.progress,
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
