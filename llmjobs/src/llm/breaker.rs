//! Circuit breakers, one per provider, shared by every call of a client: a provider that keeps
//! failing is left alone for a cool-down instead of being hammered by every call's retries.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::LlmError;

/// When a provider's circuit opens, and for how long.
///
/// After `failures` failed calls to one provider within `window` (transport errors, timeouts,
/// 5xx, broken streams; not 429s, which pause the provider on their own, and not 4xx, which
/// prove it is up), the circuit opens: for `cool_down`, calls to that provider fail at once with
/// [`LlmError::CircuitOpen`] without a network call, or go to the provider's fallback
/// ([`LlmClientBuilder::fallback`](super::LlmClientBuilder::fallback)). Then one call is let
/// through as a probe: if the provider answers, the circuit closes; if not, it opens again.
/// Opening and closing are logged at `warn` and `info` level. Default: 5 failures in 60 s,
/// 30 s cool-down.
///
/// ```
/// use std::time::Duration;
/// use llmjobs::llm::{CircuitBreaker, LlmClient};
///
/// let client = LlmClient::builder()
///     .circuit_breaker(CircuitBreaker::new().failures(3).cool_down(Duration::from_secs(10)))
///     .build()?;
/// # let _ = client;
/// # Ok::<(), llmjobs::llm::LlmError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CircuitBreaker {
    /// How many failures within `window` open the circuit (0: never).
    pub failures: u32,
    /// The window the failures are counted in.
    pub window: Duration,
    /// How long an open circuit stays open before a probe.
    pub cool_down: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            failures: 5,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(30),
        }
    }
}

impl CircuitBreaker {
    /// The default: 5 failures in 60 s open the circuit for 30 s.
    pub fn new() -> Self {
        CircuitBreaker::default()
    }

    /// A breaker that never opens.
    pub fn disabled() -> Self {
        CircuitBreaker::default().failures(0)
    }

    /// Sets how many failures within the window open the circuit (0: never).
    pub fn failures(mut self, failures: u32) -> Self {
        self.failures = failures;
        self
    }

    /// Sets the window the failures are counted in.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets how long an open circuit stays open before a probe.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }
}

/// One provider's circuit.
#[derive(Debug)]
enum Circuit {
    /// Calls go through; the times of recent failures.
    Closed(VecDeque<Instant>),
    /// Calls fail fast until then.
    Open(Instant),
    /// One probe is under way; other calls fail fast.
    Probing,
}

/// What a call may do.
pub(crate) enum Admission {
    /// Send it, and report how it went on the ticket.
    Go(Ticket),
    /// Do not send it: the circuit is open for about this long.
    Refused(Duration),
}

/// The circuits of every provider of a client.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    config: CircuitBreaker,
    circuits: Arc<Mutex<HashMap<String, Circuit>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Breakers {
    pub(crate) fn new(config: CircuitBreaker) -> Self {
        Breakers {
            config,
            circuits: Arc::default(),
        }
    }

    /// Whether a call to `provider` may go out now.
    pub(crate) fn admit(&self, provider: &str) -> Admission {
        let now = Instant::now();
        let mut circuits = lock(&self.circuits);
        let circuit = circuits
            .entry(provider.to_string())
            .or_insert_with(|| Circuit::Closed(VecDeque::new()));
        let probe = match circuit {
            Circuit::Closed(_) => false,
            Circuit::Open(until) if now < *until => return Admission::Refused(*until - now),
            Circuit::Open(_) => {
                *circuit = Circuit::Probing;
                tracing::info!(provider, "circuit breaker half open: sending one probe");
                true
            }
            // A probe takes at most one call's time; meanwhile, others wait a little and ask
            // again.
            Circuit::Probing => {
                return Admission::Refused(self.config.cool_down.min(Duration::from_secs(1)));
            }
        };
        Admission::Go(Ticket {
            provider: provider.to_string(),
            probe,
            config: self.config,
            circuits: self.circuits.clone(),
            settled: false,
        })
    }
}

