//! Fallback chains: when a model is rate-limited past the request's patience, overloaded or
//! down, the next model of [`ChatRequest::fallbacks`] answers instead.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::retry::{Totals, reborrow};
use super::{
    AttemptInfo, AttemptRunner, ChatRequest, ChatResponse, LlmClient, LlmError, StreamEvent,
};

/// How long a model with a fallback after it may ask the call to wait, unless the request sets
/// [`ChatRequest::fallback_patience`].
pub const DEFAULT_FALLBACK_PATIENCE: Duration = Duration::from_secs(10);

/// A model of a fallback chain that did not answer, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FallbackSkip {
    /// The model, as requested (with its routing prefix).
    pub model: String,
    /// The error that made the call move on, as its message.
    pub reason: String,
    /// The HTTP status of that error, if it was one (429, 503, 529, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// Whether `error` from one model of a chain lets the next model answer: only failures of the
/// model or its provider (rate limits, overload, 5xx, an open circuit, connection errors,
/// timeouts, broken streams), never errors of the request itself (400, context length,
/// authentication, an unsupported capability, validation).
pub(super) fn falls_through(error: &LlmError) -> bool {
    error.is_retryable()
}

impl ChatRequest {
    /// The models to ask in order: the request's own model, then its fallbacks.
    fn chain(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.model.as_str()).chain(self.fallbacks.iter().map(String::as_str))
    }

    fn patience(&self) -> Duration {
        self.fallback_patience
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(DEFAULT_FALLBACK_PATIENCE)
    }
}

impl LlmClient {
    /// One answer with HTTP retries, from the request's model or, when it fails in a way that
    /// falls through, from its fallbacks in order. Every model goes through `runner` with the
    /// same [`AttemptInfo`], so a journal keeps one step per answer whichever model gave it.
    pub(super) async fn with_fallbacks(
        &self,
        req: &ChatRequest,
        runner: &dyn AttemptRunner,
        info: AttemptInfo,
        mut on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
        totals: &mut Totals,
    ) -> Result<ChatResponse, LlmError> {
        if req.fallbacks.is_empty() {
            return self
                .with_retries(req, runner, info, on_event, totals, None)
                .await;
        }
        let models: Vec<&str> = req.chain().collect();
        let mut trail = Vec::new();
        let mut index = 0;
        // Stream events count tries across the chain, so a listener sees the attempt change
        // (and drops the text so far) when the next model starts over.
        let mut last_try: Option<(usize, u32)> = None;
        let mut running_try = 0u32;
        let streaming = on_event.is_some();
        loop {
            let model = models[index];
            let next = models.get(index + 1).copied();
            let mut sent = req.clone();
            sent.model = model.to_string();
            sent.fallbacks.clear();
            let patience = next.map(|_| req.patience());
            let mut outer = reborrow(&mut on_event);
            let mut renumbered = |event: &StreamEvent| {
                if last_try != Some((index, event.attempt)) {
                    last_try = Some((index, event.attempt));
                    running_try += 1;
                }
                if let Some(outer) = outer.as_deref_mut() {
                    let mut event = event.clone();
                    event.attempt = running_try;
                    outer(&event);
                }
            };
            let listener: Option<&mut (dyn FnMut(&StreamEvent) + Send)> =
                streaming.then_some(&mut renumbered);
            let error = match self
                .with_retries(&sent, runner, info, listener, totals, patience)
                .await
            {
                Ok(mut answer) => {
                    if index > 0 {
                        answer.fallback_model = Some(model.to_string());
                    }
                    answer.fallback_trail = trail;
                    return Ok(answer);
                }
                Err(error) => error,
            };
            let Some(next) = next.filter(|_| falls_through(&error)) else {
                return Err(error);
            };
            tracing::warn!(%model, %next, %error, "falling back to the next model");
            trail.push(FallbackSkip {
                model: model.to_string(),
                status: error.status(),
                reason: error.to_string(),
            });
            totals.retries += 1;
            index += 1;
        }
    }
}
