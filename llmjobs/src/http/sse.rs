//! `GET /jobs/{id}/events`: a job's progress as Server-Sent Events.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::routes::{job_id, view};

/// The stream: `status` (the job as it is now), one `progress` per report, then `end` (the job
/// as it ended, with its result). Events are numbered; a client that reconnects with
/// `Last-Event-ID` gets numbers that go on from there, and starts again from the job's current
/// status: only the latest report is stored, so that is what there is to resume from.
pub(crate) async fn events(
    State(state): State<Arc<super::State>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let first = view(&state, id).await?;
    let mut seq: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut event = move |kind: &str, data: String| {
        seq += 1;
        Event::default().event(kind).id(seq.to_string()).data(data)
    };
    let (tx, rx) = mpsc::channel(64);
    let handle = state.jobs.handle::<serde_json::Value>(id);
    tokio::spawn(async move {
        let ended = first.state().is_terminal();
        if tx.send(event("status", json(&first))).await.is_err() {
            return;
        }
        if !ended {
            let mut progress = handle.progress();
            loop {
                tokio::select! {
                    report = progress.next() => match report {
                        Some(report) => {
                            if tx.send(event("progress", json(&report))).await.is_err() {
                                return;
                            }
                        }
                        None => break,
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
    Ok(Sse::new(EventStream { rx })
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// The events of one connection, as a stream.
struct EventStream {
    rx: mpsc::Receiver<Event>,
}

impl futures_core::Stream for EventStream {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|event| event.map(Ok))
    }
}
