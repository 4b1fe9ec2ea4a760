//! `GET /jobs/{id}/events`: a job's progress as Server-Sent Events.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::error::ApiError;
use super::openapi::ErrorBody;
use super::routes::{job_id, view};

/// The stream: `status` (the job as it is now), one `progress` per report, then `end` (the job
/// as it ended, with its result), and the stream closes.
///
/// Events are numbered. A client that reconnects with `Last-Event-ID` gets numbers that go on
/// from there, and what it missed as far as the store keeps it: the job's current status, its
/// latest progress report as a `progress` event, and the `end` if the job has ended since
/// (only the latest report is stored, so earlier ones are not replayed).
///
/// A stream with no event for [`HttpApi::event_stream_idle`](super::HttpApi::event_stream_idle)
/// closes; past [`HttpApi::max_event_streams`](super::HttpApi::max_event_streams) open ones, a
/// new one is `503`.
#[utoipa::path(
    get,
    path = "/jobs/{job}/events",
    tag = "jobs",
    security((), ("bearer" = [])),
    params(
        ("job" = String, Path, description = "The job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The last event seen, to resume after a reconnect"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `status`, `progress`…, `end` (each `data` is JSON: a Job, a progress report, the Job as it ended)", content_type = "text/event-stream", body = String),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 401, description = "Served beyond loopback without the token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "Too many event streams are open (`Retry-After`)", body = ErrorBody),
    )
)]
pub(crate) async fn events(
    State(state): State<Arc<super::State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let Some(permit) = state.sse.admit() else {
        return Ok(super::limits::busy());
    };
    let first = view(&state, id).await?;
    let resumed_from: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let mut seq = resumed_from.unwrap_or(0);
    let mut event = move |kind: &str, data: String| {
        seq += 1;
        Event::default().event(kind).id(seq.to_string()).data(data)
    };
    let (tx, rx) = mpsc::channel(64);
    let handle = state.jobs.handle::<serde_json::Value>(id);
    tokio::spawn(async move {
        let ended = first.state().is_terminal();
        let latest = first.progress().cloned();
        if tx.send(event("status", json(&first))).await.is_err() {
            return;
        }
        if let (Some(_), Some(latest)) = (resumed_from, latest) {
            // A reconnect: the report it may have missed, as the event it would have been.
            if tx.send(event("progress", json(&latest))).await.is_err() {
                return;
            }
        }
        if !ended {
            let mut progress = handle.progress();
            loop {
                tokio::select! {
                    report = tokio::time::timeout(state.sse.idle, progress.next()) => match report {
                        Ok(Some(report)) => {
                            let report = state.redact.applied(
                                serde_json::to_value(&report).unwrap_or_default(),
                            );
                            if tx.send(event("progress", json(&report))).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        // Idle too long: close; the client reconnects with Last-Event-ID.
                        Err(_) => return,
                    },
                    // The client went away: stop following the job.
                    _ = tx.closed() => return,
                }
            }
        }
        let last = match view(&state, id).await {
            Ok(last) => event("end", json(&last)),
            Err(_) => event("error", r#"{"error":"the job could not be read"}"#.into()),
        };
        let _ = tx.send(last).await;
    });
    Ok(Sse::new(EventStream::new(rx, permit))
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// The events of one connection, as a stream; holds its place among the open streams until
/// the connection ends.
pub(crate) struct EventStream {
    rx: mpsc::Receiver<Event>,
    _permit: OwnedSemaphorePermit,
}

impl EventStream {
    /// The events `rx` receives, holding `permit` until the stream is dropped.
    pub(crate) fn new(rx: mpsc::Receiver<Event>, permit: OwnedSemaphorePermit) -> Self {
        EventStream {
            rx,
            _permit: permit,
        }
    }
}

impl futures_core::Stream for EventStream {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|event| event.map(Ok))
    }
}
