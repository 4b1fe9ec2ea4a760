//! Rate limits shared by every caller of one client: requests and tokens per window, a
//! concurrency cap, and provider-wide pauses after a 429.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::router::matches_pattern;

/// Limits on requests, tokens and concurrency for a model or a whole provider.
///
/// The request and token counts hold over any sliding window (a minute unless changed with
/// [`RateLimit::window`]). Tokens are estimated before a call (prompt plus `max_tokens`, or
/// 1024 when the request sets none) and
/// corrected with the usage the provider reports afterwards. A single request larger than the
/// token limit is let through when the window is otherwise empty, so it cannot wait forever.
///
/// Within one process the limits are kept in memory. With
/// [`LlmClientBuilder::shared_limits`](super::LlmClientBuilder::shared_limits) they are kept in
/// the job database instead, so every process sharing it is limited together; there each
/// budget is spent no faster than its rate, with at most [`RateLimit::burst`] of it at once.
///
/// ```
/// use llmjobs::llm::RateLimit;
///
/// let limit = RateLimit::new()
///     .requests_per_minute(500)
///     .tokens_per_minute(200_000)
///     .max_concurrency(8);
/// # let _ = limit;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// The most requests started in one window.
    pub requests: Option<u32>,
    /// The most tokens (input plus output) in one window.
    pub tokens: Option<u64>,
    /// The most input (prompt) tokens in one window.
    pub input_tokens: Option<u64>,
    /// The most output (completion) tokens in one window.
    pub output_tokens: Option<u64>,
    /// The window the counts apply to.
    pub window: Duration,
    /// The most calls in flight at once.
    pub max_concurrency: Option<usize>,
    /// Shared limits only: how much of a window's budget may be spent at once, as the time
    /// the budget takes to refill (zero: calls are spaced evenly at the limit's rate).
    pub burst: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            requests: None,
            tokens: None,
            input_tokens: None,
            output_tokens: None,
            window: Duration::from_secs(60),
            max_concurrency: None,
            burst: Duration::ZERO,
        }
    }
}

impl RateLimit {
    /// No limits yet.
    pub fn new() -> Self {
        RateLimit::default()
    }

    /// At most `n` requests per window (a minute by default).
    pub fn requests_per_minute(mut self, n: u32) -> Self {
        self.requests = Some(n);
        self
    }

    /// At most `n` tokens per window (a minute by default).
    pub fn tokens_per_minute(mut self, n: u64) -> Self {
        self.tokens = Some(n);
        self
    }

    /// At most `n` input (prompt) tokens per window (a minute by default), as Anthropic counts
    /// them apart from output tokens.
    pub fn input_tokens_per_minute(mut self, n: u64) -> Self {
        self.input_tokens = Some(n);
        self
    }

    /// At most `n` output (completion) tokens per window (a minute by default).
    pub fn output_tokens_per_minute(mut self, n: u64) -> Self {
        self.output_tokens = Some(n);
        self
    }

    /// Shared limits only: lets up to `burst`'s worth of each budget go at once (default zero:
    /// calls are spaced evenly at the rate). A provider enforcing per-minute limits in shorter
    /// slices (OpenAI checks them per second or so) tolerates a burst shorter than its slice;
    /// the budget a burst spends is earned back before the next one.
    pub fn burst(mut self, burst: Duration) -> Self {
        self.burst = burst.min(self.window);
        self
    }

    /// Whether the limit counts requests or tokens (and not only concurrency).
    pub(crate) fn counts_anything(&self) -> bool {
        self.requests.is_some()
            || self.tokens.is_some()
            || self.input_tokens.is_some()
            || self.output_tokens.is_some()
    }

    /// Changes the window the request and token counts apply to, for providers with
    /// per-second limits, and for tests.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(1));
        self
    }

    /// At most `n` calls in flight at once.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n.max(1));
        self
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is always left consistent, so a panic elsewhere does not poison it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One started request in a window.
#[derive(Debug)]
struct Entry {
    id: u64,
    at: Instant,
    input: u64,
    output: u64,
}

