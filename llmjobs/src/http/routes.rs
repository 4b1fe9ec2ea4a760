//! The route table, and what several routes share.

mod jobs;
mod submit;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::State;
use super::error::ApiError;
use super::view::{JobView, parse_duration};
use crate::{Error, JobId, Outcome};

pub(crate) fn routes(state: Arc<State>, body_limit: usize) -> Router {
    Router::new()
        .route("/jobs", get(jobs::list))
        // One pattern for `POST /jobs/{name}` and `GET|DELETE /jobs/{id}`: the router cannot
        // tell a name from an id by its place.
        .route(
            "/jobs/{job}",
            post(submit::submit).get(jobs::show).delete(jobs::cancel),
        )
        .route("/jobs/{job}/wait", get(jobs::wait))
        .route("/jobs/{job}/retry", post(jobs::retry))
        .route("/jobs/{job}/events", get(super::sse::events))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// A job id from the path; `400` if it is not one.
pub(crate) fn job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a job id")))
}

/// A wait from the query, cut to the API's longest.
fn wait_of(state: &State, text: Option<&str>) -> Result<Duration, ApiError> {
    match text {
        None => Ok(Duration::ZERO),
        Some(text) => Ok(parse_duration(text)
            .map_err(ApiError::bad_request)?
            .min(state.max_wait)),
    }
}

/// The job as it is now, with its result if it completed.
pub(crate) async fn view(state: &State, id: JobId) -> Result<JobView, ApiError> {
    let status = state.jobs.status(id).await?;
    let result = if status.state == crate::JobState::Completed {
        // A zero wait on a completed job reads its stored result.
        match state
            .jobs
            .handle::<serde_json::Value>(id)
            .wait_timeout(Duration::ZERO)
            .await?
        {
            Outcome::Ready(result) => Some(result),
            Outcome::Pending(_) => None,
        }
    } else {
        None
    };
    Ok(JobView::new(status, result))
}

/// Waits up to `timeout` for the job to end; the job then (`200`), or as it is at the timeout
/// (`202`). Waiting changes nothing about the job.
async fn wait_view(
    state: &State,
    id: JobId,
    timeout: Duration,
) -> Result<(StatusCode, JobView), ApiError> {
    let handle = state.jobs.handle::<serde_json::Value>(id);
    let result = match handle.wait_timeout(timeout).await {
        Ok(Outcome::Ready(result)) => Some(result),
        Ok(Outcome::Pending(_)) => None,
        // It ended, just not with a result: the view says how.
        Err(Error::JobFailed { .. } | Error::NeedsReview { .. } | Error::JobCancelled { .. }) => {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let status = state.jobs.status(id).await?;
    let code = if status.state.is_terminal() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, JobView::new(status, result)))
}
