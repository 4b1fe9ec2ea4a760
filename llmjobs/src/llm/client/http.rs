//! One HTTP exchange with a provider: sending the request, reading the answer plain or
//! streamed, and the timeout and transport errors.

use std::time::{Duration, SystemTime};

use super::LlmClient;
use crate::llm::provider::{self, CallCtx, Parsed, StreamState};
use crate::llm::request::estimate_tokens;
use crate::llm::retry::retry_after_from_headers;
use crate::llm::router::{ProviderConfig, ProviderKind};
use crate::llm::stream::SseParser;
use crate::llm::{LlmError, StreamEvent};

impl LlmClient {
    /// Sends the request and reads the answer, plain or streamed.
    pub(super) async fn exchange(
        &self,
        ctx: CallCtx<'_>,
        provider: &ProviderConfig,
        mut request: reqwest::RequestBuilder,
        attempt: u32,
        on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Result<Parsed, LlmError> {
        let inner = &*self.inner;
        if on_event.is_none() {
            request = request.timeout(inner.timeout);
        }
        // One deadline for the whole call, streamed or not: a stream that keeps trickling
        // data never trips the idle timeout, and must still end.
        let deadline = tokio::time::Instant::now() + inner.timeout;
        let response = tokio::time::timeout_at(deadline, request.send())
            .await
            .map_err(|_| timeout(ctx, inner.timeout))?
            .map_err(|e| transport(ctx, e, inner.timeout))?;
        let status = response.status();
        if !status.is_success() {
            // Only a rate limit says when to come back: a 500 or 529 is retried with back-off,
            // whatever reset times its headers carry.
            let retry_after = (status.as_u16() == 429)
                .then(|| retry_after_from_headers(response.headers(), SystemTime::now()))
                .flatten();
            let body = response.text().await.unwrap_or_default();
            return Err(provider::http_error(
                ctx,
                status.as_u16(),
                retry_after,
                &body,
            ));
        }
        match on_event {
            None => {
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| transport(ctx, e, inner.timeout))?;
                provider::parse_body(provider.kind, ctx, &bytes)
            }
            Some(on_event) => tokio::time::timeout_at(
                deadline,
                self.read_stream(ctx, provider.kind, response, attempt, on_event),
            )
            .await
            .map_err(|_| timeout(ctx, inner.timeout))?,
        }
    }

    async fn read_stream(
        &self,
        ctx: CallCtx<'_>,
        kind: ProviderKind,
        mut response: reqwest::Response,
        attempt: u32,
        on_event: &mut (dyn FnMut(&StreamEvent) + Send),
    ) -> Result<Parsed, LlmError> {
        let idle = self.inner.stream_idle_timeout;
        let mut parser = SseParser::default();
        let mut state = StreamState::new(kind);
        let mut chars = 0usize;
        while !state.is_done() {
            let chunk = tokio::time::timeout(idle, response.chunk())
                .await
                .map_err(|_| ctx.stream_error(format!("no data for {idle:?}"), true))?
                .map_err(|e| transport(ctx, e, idle))?;
            let Some(chunk) = chunk else {
                if parser.has_partial_event() {
                    return Err(
                        ctx.stream_error("the stream was cut off in the middle of an event", true)
                    );
                }
                break;
            };
            for event in parser.push(&chunk) {
                let Some(delta) = state.on_event(ctx, event)? else {
                    continue;
                };
                chars += delta.len();
                let (input, output) = state.reported_tokens();
                on_event(&StreamEvent {
                    output_tokens_so_far: output.unwrap_or(0).max(estimate_tokens(chars)),
                    input_tokens: input,
                    delta_text: delta,
                    attempt,
                });
            }
        }
        state.finish(ctx)
    }
}

pub(super) fn timeout(ctx: CallCtx<'_>, after: Duration) -> LlmError {
    LlmError::Timeout {
        provider: ctx.provider.to_string(),
        model: ctx.model.to_string(),
        after,
    }
}

fn transport(ctx: CallCtx<'_>, error: reqwest::Error, after: Duration) -> LlmError {
    if error.is_timeout() {
        return timeout(ctx, after);
    }
    let error = error.without_url();
    LlmError::Transport {
        provider: ctx.provider.to_string(),
        model: ctx.model.to_string(),
        reason: crate::llm::error::describe_chain(&error),
        source: error,
    }
}
