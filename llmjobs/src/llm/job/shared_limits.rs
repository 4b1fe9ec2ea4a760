//! The bridge from the client's [`SharedLimiter`] to the job database: the only place that
//! knows both the client's limits and the store that keeps them.

use std::sync::Arc;
use std::time::Duration;

use crate::llm::{Admission, LlmClient, LlmError, Reservation, SharedLimiter, Spent};
use crate::store::Store;
use crate::store::rate::{Intervals, RateDecision, RateDemand, RateSpent, RateStore, ScopeDemand};

/// Shared limits kept in the job database.
pub(crate) struct StoreLimiter {
    rates: Arc<dyn RateStore>,
}

impl std::fmt::Debug for StoreLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLimiter")
    }
}

/// The client, with its limits moved into the database when it asked for that and the
/// database can share them.
pub(crate) fn share_through(client: LlmClient, store: &dyn Store) -> LlmClient {
    if !client.wants_shared_limits() || client.has_shared_limits() {
        return client;
    }
    match store.rate_store() {
        Some(rates) => client.with_shared_limiter(Arc::new(StoreLimiter { rates })),
        None => {
            tracing::debug!("this database is the process's own: LLM rate limits stay in memory");
            client
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn unavailable(error: crate::Error) -> LlmError {
    LlmError::SharedLimits(error.to_string())
}

fn demand(reservation: &Reservation) -> RateDemand {
    let scopes = reservation
        .scopes
        .iter()
        .map(|scope| {
            let l = scope.limit;
            ScopeDemand {
                key: scope.key.clone(),
                intervals: Intervals {
                    request: Intervals::of(l.window, l.requests.map(u64::from)),
                    token: Intervals::of(l.window, l.tokens),
                    input: Intervals::of(l.window, l.input_tokens),
                    output: Intervals::of(l.window, l.output_tokens),
                },
                burst_ms: l.burst.as_secs_f64() * 1000.0,
                max_concurrency: l.max_concurrency.map(|n| n as u64),
            }
        })
        .collect();
    RateDemand {
        scopes,
        input_tokens: reservation.input_tokens,
        output_tokens: reservation.output_tokens,
        lease_ms: ms(reservation.lease),
    }
}

impl SharedLimiter for StoreLimiter {
    fn reserve<'a>(
        &'a self,
        reservation: &'a Reservation,
    ) -> crate::llm::BoxFuture<'a, Result<Admission, LlmError>> {
        Box::pin(async move {
            let decision = self
                .rates
                .reserve(demand(reservation))
                .await
                .map_err(unavailable)?;
            let millis = |ms: i64| Duration::from_millis(ms.max(0) as u64);
            Ok(match decision {
                RateDecision::Granted { lease, start_in_ms } => Admission::Granted {
                    lease,
                    start_in: millis(start_in_ms),
                },
                RateDecision::Wait { ms } => Admission::Wait(millis(ms)),
            })
        })
    }

    fn check_in<'a>(
        &'a self,
        lease: &'a str,
        extend_by: Duration,
    ) -> crate::llm::BoxFuture<'a, Result<Duration, LlmError>> {
        Box::pin(async move {
            let paused = self
                .rates
                .check_in(lease.to_string(), ms(extend_by))
                .await
                .map_err(unavailable)?;
            Ok(Duration::from_millis(paused.max(0) as u64))
        })
    }

    fn settle<'a>(
        &'a self,
        lease: &'a str,
        spent: Spent,
    ) -> crate::llm::BoxFuture<'a, Result<(), LlmError>> {
        Box::pin(async move {
            let spent = RateSpent {
                sent: spent.sent,
                input_tokens: spent.input_tokens,
                output_tokens: spent.output_tokens,
            };
            self.rates
                .settle(lease.to_string(), spent)
                .await
                .map_err(unavailable)
        })
    }

    fn pause<'a>(
        &'a self,
        scope: &'a str,
        duration: Duration,
    ) -> crate::llm::BoxFuture<'a, Result<(), LlmError>> {
        Box::pin(async move {
            self.rates
                .pause(scope.to_string(), ms(duration))
                .await
                .map_err(unavailable)
        })
    }
}
