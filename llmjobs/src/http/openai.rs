//! `POST /v1/chat/completions` (features `http` and `llm`): a durable OpenAI-compatible
//! endpoint. Each request runs as the built-in `llm_call` job, so an answer that takes longer
//! than the client waits is not lost: the client gets a job id to poll instead.

mod stream;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::routes::view;
use super::view::{JobView, parse_duration};
use crate::llm::llm_call;
use crate::{Error, JobId, Outcome};
use wire::{CompletionRequest, OpenAiError, kind_of};

/// The request header that says how long to wait for the answer (`30s`, `500ms`, `2m`).
pub(crate) const WAIT_HEADER: &str = "x-llmjobs-wait";

/// The response header that names the job behind a completion.
pub(crate) const JOB_HEADER: &str = "x-llmjobs-job-id";

/// How long a request waits for the answer when it does not say.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

#[derive(OpenApi)]
#[openapi(
    paths(chat_completions),
    tags((name = "openai", description = "An OpenAI-compatible chat completions endpoint whose calls are durable jobs"))
)]
pub(crate) struct OpenAiApi;

/// Runs an OpenAI chat completions request as the durable `llm_call` job. The completion
/// (`200`, OpenAI's `chat.completion`) if it arrives within the wait (`X-Llmjobs-Wait`, 30 s by
/// default); else `202` with the job, and a `Location` to poll, while the same call keeps
/// going. With `"stream": true`, OpenAI's `chat.completion.chunk` events and `[DONE]`. A
/// long-running model (`max/*`) answers `202` at once. The bearer token is the API key an
/// OpenAI client sends. Errors are in OpenAI's shape.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    security(("bearer" = [])),
    params(
        ("X-Llmjobs-Wait" = Option<String>, Header, description = "How long to wait for the answer (`30s`, `500ms`, `2m`; default 30 s, at most the server's longest wait)"),
        ("Idempotency-Key" = Option<String>, Header, description = "The call's idempotency key: the same key returns the same job"),
    ),
    request_body(content = Object, description = "An OpenAI chat completions request (`model`, `messages`, `stream`, sampling settings, `tools`)", content_type = "application/json"),
    responses(
        (status = 200, description = "The completion (`chat.completion`), or with `stream: true` its chunks as Server-Sent Events ending in `[DONE]`", body = Object,
            headers(("X-Llmjobs-Job-Id" = String, description = "The job that ran the call"))),
        (status = 202, description = "Not answered within the wait (or a long-running model): the job, still running", body = JobView,
            headers(("Location" = String, description = "Where to poll the job"), ("X-Llmjobs-Job-Id" = String, description = "The job"))),
        (status = 400, description = "Not an OpenAI request, or a bad wait (OpenAI's error shape)", body = Object),
        (status = 401, description = "No token, or the wrong one (OpenAI's error shape)", body = Object),
        (status = 409, description = "The call was cancelled, or the idempotency key is held by other work", body = Object),
        (status = 413, description = "The body is over the limit", body = Object),
        (status = 502, description = "The call failed (`code`: `job_failed` or `needs_review`; `job_id` names the job)", body = Object),
        (status = 503, description = "Too many streams are open", body = Object),
    )
)]
pub(crate) async fn chat_completions(
    State(state): State<Arc<super::State>>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        OpenAiError::new(status, kind_of(status), None, e.body_text())
    })?;
    let request = CompletionRequest::parse(&body)?;
    let wait = wait_of(&state, &headers)?;
    let model = request.chat.model.clone();
    let mut call = llm_call(request.chat);
    if let Some(key) = headers.get("idempotency-key") {
        let key = key.to_str().map_err(|_| {
            OpenAiError::invalid("the Idempotency-Key header is not ASCII text", None)
        })?;
        call = call.idempotency_key(key);
    }
    // As `Jobs::run_with_timeout` does: long-running calls go to the background at once, and
    // the request's own `timeout` caps the wait.
    let background = state.jobs.is_long_running(&call);
    let wait = call.wait_limit().map_or(wait, |limit| limit.min(wait));
    // A stream holds its place among the open streams; take it before starting the call.
    let permit = if request.stream && !background {
        let Some(permit) = state.sse.admit() else {
            return Err(OpenAiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limit_error",
                None,
                "too many streams are open; try again shortly",
            ));
        };
        Some(permit)
    } else {
        None
    };
    let handle = state.jobs.spawn(call).await?;
    let id = handle.id();
    // Where the API is mounted: the original path minus the path inside the router.
    let prefix = original.path().strip_suffix(uri.path()).unwrap_or_default();
    let location = format!("{prefix}/jobs/{id}");
    if background {
        return accepted(&state, id, &location).await;
    }
    if let Some(permit) = permit {
        let response = stream::respond(state, handle, model, request.include_usage, permit);
        return Ok(with_job(response, id, header::CONTENT_LOCATION, &location));
    }
    match handle.wait_timeout(wait).await {
        Ok(Outcome::Ready(answer)) => {
            let response = Json(wire::completion(id, &model, &answer)).into_response();
            Ok(with_job(response, id, header::CONTENT_LOCATION, &location))
        }
        Ok(Outcome::Pending(_)) => accepted(&state, id, &location).await,
        Err(e) => Err(ended_without_answer(e).with_job(id)),
    }
}

/// How long this request waits: its header, else 30 s; at most the API's longest wait.
fn wait_of(state: &super::State, headers: &HeaderMap) -> Result<Duration, OpenAiError> {
    let Some(value) = headers.get(WAIT_HEADER) else {
        return Ok(DEFAULT_WAIT.min(state.max_wait));
    };
    let text = value
        .to_str()
        .map_err(|_| OpenAiError::invalid("the X-Llmjobs-Wait header is not text", None))?;
    let wait = parse_duration(text)
        .map_err(|e| OpenAiError::invalid(format!("X-Llmjobs-Wait: {e}"), None))?;
    Ok(wait.min(state.max_wait))
}

/// `202`: the job as it is, and where to poll it.
async fn accepted(
    state: &super::State,
    id: JobId,
    location: &str,
) -> Result<Response, OpenAiError> {
    let job = view(state, id).await?;
    let response = (StatusCode::ACCEPTED, Json(job)).into_response();
    Ok(with_job(response, id, header::LOCATION, location))
}

fn with_job(
    mut response: Response,
    id: JobId,
    name: header::HeaderName,
    location: &str,
) -> Response {
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(name, location);
    }
    if let Ok(id) = HeaderValue::from_str(&id.to_string()) {
        headers.insert(JOB_HEADER, id);
    }
    response
}

/// The call ended within the wait without an answer: why, in OpenAI's shape.
pub(crate) fn ended_without_answer(e: Error) -> OpenAiError {
    match e {
        Error::JobFailed { .. } => {
            OpenAiError::new(StatusCode::BAD_GATEWAY, "api_error", Some("job_failed"), e)
        }
        Error::NeedsReview { .. } => OpenAiError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            Some("needs_review"),
            e,
        ),
        Error::JobCancelled { .. } => OpenAiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            Some("job_cancelled"),
            e,
        ),
        e => e.into(),
    }
}