impl Entry {
    fn tokens(&self) -> u64 {
        self.input + self.output
    }
}

/// What one token budget counts of an entry.
type Count = fn(&Entry) -> u64;

/// A call's estimated or reported tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub(crate) input: u64,
    pub(crate) output: u64,
}

/// The sliding window of one model or provider.
#[derive(Debug)]
struct Window {
    limit: RateLimit,
    entries: Mutex<(VecDeque<Entry>, u64)>,
    /// Woken when a call's reported usage frees tokens before its entry expires.
    freed: Notify,
}

impl Window {
    fn new(limit: RateLimit) -> Self {
        Window {
            limit,
            entries: Mutex::new((VecDeque::new(), 0)),
            freed: Notify::new(),
        }
    }

    /// How long until `tokens` more fit, given the entries (already pruned).
    fn wait_for(&self, entries: &VecDeque<Entry>, tokens: Tokens, now: Instant) -> Duration {
        let expiry = |e: &Entry| (e.at + self.limit.window).saturating_duration_since(now);
        let mut wait = Duration::ZERO;
        if let Some(max) = self.limit.requests {
            let max = max as usize;
            if entries.len() >= max {
                wait = wait.max(expiry(&entries[entries.len() - max]));
            }
        }
        let budgets: [(Option<u64>, u64, Count); 3] = [
            (
                self.limit.tokens,
                tokens.input + tokens.output,
                Entry::tokens,
            ),
            (self.limit.input_tokens, tokens.input, |e| e.input),
            (self.limit.output_tokens, tokens.output, |e| e.output),
        ];
        for (max, wanted, count) in budgets {
            let Some(max) = max else { continue };
            let mut used: u64 = entries.iter().map(count).sum();
            for e in entries {
                if used + wanted <= max {
                    break;
                }
                used -= count(e);
                wait = wait.max(expiry(e));
            }
        }
        wait
    }

    fn prune(entries: &mut VecDeque<Entry>, window: Duration, now: Instant) {
        while entries.front().is_some_and(|e| e.at + window <= now) {
            entries.pop_front();
        }
    }

    fn reconcile(&self, id: u64, tokens: Tokens) {
        let freed = {
            let mut guard = lock(&self.entries);
            match guard.0.iter_mut().find(|e| e.id == id) {
                Some(e) => {
                    let freed = tokens.input < e.input || tokens.output < e.output;
                    (e.input, e.output) = (tokens.input, tokens.output);
                    freed
                }
                None => false,
            }
        };
        if freed && self.limit.counts_anything() {
            self.freed.notify_waiters();
        }
    }
}

/// The limits and live state of one client. Shared by all its clones.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    /// `(model pattern, limit)`, first match wins; each matching model gets its own window.
    model_rules: Vec<(String, RateLimit)>,
    /// Provider-wide limits, shared by all the provider's models.
    provider_rules: HashMap<String, RateLimit>,
    windows: Mutex<HashMap<String, Arc<Window>>>,
    semaphores: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Provider name → no request may start before this instant.
    pauses: Mutex<HashMap<String, Instant>>,
}

/// A slot in the limits for one call: holds concurrency permits until dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    _concurrency: Vec<OwnedSemaphorePermit>,
    reservations: Vec<(Arc<Window>, u64)>,
}

impl Permit {
    /// Replaces the call's estimated tokens with what the provider reported.
    pub(crate) fn reconcile(&self, tokens: Tokens) {
        for (window, id) in &self.reservations {
            window.reconcile(*id, tokens);
        }
    }
}

impl Limiter {
    pub(crate) fn add_model_rule(&mut self, pattern: String, limit: RateLimit) {
        self.model_rules.push((pattern, limit));
    }

    pub(crate) fn add_provider_rule(&mut self, provider: String, limit: RateLimit) {
        self.provider_rules.insert(provider, limit);
    }

