//! A call's place in the rate limits: in this process's memory (the fast path), or in the
//! shared limits of every process.

use std::sync::Arc;
use std::time::Duration;

use crate::llm::LlmError;
use crate::llm::limits::{Limiter, Permit, Tokens};
use crate::llm::shared::{self, LimitScope, Reservation, SharedLimiter, SharedPermit, Spent};

/// The name every process gives a provider's shared budget.
pub(super) fn provider_scope(provider: &str) -> String {
    format!("provider:{provider}")
}

/// The name every process gives a model's shared budget (also the one a 429 pauses).
pub(super) fn model_scope(model: &str) -> String {
    format!("model:{model}")
}

/// Where a client keeps its limits.
#[derive(Clone, Debug)]
pub(super) enum Limits {
    /// In this process only: no database round trip.
    Local,
    /// Shared by every process through `limiter`; reservations hold for `lease`.
    Shared {
        limiter: Arc<dyn SharedLimiter>,
        lease: Duration,
    },
}

/// A call's place in the limits, held while it runs.
pub(super) enum CallPermit {
    Local(Permit),
    Shared(SharedPermit),
}

impl Limits {
    /// Waits until a call of `tokens` to `model` at `provider` may go.
    pub(super) async fn acquire(
        &self,
        local: &Limiter,
        provider: &str,
        model: &str,
        tokens: Tokens,
    ) -> Result<CallPermit, LlmError> {
        match self {
            Limits::Local => Ok(CallPermit::Local(
                local.acquire(provider, model, tokens).await,
            )),
            Limits::Shared { limiter, lease } => {
                let mut scopes = Vec::with_capacity(2);
                if let Some(limit) = local.provider_limit(provider) {
                    scopes.push(LimitScope::new(provider_scope(provider), limit));
                }
                // Always present, limited or not, so that a 429 on the model pauses it.
                let model_limit = local.model_limit(model).unwrap_or_default();
                scopes.push(LimitScope::new(model_scope(model), model_limit));
                let reservation = Reservation {
                    scopes,
                    input_tokens: tokens.input,
                    output_tokens: tokens.output,
                    lease: *lease,
                };
                Ok(CallPermit::Shared(
                    shared::acquire(limiter, &reservation).await?,
                ))
            }
        }
    }

    /// After a 429: no call to `model` (in-process: to `provider`) starts for `pause`.
    pub(super) async fn pause(
        &self,
        local: &Limiter,
        provider: &str,
        model: &str,
        pause: Duration,
    ) {
        match self {
            Limits::Local => local.pause(provider, tokio::time::Instant::now() + pause),
            Limits::Shared { limiter, .. } => {
                // On failure the callers' own back-off still spaces their retries.
                if let Err(error) = limiter.pause(&model_scope(model), pause).await {
                    tracing::warn!(%error, "could not pause the shared rate limit");
                }
            }
        }
    }
}

impl CallPermit {
    /// Runs the call, keeping a shared reservation's lease.
    pub(super) async fn hold<T>(&self, call: impl Future<Output = T>) -> T {
        match self {
            CallPermit::Local(_) => call.await,
            CallPermit::Shared(permit) => permit.hold(call).await,
        }
    }

    /// Replaces the call's estimate with the tokens it used.
    pub(super) async fn settle(self, used: Tokens) {
        match self {
            CallPermit::Local(permit) => permit.reconcile(used),
            CallPermit::Shared(permit) => {
                permit.settle(Spent::tokens(used.input, used.output)).await;
            }
        }
    }
}
