//! `POST /jobs/{name}`: spawn a job by name, and wait for it a while.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{wait_of, wait_view};
use crate::http::error::ApiError;
use crate::http::openapi::ErrorBody;
use crate::http::view::JobView;

/// The header whose value becomes the call's idempotency key.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SubmitQuery {
    /// How long to wait for the job to end (`30s`, `500ms`, `2m`, or seconds; at most the
    /// server's longest wait). Without it, `202` at once.
    wait: Option<String>,
}

/// Spawns the job `name` with the JSON body as its arguments (an empty body is `{}`). `200`
/// with the job and its result if it ends within the wait (`Content-Location` names it), else
/// `202` with the job and a `Location` to poll; the same attempt keeps running either way.
/// Long-running jobs (a `max/*` model) answer `202` at once.
#[utoipa::path(
    post,
    path = "/jobs/{job}",
    tag = "jobs",
    security(("bearer" = [])),
    params(
        ("job" = String, Path, description = "The job's name"),
        SubmitQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "The call's idempotency key: the same key returns the same job"),
    ),
    request_body(content = Object, description = "The job's arguments", content_type = "application/json"),
    responses(
        (status = 200, description = "The job ended within the wait", body = JobView,
            headers(("Content-Location" = String, description = "The job's URL"))),
        (status = 202, description = "Still running at the end of the wait", body = JobView,
            headers(("Location" = String, description = "Where to poll the job"))),
        (status = 400, description = "The body is not JSON, or the wait not a duration", body = ErrorBody),
        (status = 401, description = "No token, or the wrong one", body = ErrorBody),
        (status = 404, description = "No job of that name (`known` lists the names)", body = ErrorBody),
        (status = 409, description = "The idempotency key is held by other work", body = ErrorBody),
        (status = 413, description = "The body is over the limit", body = ErrorBody),
        (status = 422, description = "The arguments do not deserialize (`path` names the field)", body = ErrorBody),
    )
)]
pub(crate) async fn submit(
    State(state): State<Arc<crate::http::State>>,
    Path(name): Path<String>,
    Query(query): Query<SubmitQuery>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Over the limit is 413; say so in JSON like every other error.
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let args: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?
    };
    let wait = wait_of(&state, query.wait.as_deref())?;
    let mut call = state.jobs.call_json(&name, args)?;
    if let Some(key) = headers.get(IDEMPOTENCY_KEY) {
        let key = key
            .to_str()
            .map_err(|_| ApiError::bad_request("the Idempotency-Key header is not ASCII text"))?;
        call = call.idempotency_key(key);
    }
    // As `Jobs::run_with_timeout` does: background calls return at once, and a call's own cap
    // on waiting holds.
    let wait = if state.jobs.is_long_running(&call) {
        Duration::ZERO
    } else {
        call.wait_limit().map_or(wait, |limit| limit.min(wait))
    };
    let handle = state.jobs.spawn(call).await?;
    let id = handle.id();
    let (code, view) = wait_view(&state, id, wait).await?;
    let mut response = (code, Json(view)).into_response();
    // Where the API is mounted: the original path minus the path inside the router.
    let prefix = original.path().strip_suffix(uri.path()).unwrap_or_default();
    // 202: poll there. 200: the outcome is here, and lives on there (Content-Location).
    let header = if code == StatusCode::ACCEPTED {
        header::LOCATION
    } else {
        header::CONTENT_LOCATION
    };
    if let Ok(location) = HeaderValue::from_str(&format!("{prefix}/jobs/{id}")) {
        response.headers_mut().insert(header, location);
    }
    Ok(response)
}