    fn model_rule(&self, model: &str) -> Option<RateLimit> {
        self.model_rules
            .iter()
            .find(|(pattern, _)| matches_pattern(pattern, model))
            .map(|(_, limit)| *limit)
    }

    /// The limit on all of `provider`'s calls, if one is set.
    pub(crate) fn provider_limit(&self, provider: &str) -> Option<RateLimit> {
        self.provider_rules.get(provider).copied()
    }

    /// The limit on each model matching `model`'s rule, if one is set.
    pub(crate) fn model_limit(&self, model: &str) -> Option<RateLimit> {
        self.model_rule(model)
    }

    /// The scopes that apply to a call, provider first: `(key, limit)`.
    fn scopes(&self, provider: &str, model: &str) -> Vec<(String, RateLimit)> {
        let mut scopes = Vec::with_capacity(2);
        if let Some(limit) = self.provider_rules.get(provider) {
            scopes.push((format!("provider:{provider}"), *limit));
        }
        if let Some(limit) = self.model_rule(model) {
            scopes.push((format!("model:{model}"), limit));
        }
        scopes
    }

    fn window(&self, key: &str, limit: RateLimit) -> Arc<Window> {
        lock(&self.windows)
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Window::new(limit)))
            .clone()
    }

    fn semaphore(&self, key: &str, permits: usize) -> Arc<Semaphore> {
        lock(&self.semaphores)
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(permits)))
            .clone()
    }

    /// Stops every call to `provider` from starting before `until` (a later pause wins).
    pub(crate) fn pause(&self, provider: &str, until: Instant) {
        let mut pauses = lock(&self.pauses);
        let entry = pauses.entry(provider.to_string()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    fn paused_until(&self, provider: &str) -> Option<Instant> {
        lock(&self.pauses)
            .get(provider)
            .copied()
            .filter(|&until| until > Instant::now())
    }

    /// Waits until a call of `tokens` estimated tokens to `model` at `provider` may start, and
    /// reserves its place.
    pub(crate) async fn acquire(&self, provider: &str, model: &str, tokens: Tokens) -> Permit {
        let scopes = self.scopes(provider, model);
        let mut concurrency = Vec::new();
        for (key, limit) in &scopes {
            if let Some(n) = limit.max_concurrency {
                let semaphore = self.semaphore(key, n);
                // The semaphores are never closed.
                if let Ok(permit) = semaphore.acquire_owned().await {
                    concurrency.push(permit);
                }
            }
        }
        let windows: Vec<Arc<Window>> = scopes
            .iter()
            .filter(|(_, l)| l.counts_anything())
            .map(|(key, limit)| self.window(key, *limit))
            .collect();
        loop {
            if let Some(until) = self.paused_until(provider) {
                tracing::debug!(
                    provider,
                    ?until,
                    "provider paused after a rate limit; waiting"
                );
                tokio::time::sleep_until(until).await;
                continue;
            }
            match Self::try_reserve(&windows, tokens) {
                Ok(reservations) => {
                    return Permit {
                        _concurrency: concurrency,
                        reservations,
                    };
                }
                Err(wait) => {
                    tracing::debug!(provider, model, ?wait, "rate limit reached; waiting");
                    // Wake early if a finished call frees tokens. (A wake-up missed between
                    // the check and here only costs waiting until `wait` ends.)
                    let freed = windows.iter().map(|w| Box::pin(w.freed.notified()));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = first_of(freed.collect()) => {}
                    }
                }
            }
        }
    }

    /// Reserves `tokens` in every window at once, or says how long to wait.
    fn try_reserve(
        windows: &[Arc<Window>],
        tokens: Tokens,
    ) -> Result<Vec<(Arc<Window>, u64)>, Duration> {
        let now = Instant::now();
        // Always locked in the same order (provider, then model), so never deadlocks.
        let mut guards: Vec<_> = windows.iter().map(|w| lock(&w.entries)).collect();
        let mut wait = Duration::ZERO;
        for (window, guard) in windows.iter().zip(guards.iter_mut()) {
            Window::prune(&mut guard.0, window.limit.window, now);
            if !guard.0.is_empty() {
                wait = wait.max(window.wait_for(&guard.0, tokens, now));
            }
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        Ok(windows
            .iter()
            .zip(guards.iter_mut())
            .map(|(window, guard)| {
                let (entries, next_id) = &mut **guard;
                *next_id += 1;
                entries.push_back(Entry {
                    id: *next_id,
                    at: now,
                    input: tokens.input,
                    output: tokens.output,
                });
                (window.clone(), *next_id)
            })
            .collect())
    }
}

/// Completes when any of the futures does.
async fn first_of<F: std::future::Future + Unpin>(mut futures: Vec<F>) {
    if futures.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(input: u64) -> Tokens {
        Tokens { input, output: 0 }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_window_are_capped() {
        let mut limiter = Limiter::default();
        let limit = RateLimit::new()
            .requests_per_minute(2)
            .window(Duration::from_secs(1));
        limiter.add_model_rule("m*".into(), limit);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..5 {
            let _permit = limiter.acquire("p", "m1", t(1)).await;
            starts.push(start.elapsed());
        }
        assert_eq!(starts[1], Duration::ZERO);
        assert_eq!(starts[2], Duration::from_secs(1));
        assert_eq!(starts[4], Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_reconciled_with_reported_usage() {
        let mut limiter = Limiter::default();
        limiter.add_provider_rule("p".into(), RateLimit::new().tokens_per_minute(100));
        let start = Instant::now();
        let first = limiter.acquire("p", "a", t(90)).await;
        // Only 10 tokens were really used: the next 80-token call fits at once.
        first.reconcile(t(10));
        let _second = limiter.acquire("p", "b", t(80)).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        let _third = limiter.acquire("p", "b", t(80)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_when_reported_usage_frees_tokens() {
        let mut limiter = Limiter::default();
        limiter.add_provider_rule("p".into(), RateLimit::new().tokens_per_minute(100));
        let limiter = Arc::new(limiter);
        let start = Instant::now();
        let first = limiter.acquire("p", "a", t(90)).await;
        let waiter = tokio::spawn({
            let limiter = limiter.clone();
            async move {
                let _permit = limiter.acquire("p", "b", t(80)).await;
                start.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        first.reconcile(t(10));
        assert_eq!(waiter.await.unwrap(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_request_passes_an_empty_window() {
        let mut limiter = Limiter::default();
        limiter.add_provider_rule("p".into(), RateLimit::new().tokens_per_minute(10));
        let start = Instant::now();
        let _permit = limiter.acquire("p", "m", t(1_000)).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_model_of_the_provider() {
        let limiter = Limiter::default();
        let start = Instant::now();
        limiter.pause("p", start + Duration::from_secs(2));
        let _permit = limiter.acquire("p", "other-model", t(1)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let _permit = limiter.acquire("q", "m", t(1)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn concurrency_is_capped_until_permits_drop() {
        let mut limiter = Limiter::default();
        limiter.add_model_rule("*".into(), RateLimit::new().max_concurrency(1));
        let first = limiter.acquire("p", "m", t(1)).await;
        let second =
            tokio::time::timeout(Duration::from_millis(50), limiter.acquire("p", "m", t(1)));
        assert!(second.await.is_err());
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), limiter.acquire("p", "m", t(1)));
        assert!(third.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn output_tokens_have_a_budget_of_their_own() {
        let mut limiter = Limiter::default();
        limiter.add_model_rule("*".into(), RateLimit::new().output_tokens_per_minute(100));
        let start = Instant::now();
        let big_input = Tokens {
            input: 1_000,
            output: 60,
        };
        let _first = limiter.acquire("p", "m", big_input).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        let _second = limiter.acquire("p", "m", big_input).await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
