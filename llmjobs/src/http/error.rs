//! Errors as JSON bodies with the status code that fits.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Error;

/// An error response: `{"error": "...", ...}` with a status code.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        ApiError {
            status,
            body: json!({ "error": message.to_string() }),
        }
    }

    /// The status code and the JSON body, for a surface that answers in another shape.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))]
    pub(crate) fn into_parts(self) -> (StatusCode, serde_json::Value) {
        (self.status, self.body)
    }

    pub(crate) fn bad_request(message: impl std::fmt::Display) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::UnknownJob { known, .. } => {
                return ApiError {
                    status: StatusCode::NOT_FOUND,
                    body: json!({ "error": e.to_string(), "known": known }),
                };
            }
            Error::InvalidArgs { path, .. } => {
                return ApiError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    body: json!({ "error": e.to_string(), "path": path }),
                };
            }
            Error::IdempotencyConflict { .. } | Error::NotRetryable { .. } => StatusCode::CONFLICT,
            Error::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
            _ => {
                tracing::error!(error = %e, "the job API failed a request");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
