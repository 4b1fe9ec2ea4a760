//! The bearer token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::TOKEN_ENV;
use super::error::ApiError;

/// Lets a request through if it needs no token or carries the right one; `401` otherwise.
///
/// Reads need the token only beyond loopback. Changes (every method but `GET`, `HEAD` and
/// `OPTIONS`) need it always; without a token configured they are refused unless the API was
/// opened with [`HttpApi::allow_unauthenticated_changes`](super::HttpApi::allow_unauthenticated_changes).
pub(crate) async fn require_token(
    State(state): State<Arc<super::State>>,
    request: Request,
    next: Next,
) -> Response {
    let mutating = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !mutating && !state.token_for_reads {
        return next.run(request).await;
    }
    // OpenAI clients read errors in OpenAI's shape.
    let openai = request.uri().path().starts_with("/v1/");
    let Some(token) = state.token.as_deref() else {
        if state.open_changes {
            return next.run(request).await;
        }
        return unauthorized(
            openai,
            format!(
                "changing jobs over HTTP needs a token, and none is configured: set {TOKEN_ENV} \
             (or call HttpApi::token) and send `Authorization: Bearer <token>`, or call \
             HttpApi::allow_unauthenticated_changes to let anyone who reaches the API change jobs"
            ),
        );
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => unauthorized(
            openai,
            "this route needs `Authorization: Bearer <token>` with the API's token".into(),
        ),
    }
}

fn unauthorized(openai: bool, message: String) -> Response {
    let mut response = if openai {
        let body = serde_json::json!({"error": {
            "message": message,
            "type": "authentication_error",
            "param": null,
            "code": "invalid_api_key",
        }});
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, message).into_response()
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// Compares in time that depends on the lengths only, not on where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
