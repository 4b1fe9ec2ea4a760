//! `"stream": true`: the answer as OpenAI's `chat.completion.chunk` events, from the job's
//! progress reports (the text received so far), then `[DONE]`.

use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::wire;
use crate::JobHandle;
use crate::http::sse::EventStream;
use crate::llm::ChatResponse;

/// Streams the answer of the job behind `handle` as it arrives.
///
/// The job reports the text received so far a few times a second; each report becomes a chunk
/// of what is new. If the provider call is retried and starts over, the text sent so far
/// stands, and the chunks go on from where the new text passes it. The client going away
/// does not stop the job: its answer stays at `/jobs/{id}`.
pub(super) fn respond(
    state: Arc<crate::http::State>,
    handle: JobHandle<ChatResponse>,
    model: String,
    include_usage: bool,
    permit: OwnedSemaphorePermit,
) -> Response {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let id = handle.id();
        let data = |value: Value| Event::default().data(value.to_string());
        let chunk =
            |delta: Value, finish: Option<&str>| data(wire::chunk(id, &model, delta, finish));
        let role = json!({"role": "assistant", "content": ""});
        if tx.send(chunk(role, None)).await.is_err() {
            return;
        }
        let mut sent = String::new();
        let mut progress = handle.progress();
        loop {
            tokio::select! {
                report = tokio::time::timeout(state.sse.idle, progress.next()) => match report {
                    Ok(Some(report)) => {
                        let Some(text) = report.partial_output else { continue };
                        if text.len() > sent.len() && text.starts_with(&sent) {
                            let delta = json!({"content": &text[sent.len()..]});
                            sent = text;
                            if tx.send(chunk(delta, None)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        let idle = wire::OpenAiError::new(
                            axum::http::StatusCode::GATEWAY_TIMEOUT,
                            "api_error",
                            Some("stream_idle"),
                            format!(
                                "no output for {:?}: the stream closes, and the call goes on as \
                                 job {id} (GET /jobs/{id})",
                                state.sse.idle
                            ),
                        )
                        .with_job(id);
                        let _ = tx.send(data(idle.body)).await;
                        return;
                    }
                },
                // The client went away: stop following; the job goes on.
                _ = tx.closed() => return,
            }
        }
        let answer = match handle.wait().await {
            Ok(answer) => answer,
            Err(e) => {
                let error = super::ended_without_answer(e).with_job(id);
                let _ = tx.send(data(error.body)).await;
                return;
            }
        };
        let mut last = Vec::new();
        if let Some(rest) = answer.text.strip_prefix(sent.as_str())
            && !rest.is_empty()
        {
            last.push(chunk(json!({"content": rest}), None));
        }
        let calls: Vec<Value> = wire::tool_calls(&answer)
            .into_iter()
            .enumerate()
            .map(|(index, mut call)| {
                call["index"] = json!(index);
                call
            })
            .collect();
        if !calls.is_empty() {
            last.push(chunk(json!({"tool_calls": calls}), None));
        }
        last.push(chunk(json!({}), Some(&wire::finish_reason(&answer))));
        if include_usage {
            last.push(data(wire::usage_chunk(id, &model, &answer)));
        }
        last.push(Event::default().data("[DONE]"));
        for event in last {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Sse::new(EventStream::new(rx, permit))
        .keep_alive(KeepAlive::default())
        .into_response()
}
