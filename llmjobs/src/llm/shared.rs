//! Rate limits shared by every process of a job database: the [`SharedLimiter`] trait the
//! client calls, and the client's side of a reservation (waiting for it, keeping its lease,
//! settling it).
//!
//! The client knows nothing of where the shared state lives: the job runtime hands it an
//! implementation kept in its database (see
//! [`LlmClientBuilder::shared_limits`](super::LlmClientBuilder::shared_limits)); another could
//! keep it elsewhere.

use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, LlmError, RateLimit};

/// How long a reservation holds without being renewed. A process that dies holding one gives
/// its place back after this long at most.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Never wait longer than this between two asks while a scope is paused or full.
const MAX_POLL: Duration = Duration::from_secs(5);

/// One budget a call counts against: a provider's or a model's.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LimitScope {
    /// The budget's name, the same in every process: `provider:openai`, `model:openai/gpt-4o`.
    pub key: String,
    /// Its limits. A scope whose limit counts nothing still holds pauses after a 429.
    pub limit: RateLimit,
}

impl LimitScope {
    /// A scope named `key` with `limit`.
    pub fn new(key: impl Into<String>, limit: RateLimit) -> Self {
        LimitScope {
            key: key.into(),
            limit,
        }
    }
}

/// What a call asks of the shared limits before it is sent.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Reservation {
    /// Every scope the call counts against (provider first, then model).
    pub scopes: Vec<LimitScope>,
    /// The estimated input tokens.
    pub input_tokens: u64,
    /// The estimated output tokens (the request's `max_tokens`, or a default).
    pub output_tokens: u64,
    /// How long the reservation holds unless renewed with [`SharedLimiter::check_in`].
    pub lease: Duration,
}

/// The answer to a [`Reservation`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Reserved: the call may be sent `start_in` from now (zero: at once). `lease` names the
    /// reservation for [`SharedLimiter::check_in`] and [`SharedLimiter::settle`].
    Granted {
        /// The reservation's id.
        lease: String,
        /// How long until the reserved place in the budget comes.
        start_in: Duration,
    },
    /// Nothing was reserved (a scope is paused after a 429, or its concurrency is full): ask
    /// again after this long.
    Wait(Duration),
}

/// What a reserved call really spent, to correct its estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Spent {
    /// Whether the request reached the provider (a call that was never sent gives its request
    /// and its tokens back).
    pub sent: bool,
    /// The input tokens the provider reported.
    pub input_tokens: u64,
    /// The output tokens the provider reported.
    pub output_tokens: u64,
}

impl Spent {
    /// A call that was sent and used these tokens.
    pub fn tokens(input_tokens: u64, output_tokens: u64) -> Self {
        Spent {
            sent: true,
            input_tokens,
            output_tokens,
        }
    }

    /// A call that was never sent.
    pub fn unsent() -> Self {
        Spent::default()
    }
}

/// Rate limits kept where every process can see them, so that all of them together stay under
/// a provider's limits.
///
/// A call reserves its place ([`SharedLimiter::reserve`]) before it is sent, keeps its lease
/// while it runs ([`SharedLimiter::check_in`]), and settles it with what it really used
/// ([`SharedLimiter::settle`]). A 429 pauses a scope for everyone ([`SharedLimiter::pause`]).
/// A reservation whose process died expires with its lease.
pub trait SharedLimiter: Send + Sync + std::fmt::Debug {
    /// Reserves a place for one call in every scope, or says how long to wait.
    fn reserve<'a>(
        &'a self,
        reservation: &'a Reservation,
    ) -> BoxFuture<'a, Result<Admission, LlmError>>;

    /// Extends a reservation's lease by `lease` from now, and says how long any of its scopes
    /// is still paused (zero: not paused).
    fn check_in<'a>(
        &'a self,
        lease: &'a str,
        extend_by: Duration,
    ) -> BoxFuture<'a, Result<Duration, LlmError>>;

    /// Ends a reservation, correcting its estimate with what the call spent.
    fn settle<'a>(&'a self, lease: &'a str, spent: Spent) -> BoxFuture<'a, Result<(), LlmError>>;

    /// Stops every call counted against `scope` from starting for `duration` (a later pause
    /// wins over an earlier one).
    fn pause<'a>(
        &'a self,
        scope: &'a str,
        duration: Duration,
    ) -> BoxFuture<'a, Result<(), LlmError>>;
}

/// A granted reservation held by a call. Settled with [`SharedPermit::settle`]; dropped
/// unsettled (the call's future was dropped, or it failed before an answer), it is settled at
/// its estimate in the background.
#[derive(Debug)]
pub(crate) struct SharedPermit {
    limiter: Arc<dyn SharedLimiter>,
    lease: Option<String>,
    lease_for: Duration,
    estimate: Spent,
}

impl SharedPermit {
    /// Runs `call` while renewing the lease, so a long call keeps its place.
    pub(crate) async fn hold<T>(&self, call: impl Future<Output = T>) -> T {
        let Some(lease) = &self.lease else {
            return call.await;
        };
        let every = self.lease_for / 3;
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                if let Err(error) = self.limiter.check_in(lease, self.lease_for).await {
                    tracing::warn!(%error, "could not renew a shared rate-limit lease");
                }
            }
        };
        tokio::select! {
            out = call => out,
            never = renew => never,
        }
    }

    /// Ends the reservation with what the call spent.
    pub(crate) async fn settle(mut self, spent: Spent) {
        if let Some(lease) = self.lease.take()
            && let Err(error) = self.limiter.settle(&lease, spent).await
        {
            // Its lease expires on its own; only the correction is lost.
            tracing::warn!(%error, "could not settle a shared rate-limit reservation");
        }
    }
}

impl Drop for SharedPermit {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let limiter = self.limiter.clone();
        let estimate = self.estimate;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = limiter.settle(&lease, estimate).await;
            });
        }
    }
}

/// Waits until the shared limits let the call go, then returns its reservation.
pub(crate) async fn acquire(
    limiter: &Arc<dyn SharedLimiter>,
    reservation: &Reservation,
) -> Result<SharedPermit, LlmError> {
    let estimate = Spent::tokens(reservation.input_tokens, reservation.output_tokens);
    loop {
        match limiter.reserve(reservation).await? {
            Admission::Wait(wait) => {
                tracing::debug!(?wait, "shared rate limit: waiting");
                tokio::time::sleep(wait.min(MAX_POLL)).await;
            }
            Admission::Granted { lease, start_in } => {
                let permit = SharedPermit {
                    limiter: limiter.clone(),
                    lease: Some(lease),
                    lease_for: reservation.lease,
                    estimate,
                };
                if start_in.is_zero() {
                    return Ok(permit);
                }
                // The lease is renewed meanwhile, however short it is.
                permit.hold(tokio::time::sleep(start_in)).await;
                // A 429 met by another call while this one waited for its place pauses it too.
                let lease = permit.lease.as_deref().unwrap_or_default();
                let paused = limiter.check_in(lease, reservation.lease).await?;
                if paused.is_zero() {
                    return Ok(permit);
                }
                tracing::debug!(?paused, "shared rate limit paused after a 429: waiting");
                permit.settle(Spent::unsent()).await;
                tokio::time::sleep(paused).await;
            }
        }
    }
}
