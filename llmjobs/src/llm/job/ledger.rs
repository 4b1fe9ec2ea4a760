//! Writing each provider call a job makes to the usage ledger.

use std::time::Duration;

use super::budget::Hold;
use crate::JobContext;
use crate::llm::{BatchItemErrorKind, BatchItemResult, BatchRequest, ChatResponse, LlmError};
use crate::status::now_ms;
use crate::usage::{CallOutcome, LedgerEntry};

/// Records a call to `model` that ended with `result` after `latency`, in place of its budget
/// reservation if it held one. Errors raised before anything was sent (no route, no key, an
/// open circuit, a budget) are no call and are not recorded. A ledger that cannot be written
/// is logged, never the call's failure: the answer was paid for either way.
pub(super) async fn record(
    ctx: &JobContext,
    model: &str,
    provider: &str,
    result: &Result<ChatResponse, LlmError>,
    latency: Duration,
    hold: Option<Hold>,
) {
    let entry = call_entry(ctx, model, provider, result, latency);
    match hold {
        Some(hold) => hold.settle(entry.into_iter().collect()).await,
        None => {
            if let Some(entry) = entry {
                write(ctx, vec![entry]).await;
            }
        }
    }
}

fn call_entry(
    ctx: &JobContext,
    model: &str,
    provider: &str,
    result: &Result<ChatResponse, LlmError>,
    latency: Duration,
) -> Option<LedgerEntry> {
    Some(match result {
        Ok(response) => {
            entry(ctx, model, &response.provider, CallOutcome::Ok, latency).with_usage(response)
        }
        Err(error) => match error_kind(error) {
            Some(kind) => {
                let mut entry = entry(ctx, model, provider, CallOutcome::Error, latency);
                entry.error_kind = Some(kind.to_string());
                entry
            }
            None => return None,
        },
    })
}

/// Records an answer the completion cache gave: no tokens, no cost.
pub(super) async fn record_cache_hit(ctx: &JobContext, model: &str, response: &ChatResponse) {
    let mut entry = entry(
        ctx,
        model,
        &response.provider,
        CallOutcome::CacheHit,
        Duration::ZERO,
    );
    entry.cost_usd = Some(0.0);
    write(ctx, vec![entry]).await;
}

/// The rows of a provider batch's requests (their `outcomes`, in the same order): answers
/// with their usage at the batch price, and errors. A batch item has no latency of its own.
pub(super) fn batch_entries(
    ctx: &JobContext,
    provider: &str,
    requests: &[BatchRequest],
    outcomes: &[BatchItemResult],
) -> Vec<LedgerEntry> {
    requests
        .iter()
        .zip(outcomes)
        .map(|(request, result)| {
            let model = &request.request.model;
            match &result.outcome {
                Ok(answer) => {
                    entry(ctx, model, provider, CallOutcome::Ok, Duration::ZERO).with_usage(answer)
                }
                Err(error) => {
                    let mut entry = entry(ctx, model, provider, CallOutcome::Error, Duration::ZERO);
                    entry.error_kind = Some(
                        match error.kind {
                            BatchItemErrorKind::Failed => "batch_failed",
                            BatchItemErrorKind::Expired => "batch_expired",
                            BatchItemErrorKind::Cancelled => "batch_cancelled",
                            BatchItemErrorKind::Missing => "batch_missing",
                        }
                        .to_string(),
                    );
                    entry
                }
            }
        })
        .collect()
}

pub(super) async fn write(ctx: &JobContext, entries: Vec<LedgerEntry>) {
    if let Err(e) = ctx.store().record_usage(entries).await {
        tracing::warn!(job = %ctx.id(), error = %e, "could not write an LLM call to the usage ledger");
    }
}

fn entry(
    ctx: &JobContext,
    model: &str,
    provider: &str,
    outcome: CallOutcome,
    latency: Duration,
) -> LedgerEntry {
    LedgerEntry {
        job_id: ctx.id(),
        job_name: ctx.name().to_string(),
        model: model.to_string(),
        provider: provider.to_string(),
        input_tokens: 0,
        output_tokens: 0,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        // A failed call reports no usage and is not billed.
        cost_usd: Some(0.0),
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        outcome,
        error_kind: None,
        at: now_ms(),
    }
}

impl LedgerEntry {
    fn with_usage(mut self, response: &ChatResponse) -> Self {
        let usage = response.usage;
        self.input_tokens = usage.input_tokens;
        self.output_tokens = usage.output_tokens;
        self.cache_read_tokens = usage.cache_read_tokens;
        self.cache_write_tokens = usage.cache_write_tokens;
        self.cost_usd = response.cost;
        self
    }
}

/// What kind of failed call `error` is, for the ledger; `None` when nothing was sent.
fn error_kind(error: &LlmError) -> Option<&'static str> {
    Some(match error {
        LlmError::Http { status: 429, .. } => "rate_limited",
        LlmError::Http { status, .. } if *status >= 500 => "server_error",
        LlmError::Http { .. } => "http_error",
        LlmError::Timeout { .. } => "timeout",
        LlmError::Transport { .. } => "transport",
        LlmError::ContextLength { .. } => "context_length",
        LlmError::InvalidResponse { .. } => "invalid_response",
        LlmError::Stream { .. } => "stream",
        // The command ran (and may have called a paid model) before it failed.
        LlmError::Command { .. } => "command",
        LlmError::RetriesExhausted { last, .. } => return error_kind(last),
        LlmError::Config(_)
        | LlmError::SharedLimits(_)
        | LlmError::UnknownProvider { .. }
        | LlmError::MissingApiKey { .. }
        | LlmError::InvalidRequest { .. }
        | LlmError::Unsupported { .. }
        | LlmError::CircuitOpen { .. }
        | LlmError::BudgetExceeded { .. }
        | LlmError::NeedsReview { .. } => return None,
    })
}
