//! Reading and managing jobs by id: show, wait, list, cancel, retry.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{job_id, view, wait_of, wait_view};
use crate::http::error::ApiError;
use crate::http::view::JobView;
use crate::{CancelOutcome, JobFilter, JobState};

type ApiState = State<Arc<crate::http::State>>;

/// The most jobs one page lists.
const MAX_PAGE: u32 = 500;

/// `GET /jobs/{id}`.
pub(crate) async fn show(
    State(state): ApiState,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(view(&state, job_id(&id)?).await?))
}

#[derive(Debug, Deserialize)]
pub(crate) struct WaitQuery {
    timeout: Option<String>,
}

/// `GET /jobs/{id}/wait?timeout=30s`.
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

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    state: Option<String>,
    name: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /jobs?state=&name=&cursor=&limit=`: newest first; `next_cursor` pages on.
pub(crate) async fn list(
    State(state): ApiState,
    Query(query): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    let jobs: Vec<JobView> = page.into_iter().map(|s| JobView::new(s, None)).collect();
    Ok(Json(json!({ "jobs": jobs, "next_cursor": next_cursor })))
}

/// `DELETE /jobs/{id}`: `200` when it is cancelled (or had already ended: nothing changes),
/// `202` when the worker running it has been asked to stop.
pub(crate) async fn cancel(
    State(state): ApiState,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = job_id(&id)?;
    let (code, outcome) = match state.jobs.cancel(id).await? {
        CancelOutcome::Cancelled => (StatusCode::OK, "cancelled"),
        CancelOutcome::Requested => (StatusCode::ACCEPTED, "requested"),
        CancelOutcome::AlreadyFinished(_) => (StatusCode::OK, "already_finished"),
    };
    let job = view(&state, id).await?;
    Ok((code, Json(json!({ "cancel": outcome, "job": job }))))
}

/// `POST /jobs/{id}/retry`: the job, pending again; `409` unless it failed or was cancelled.
pub(crate) async fn retry(
    State(state): ApiState,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id)?;
    state.jobs.retry(id).await?;
    Ok(Json(view(&state, id).await?))
}
