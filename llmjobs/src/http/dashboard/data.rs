//! `GET /dashboard/overview` and `GET /dashboard/jobs/{id}`: what the page shows beyond the
//! job API's own views.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::Dashboard;
use crate::JobState;
use crate::http::error::ApiError;
use crate::http::routes::job_id;
use crate::http::view::{JobView, rfc3339};

/// The chart's span and its bars.
const SPAN: Duration = Duration::from_secs(3600);
const BUCKET: Duration = Duration::from_secs(60);
/// The most finished jobs the chart reads; past this, it says it is cut short.
const CHART_LIMIT: u32 = 20_000;

/// Counts by state and by name, and per-minute completions, failures and cancellations over
/// the last hour (oldest minute first).
#[utoipa::path(
    get,
    path = "/dashboard/overview",
    tag = "dashboard",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "`counts` by state, `by_name`, and `chart`: per-minute `completed`, `failed` and `cancelled` over the last hour", body = Object),
        (status = 401, description = "Served beyond loopback without the token", body = crate::http::openapi::ErrorBody),
        (status = 500, description = "The database could not be read (or, in memory, cannot be opened twice)", body = crate::http::openapi::ErrorBody),
    )
)]
pub(crate) async fn overview(State(dash): State<Arc<Dashboard>>) -> Result<Json<Value>, ApiError> {
    let by_name = dash.api.jobs.counts_by_name().await?;
    let counts = dash.api.jobs.counts().await?;
    let now = SystemTime::now();
    let since = now - SPAN;
    let finished = dash
        .inspector()
        .await?
        .finished_since(since, CHART_LIMIT)
        .await?;
    let buckets = (SPAN.as_secs() / BUCKET.as_secs()) as usize;
    let mut chart = [
        vec![0u64; buckets],
        vec![0u64; buckets],
        vec![0u64; buckets],
    ];
    for record in &finished {
        let (Some(ended), Some(row)) = (record.status.completed_at, row_of(record.status.state))
        else {
            continue;
        };
        let Ok(age) = ended.duration_since(since) else {
            continue;
        };
        let slot = ((age.as_secs() / BUCKET.as_secs()) as usize).min(buckets - 1);
        chart[row][slot] += 1;
    }
    let [completed, failed, cancelled] = chart;
    Ok(Json(json!({
        "counts": counts,
        "by_name": by_name,
        "chart": {
            "start_ms": since.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0),
            "bucket_ms": BUCKET.as_millis(),
            "completed": completed,
            "failed": failed,
            "cancelled": cancelled,
            "truncated": finished.len() == CHART_LIMIT as usize,
        },
    })))
}

/// The chart's row for a finished job.
fn row_of(state: JobState) -> Option<usize> {
    match state {
        JobState::Completed => Some(0),
        JobState::Failed => Some(1),
        JobState::Cancelled => Some(2),
        JobState::Pending | JobState::Running => None,
    }
}

/// A job as the job API shows it, with its arguments, its earlier runs, the worker that runs
/// it, its step journal, and the tokens and cost its result reports.
#[utoipa::path(
    get,
    path = "/dashboard/jobs/{job}",
    operation_id = "dashboard_job",
    tag = "dashboard",
    security((), ("bearer" = [])),
    params(("job" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "`job` (as `GET /jobs/{id}`), `args`, `owner`, `earlier_runs`, `attempt_errors`, `steps`, `usage`", body = Object),
        (status = 400, description = "Not a job id", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Served beyond loopback without the token", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such job", body = crate::http::openapi::ErrorBody),
    )
)]
pub(crate) async fn job(
    State(dash): State<Arc<Dashboard>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let record = dash.inspector().await?.job(id).await?;
    let steps: Vec<Value> = dash
        .inspector()
        .await?
        .steps(id)
        .await?
        .into_iter()
        .map(|step| {
            json!({
                "position": step.position,
                "name": step.name,
                "size": step.size,
                "recorded_at": rfc3339(step.recorded_at),
            })
        })
        .collect();
    let usage = usage_of(record.result.as_ref(), record.status.progress.as_ref());
    let owner = record.status.owner.clone();
    let earlier_runs = record.status.earlier_runs.clone();
    let attempt_errors = record.status.attempt_errors.clone();
    Ok(Json(json!({
        "job": JobView::new(record.status, record.result, &dash.api.redact),
        "args": dash.api.redact.applied(record.args),
        "owner": owner,
        "earlier_runs": earlier_runs,
        "attempt_errors": attempt_errors,
        "steps": steps,
        "usage": usage,
    })))
}

/// Tokens and cost as the job reports them: from its result, as the LLM jobs' results give
/// them (`total_usage` and `total_cost`, or `usage` and `cost` for a single call), else from
/// its latest progress report (`input_tokens`, `output_tokens`, `cost_usd`, so far).
fn usage_of(result: Option<&Value>, progress: Option<&Value>) -> Option<Value> {
    let reported = result.and_then(|result| {
        let usage = result.get("total_usage").or_else(|| result.get("usage"))?;
        Some((
            usage,
            result.get("total_cost").or_else(|| result.get("cost")),
        ))
    });
    let (counts, cost) = match reported {
        Some(reported) => reported,
        None => progress.map(|p| (p, p.get("cost_usd")))?,
    };
    let tokens = |field: &str| counts.get(field).and_then(Value::as_u64);
    Some(json!({
        "input_tokens": tokens("input_tokens")?,
        "output_tokens": tokens("output_tokens")?,
        "cost_usd": cost.and_then(Value::as_f64),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_results_then_progress() {
        let llm = json!({
            "text": "hi",
            "usage": {"input_tokens": 3, "output_tokens": 4},
            "total_usage": {"input_tokens": 10, "output_tokens": 12},
            "total_cost": 0.25,
        });
        assert_eq!(
            usage_of(Some(&llm), None),
            Some(json!({"input_tokens": 10, "output_tokens": 12, "cost_usd": 0.25}))
        );
        let single = json!({"usage": {"input_tokens": 3, "output_tokens": 4}});
        assert_eq!(
            usage_of(
                Some(&single),
                Some(&json!({"input_tokens": 1, "output_tokens": 1}))
            ),
            Some(json!({"input_tokens": 3, "output_tokens": 4, "cost_usd": null}))
        );
        let so_far =
            json!({"fraction": 0.5, "input_tokens": 7, "output_tokens": 2, "cost_usd": 0.5});
        assert_eq!(
            usage_of(Some(&json!("a summary")), Some(&so_far)),
            Some(json!({"input_tokens": 7, "output_tokens": 2, "cost_usd": 0.5}))
        );
        assert_eq!(usage_of(Some(&json!("a summary")), None), None);
        assert_eq!(usage_of(None, Some(&json!({"fraction": 0.5}))), None);
        assert_eq!(usage_of(Some(&json!({"usage": "lots"})), None), None);
    }
}
