//! Reading and managing jobs by id: show, wait, list, cancel, retry.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{job_id, view, wait_of, wait_view};
use crate::http::error::ApiError;
use crate::http::view::{CancelView, JobPage, JobView};
use crate::{CancelOutcome, JobFilter, JobState};

type ApiState = State<Arc<crate::http::State>>;

/// The most jobs one page lists.
const MAX_PAGE: u32 = 500;

/// The job's status, with its result once completed.
#[utoipa::path(
    get,
    path = "/jobs/{job}",
    tag = "jobs",
    security((), ("bearer" = [])),
    params(("job" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Not a job id", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Served beyond loopback without the token", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such job", body = crate::http::openapi::ErrorBody),
    )
)]
pub(crate) async fn show(
    State(state): ApiState,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(view(&state, job_id(&id)?).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitQuery {
    /// How long to wait (`30s`, `500ms`, `2m`, or seconds); without it, the server's longest
    /// wait.
    timeout: Option<String>,
}

/// Waits for the job to end: `200` once it has, `202` if it is still running at the timeout.
/// Waiting changes nothing about the job.
#[utoipa::path(
    get,
    path = "/jobs/{job}/wait",
    tag = "jobs",
    security((), ("bearer" = [])),
    params(("job" = String, Path, description = "The job id"), WaitQuery),
    responses(
        (status = 200, description = "The job has ended (completed, failed or cancelled)", body = JobView),
        (status = 202, description = "Still pending or running at the timeout", body = JobView),
        (status = 400, description = "Not a job id, or not a duration", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Served beyond loopback without the token", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such job", body = crate::http::openapi::ErrorBody),
    )
)]
pub(crate) async fn wait(
    State(state): ApiState,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let id = job_id(&id)?;
    let timeout = match query.timeout {
        Some(_) => wait_of(&state, query.timeout.as_deref())?,
        None => state.max_wait,
    };
    let (code, view) = wait_view(&state, id, timeout).await?;
    Ok((code, Json(view)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only jobs in this state: `pending`, `running`, `completed`, `failed` or `cancelled`.
    state: Option<String>,
    /// Only jobs of this name.
    name: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Jobs per page, from 1 to 500 (default 50).
    limit: Option<u32>,
}

/// Jobs, newest first, a page at a time: `next_cursor` pages on.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "jobs",
    security((), ("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "A bad state, cursor or limit", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "Served beyond loopback without the token", body = crate::http::openapi::ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): ApiState,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_PAGE}"
        )));
    }
    let mut filter = JobFilter::new().limit(limit);
    if let Some(s) = &query.state {
        filter = filter.state(s.parse::<JobState>().map_err(ApiError::bad_request)?);
    }
    if let Some(name) = query.name {
        filter = filter.name(name);
    }
    if let Some(cursor) = &query.cursor {
        filter = filter.after(
            cursor
                .parse()
                .map_err(|_| ApiError::bad_request(format!("`{cursor}` is not a cursor")))?,
        );
    }
    let page = state.jobs.list(filter).await?;
    let next_cursor = match page.last() {
        Some(last) if page.len() == limit as usize => Some(last.id),
        _ => None,
    };
    let jobs: Vec<JobView> = page
        .into_iter()
        .map(|s| JobView::new(s, None, &state.redact))
        .collect();
    Ok(Json(JobPage { jobs, next_cursor }))
}

/// Cancels the job: `200` when it is cancelled (or had already ended: nothing changes), `202`
/// when the worker running it has been asked to stop.
#[utoipa::path(
    delete,
    path = "/jobs/{job}",
    tag = "jobs",
    security(("bearer" = [])),
    params(("job" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "Cancelled, or it had already ended", body = CancelView),
        (status = 202, description = "Its worker has been asked to stop", body = CancelView),
        (status = 400, description = "Not a job id", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or the wrong one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such job", body = crate::http::openapi::ErrorBody),
    )
)]
pub(crate) async fn cancel(
    State(state): ApiState,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CancelView>), ApiError> {
    let id = job_id(&id)?;
    let (code, outcome) = match state.jobs.cancel(id).await? {
        CancelOutcome::Cancelled => (StatusCode::OK, "cancelled"),
        CancelOutcome::Requested => (StatusCode::ACCEPTED, "requested"),
        CancelOutcome::AlreadyFinished(_) => (StatusCode::OK, "already_finished"),
    };
    let job = view(&state, id).await?;
    Ok((
        code,
        Json(CancelView {
            cancel: outcome,
            job,
        }),
    ))
}

/// Puts a failed or cancelled job back to pending; `409` for any other.
#[utoipa::path(
    post,
    path = "/jobs/{job}/retry",
    tag = "jobs",
    security(("bearer" = [])),
    params(("job" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job, pending again", body = JobView),
        (status = 400, description = "Not a job id", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or the wrong one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such job", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "The job has not failed and was not cancelled", body = crate::http::openapi::ErrorBody),
    )
)]
pub(crate) async fn retry(
    State(state): ApiState,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id)?;
    state.jobs.retry(id).await?;
    Ok(Json(view(&state, id).await?))
}
