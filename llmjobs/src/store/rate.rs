//! Rate limits kept in the database, so every process sharing it stays under them together.
//!
//! Each budget (a scope's requests, tokens, input tokens or output tokens) is a row's
//! "theoretical arrival time" (the generic cell rate algorithm): the moment the budget will
//! have earned back everything spent. A call costing `c` units takes `c × interval` of it,
//! where `interval` is the window divided by the limit; it may start once the debt that would
//! leave is at most the burst. So a reservation is one row update per scope, nothing is
//! counted row by row, and nothing spent can leak: time pays every debt back. Concurrency is
//! counted in lease rows that expire unless renewed, so a dead process's calls give their
//! places back. The backends run [`decide`] inside one short transaction per reservation.

use std::time::Duration;

use crate::Result;

/// How long a caller waits before asking again while a scope's concurrency is full.
const CONCURRENCY_POLL_MS: f64 = 50.0;

/// The furthest ahead a place is handed out; further, the caller asks again later.
const HORIZON_MS: f64 = 5_000.0;

/// One scope of a reservation, with its limits turned into milliseconds of budget per unit.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ScopeDemand {
    pub(crate) key: String,
    /// Milliseconds of budget per request, token, input token and output token (zero: that
    /// budget is not limited).
    pub(crate) intervals: Intervals,
    /// The most budget, in milliseconds, that may be spent at once.
    pub(crate) burst_ms: f64,
    pub(crate) max_concurrency: Option<u64>,
}

/// Milliseconds of budget per unit of each measure.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Intervals {
    pub(crate) request: f64,
    pub(crate) token: f64,
    pub(crate) input: f64,
    pub(crate) output: f64,
}

impl Intervals {
    /// The budget of `window` shared out over `limit` units; zero without a limit.
    pub(crate) fn of(window: Duration, limit: Option<u64>) -> f64 {
        match limit {
            Some(n) if n > 0 => window.as_secs_f64() * 1000.0 / n as f64,
            _ => 0.0,
        }
    }
}

/// A call's claim on the shared limits.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RateDemand {
    pub(crate) scopes: Vec<ScopeDemand>,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) lease_ms: i64,
}

/// What a call spent, to correct its estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateSpent {
    pub(crate) sent: bool,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
}

/// The store's answer to a [`RateDemand`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RateDecision {
    Granted { lease: String, start_in_ms: i64 },
    Wait { ms: i64 },
}

/// A scope's row, as read in the reservation's transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Bucket {
    /// The theoretical arrival times (ms since the epoch) of the four budgets.
    pub(crate) tats: [f64; 4],
    pub(crate) paused_until: i64,
    /// Unexpired leases of the scope.
    pub(crate) in_flight: u64,
}

/// Decides a reservation against the scopes' rows (in `demand.scopes` order) at `now` (ms);
/// on success, moves the rows' arrival times and says when the call may start.
pub(crate) fn decide(
    demand: &RateDemand,
    buckets: &mut [Bucket],
    now: f64,
) -> std::result::Result<f64, f64> {
    let paused = buckets.iter().map(|b| b.paused_until).max().unwrap_or(0) as f64;
    if paused > now {
        return Err(paused - now);
    }
    let full = demand
        .scopes
        .iter()
        .zip(buckets.iter())
        .any(|(s, b)| s.max_concurrency.is_some_and(|max| b.in_flight >= max));
    if full {
        return Err(CONCURRENCY_POLL_MS);
    }
    let costs = |s: &ScopeDemand| {
        let tokens = (demand.input_tokens + demand.output_tokens) as f64;
        [
            s.intervals.request,
            s.intervals.token * tokens,
            s.intervals.input * demand.input_tokens as f64,
            s.intervals.output * demand.output_tokens as f64,
        ]
    };
    let mut start = now;
    for (scope, bucket) in demand.scopes.iter().zip(buckets.iter()) {
        for (cost, tat) in costs(scope).into_iter().zip(bucket.tats) {
            if cost > 0.0 {
                // A call bigger than the burst goes once the budget owes nothing.
                let burst = scope.burst_ms.max(cost);
                start = start.max(tat + cost - burst);
            }
        }
    }
    if start - now > HORIZON_MS {
        return Err(start - now - HORIZON_MS / 2.0);
    }
    for (scope, bucket) in demand.scopes.iter().zip(buckets.iter_mut()) {
        for (cost, tat) in costs(scope).into_iter().zip(bucket.tats.iter_mut()) {
            if cost > 0.0 {
                *tat = tat.max(start) + cost;
            }
        }
    }
    Ok(start - now)
}

