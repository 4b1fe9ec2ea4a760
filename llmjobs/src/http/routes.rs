//! The route table, and what several routes share.

pub(super) mod jobs;
pub(super) mod submit;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodRouter, delete, get, post};

use super::State;
use super::error::ApiError;
use super::view::{JobView, parse_duration};
use crate::{Error, JobId, Outcome};

/// One route: a method on a path, and what serves it.
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) handler: MethodRouter<Arc<State>>,
}

fn route(method: Method, path: &'static str, handler: MethodRouter<Arc<State>>) -> Route {
    Route {
        method,
        path,
        handler,
    }
}

/// Every route the API serves. The router is built from this list and nothing else, and the
/// OpenAPI tests check that each one is documented: a route added here without documentation
/// fails them.
pub(crate) fn table() -> Vec<Route> {
    let mut table = vec![
        route(Method::GET, "/jobs", get(jobs::list)),
        // One pattern for `POST /jobs/{name}` and `GET|DELETE /jobs/{id}`: the router cannot
        // tell a name from an id by its place.
        route(Method::POST, "/jobs/{job}", post(submit::submit)),
        route(Method::GET, "/jobs/{job}", get(jobs::show)),
        route(Method::DELETE, "/jobs/{job}", delete(jobs::cancel)),
        route(Method::GET, "/jobs/{job}/wait", get(jobs::wait)),
        route(Method::POST, "/jobs/{job}/retry", post(jobs::retry)),
        route(Method::GET, "/jobs/{job}/events", get(super::sse::events)),
        route(Method::GET, "/openapi.json", get(super::openapi::serve)),
    ];
    table.extend(llm_routes());
    table
}

/// The OpenAI-compatible endpoint, with the LLM client.
#[cfg(feature = "llm")]
fn llm_routes() -> Vec<Route> {
    vec![route(
        Method::POST,
        "/v1/chat/completions",
        post(super::openai::chat_completions),
    )]
}

#[cfg(not(feature = "llm"))]
fn llm_routes() -> Vec<Route> {
    Vec::new()
}

pub(crate) fn routes(state: Arc<State>, body_limit: usize) -> Router {
    let mut router = Router::new();
    for route in table() {
        // Routes on one path merge their methods.
        router = router.route(route.path, route.handler);
    }
    router
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
pub(crate) fn wait_of(state: &State, text: Option<&str>) -> Result<Duration, ApiError> {
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
    Ok(JobView::new(status, result, &state.redact))
}

/// Waits up to `timeout` for the job to end; the job then (`200`), or as it is at the timeout
/// (`202`). Waiting changes nothing about the job.
pub(crate) async fn wait_view(
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
    Ok((code, JobView::new(status, result, &state.redact)))
}