/// A call let through; how it went is recorded when it is settled (or, if it never is, as a
/// probe that must be sent again).
pub(crate) struct Ticket {
    provider: String,
    probe: bool,
    config: CircuitBreaker,
    circuits: Arc<Mutex<HashMap<String, Circuit>>>,
    settled: bool,
}

/// Whether an error says the provider is down (as opposed to busy or refusing the request).
fn is_outage(error: &LlmError) -> bool {
    error.is_retryable() && !error.is_rate_limited()
}

impl Ticket {
    /// Records how the call went.
    pub(crate) fn settle<T>(mut self, result: &Result<T, LlmError>) {
        self.settled = true;
        let failed = result.as_ref().err().is_some_and(is_outage);
        let now = Instant::now();
        let mut circuits = lock(&self.circuits);
        let Some(circuit) = circuits.get_mut(&self.provider) else {
            return;
        };
        let config = self.config;
        let probing = matches!(circuit, Circuit::Probing) && self.probe;
        if probing && !failed {
            *circuit = Circuit::Closed(VecDeque::new());
            tracing::info!(provider = %self.provider, "circuit breaker closed: the probe got an answer");
        } else if probing {
            *circuit = Circuit::Open(now + config.cool_down);
            tracing::warn!(provider = %self.provider, cool_down = ?config.cool_down, "circuit breaker opened again: the probe failed");
        } else if let Circuit::Closed(failures) = circuit
            && failed
            && config.failures > 0
        {
            failures.push_back(now);
            while failures
                .front()
                .is_some_and(|t| now.duration_since(*t) > config.window)
            {
                failures.pop_front();
            }
            if failures.len() >= config.failures as usize {
                *circuit = Circuit::Open(now + config.cool_down);
                tracing::warn!(
                    provider = %self.provider, failures = config.failures, window = ?config.window,
                    cool_down = ?config.cool_down,
                    "circuit breaker opened: calls to this provider fail fast during the cool-down"
                );
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            // The probe was abandoned (its caller went away): let the next call probe.
            let mut circuits = lock(&self.circuits);
            if let Some(circuit) = circuits.get_mut(&self.provider) {
                *circuit = Circuit::Open(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> Result<(), LlmError> {
        Err(LlmError::Http {
            provider: "p".into(),
            model: "m".into(),
            status: 503,
            message: String::new(),
            retry_after: None,
        })
    }

    fn go(b: &Breakers) -> Ticket {
        match b.admit("p") {
            Admission::Go(ticket) => ticket,
            Admission::Refused(d) => panic!("refused for {d:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_open_the_circuit_and_a_good_probe_closes_it() {
        let b = Breakers::new(
            CircuitBreaker::new()
                .failures(2)
                .cool_down(Duration::from_secs(10)),
        );
        go(&b).settle(&outage());
        go(&b).settle(&outage());
        assert!(matches!(b.admit("p"), Admission::Refused(_)));
        tokio::time::advance(Duration::from_secs(11)).await;
        let probe = go(&b);
        assert!(
            matches!(b.admit("p"), Admission::Refused(_)),
            "one probe at a time"
        );
        probe.settle(&Ok(()));
        go(&b).settle(&Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_and_an_abandoned_one_is_sent_again() {
        let b = Breakers::new(
            CircuitBreaker::new()
                .failures(1)
                .cool_down(Duration::from_secs(10)),
        );
        go(&b).settle(&outage());
        tokio::time::advance(Duration::from_secs(11)).await;
        go(&b).settle(&outage());
        assert!(matches!(b.admit("p"), Admission::Refused(_)));
        tokio::time::advance(Duration::from_secs(11)).await;
        drop(go(&b));
        go(&b).settle(&Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_count() {
        let b = Breakers::new(
            CircuitBreaker::new()
                .failures(2)
                .window(Duration::from_secs(5)),
        );
        go(&b).settle(&outage());
        tokio::time::advance(Duration::from_secs(6)).await;
        go(&b).settle(&outage());
        go(&b).settle(&Ok(()));
    }
}
