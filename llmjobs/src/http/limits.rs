//! Bounds on event streams: how many at once, and how long one may sit idle.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// The settings, as [`HttpApi`](super::HttpApi) holds them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SseLimits {
    pub(crate) max_streams: usize,
    pub(crate) idle: Duration,
}

impl Default for SseLimits {
    fn default() -> Self {
        SseLimits {
            max_streams: 64,
            idle: Duration::from_secs(300),
        }
    }
}

/// The limits in force: a permit per open stream.
#[derive(Debug)]
pub(crate) struct SseGate {
    permits: Arc<Semaphore>,
    pub(crate) idle: Duration,
}

impl SseGate {
    pub(crate) fn new(limits: SseLimits) -> Self {
        SseGate {
            permits: Arc::new(Semaphore::new(limits.max_streams)),
            idle: limits.idle,
        }
    }

    /// A permit held for as long as the stream is open; `None` if every one is taken.
    pub(crate) fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// The answer when every stream is taken: `503` with `Retry-After`.
pub(crate) fn busy() -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many event streams are open; try again shortly",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}