/// The correction of a settled lease: what to add to each budget's arrival time, per unit of
/// its interval, for a lease that estimated `estimate` (input, output).
pub(crate) fn correction(estimate: (u64, u64), spent: RateSpent) -> [f64; 4] {
    let (input, output) = if spent.sent {
        (spent.input_tokens, spent.output_tokens)
    } else {
        (0, 0)
    };
    let delta = |now: u64, was: u64| now as f64 - was as f64;
    [
        if spent.sent { 0.0 } else { -1.0 },
        delta(input + output, estimate.0 + estimate.1),
        delta(input, estimate.0),
        delta(output, estimate.1),
    ]
}

/// Shared rate limits kept by a store.
#[async_trait::async_trait]
pub(crate) trait RateStore: Send + Sync + 'static {
    /// Reserves a place for one call in every scope (one transaction), or says how long to wait.
    async fn reserve(&self, demand: RateDemand) -> Result<RateDecision>;

    /// Extends a lease by `lease_ms` from now; returns how long (ms) any of its scopes is still
    /// paused.
    async fn check_in(&self, lease: String, lease_ms: i64) -> Result<i64>;

    /// Ends a lease, correcting its scopes' budgets with what the call spent.
    async fn settle(&self, lease: String, spent: RateSpent) -> Result<()>;

    /// Pauses a scope for `ms` from now (a later pause wins).
    async fn pause(&self, scope: String, ms: i64) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(requests_per_s: u64, burst_ms: f64) -> RateDemand {
        RateDemand {
            scopes: vec![ScopeDemand {
                key: "model:m".into(),
                intervals: Intervals {
                    request: Intervals::of(Duration::from_secs(1), Some(requests_per_s)),
                    ..Intervals::default()
                },
                burst_ms,
                max_concurrency: None,
            }],
            input_tokens: 10,
            output_tokens: 10,
            lease_ms: 30_000,
        }
    }

    #[test]
    fn calls_are_spaced_at_the_rate_without_a_burst() {
        let d = demand(10, 0.0);
        let mut buckets = [Bucket::default()];
        let starts: Vec<f64> = (0..3)
            .map(|_| decide(&d, &mut buckets, 1_000.0).unwrap())
            .collect();
        assert_eq!(starts, [0.0, 100.0, 200.0]);
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_holds() {
        let d = demand(10, 300.0);
        let mut buckets = [Bucket::default()];
        let starts: Vec<f64> = (0..5)
            .map(|_| decide(&d, &mut buckets, 1_000.0).unwrap())
            .collect();
        assert_eq!(starts, [0.0, 0.0, 0.0, 100.0, 200.0]);
    }

    #[test]
    fn a_pause_and_a_full_scope_make_callers_wait() {
        let mut d = demand(10, 0.0);
        let mut buckets = [Bucket {
            paused_until: 3_000,
            ..Bucket::default()
        }];
        assert_eq!(decide(&d, &mut buckets, 1_000.0), Err(2_000.0));
        d.scopes[0].max_concurrency = Some(2);
        buckets[0] = Bucket {
            in_flight: 2,
            ..Bucket::default()
        };
        assert_eq!(decide(&d, &mut buckets, 1_000.0), Err(CONCURRENCY_POLL_MS));
    }

    #[test]
    fn tokens_pace_calls_and_a_correction_moves_the_budget_back() {
        let mut d = demand(1_000, 0.0);
        // 100 tokens a second: a call of 20 estimated tokens takes 200 ms of budget.
        d.scopes[0].intervals.token = Intervals::of(Duration::from_secs(1), Some(100));
        let mut buckets = [Bucket::default()];
        assert_eq!(decide(&d, &mut buckets, 0.0), Ok(0.0));
        assert_eq!(decide(&d, &mut buckets, 0.0), Ok(200.0));
        // The second call used 5 tokens, not 20: 150 ms of budget come back.
        let used = RateSpent {
            sent: true,
            input_tokens: 5,
            output_tokens: 0,
        };
        let back = correction((10, 10), used)[1] * d.scopes[0].intervals.token;
        buckets[0].tats[1] += back;
        assert_eq!(decide(&d, &mut buckets, 0.0), Ok(250.0));
    }

    #[test]
    fn nothing_is_handed_out_past_the_horizon() {
        let d = demand(1, 0.0);
        let mut buckets = [Bucket::default()];
        for _ in 0..6 {
            assert!(decide(&d, &mut buckets, 0.0).is_ok());
        }
        assert!(decide(&d, &mut buckets, 0.0).is_err());
    }

    #[test]
    fn an_unsent_call_gives_its_request_and_tokens_back() {
        let unsent = RateSpent {
            sent: false,
            input_tokens: 0,
            output_tokens: 0,
        };
        assert_eq!(correction((30, 70), unsent), [-1.0, -100.0, -30.0, -70.0]);
        let used = RateSpent {
            sent: true,
            input_tokens: 30,
            output_tokens: 20,
        };
        assert_eq!(correction((30, 70), used), [0.0, -50.0, 0.0, -50.0]);
    }
}
