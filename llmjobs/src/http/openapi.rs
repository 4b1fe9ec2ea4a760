//! `GET /openapi.json`: the API's OpenAPI 3.1 document, derived from the handlers'
//! `#[utoipa::path]` annotations and the types they answer with.

use std::sync::LazyLock;

use axum::Json;
use axum::extract::OriginalUri;
use axum::http::Uri;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, ServerBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::routes::{jobs, submit};
use super::view::{CancelView, JobPage, JobView};

/// The name of the bearer-token security scheme in the document.
pub(crate) const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "llmjobs HTTP API",
        description = "Submit durable jobs by name, wait for them with a timeout and get a job id \
            to poll past it, list, cancel, retry and follow them. Mutating routes need \
            `Authorization: Bearer <token>` (unless the server was opened with \
            `allow_unauthenticated_changes`); served beyond loopback, every route does. Secret-named \
            fields (api_key, token, password, ...) are shown as \"[redacted]\"."
    ),
    paths(
        jobs::list,
        submit::submit,
        jobs::show,
        jobs::cancel,
        jobs::wait,
        jobs::retry,
        super::sse::events,
        serve,
    ),
    components(schemas(JobView, JobPage, CancelView, ErrorBody)),
    modifiers(&BearerScheme),
    tags((name = "jobs", description = "Jobs by name and by id"))
)]
struct JobsApi;

/// The body of every error (the OpenAI-compatible endpoint answers in OpenAI's shape instead).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // Documents `ApiError`'s JSON, which is built as a value.
pub(crate) struct ErrorBody {
    /// What went wrong, for people.
    error: String,
    /// For `422`: the argument that failed to deserialize (`"items[2].name"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    /// For `404` of an unknown job name: the names this server runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    known: Option<Vec<String>>,
}

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The whole document: the job routes, the dashboard's, and the OpenAI-compatible endpoint
/// when the `llm` feature is on.
pub(crate) fn document() -> Document {
    let doc = JobsApi::openapi().merge_from(super::dashboard::DashboardApi::openapi());
    #[cfg(feature = "llm")]
    let doc = doc.merge_from(super::openai::OpenAiApi::openapi());
    doc
}

static DOCUMENT: LazyLock<serde_json::Value> =
    LazyLock::new(|| serde_json::to_value(document()).expect("the OpenAPI document serializes"));

/// This document: the API's routes, parameters, bodies, status codes and authentication.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "jobs",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document; `servers` names the prefix the API is mounted under", content_type = "application/json", body = Object),
        (status = 401, description = "Served beyond loopback without the token", body = ErrorBody),
    )
)]
pub(crate) async fn serve(OriginalUri(original): OriginalUri, uri: Uri) -> Json<serde_json::Value> {
    let mut doc = DOCUMENT.clone();
    // Mounted under a prefix: say so, so that clients generated from the document call it there.
    let prefix = original.path().strip_suffix(uri.path()).unwrap_or_default();
    if !prefix.is_empty()
        && let Ok(server) = serde_json::to_value(ServerBuilder::new().url(prefix).build())
    {
        doc["servers"] = serde_json::json!([server]);
    }
    Json(doc)
}

#[cfg(test)]
mod tests;
