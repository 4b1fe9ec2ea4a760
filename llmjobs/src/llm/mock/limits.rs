//! Rate limits the mock enforces per model, the way providers do: budgets of requests and
//! tokens that refill continuously, spendable at most a burst at a time; past them, a 429 with
//! `Retry-After` and the providers' reset headers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::MockReply;
use super::reply::Prompt;

/// A provider-style rate limit on one model of the [`MockLlmServer`](super::MockLlmServer).
///
/// Each budget refills at its rate continuously and holds at most [`MockRateLimit::burst`]'s
/// worth (OpenAI enforces its per-minute limits in slices of about a second, so the default
/// burst is a second). A request's tokens are its prompt's plus its answer's, as the answer's
/// usage reports them. A request that does not fit is answered 429 with `Retry-After` (whole
/// seconds), `retry-after-ms`, OpenAI's `x-ratelimit-*` and Anthropic's
/// `anthropic-ratelimit-*` headers, and costs nothing.
///
/// ```
/// use llmjobs::llm::mock::MockRateLimit;
///
/// let limit = MockRateLimit::per_minute(6_000, 600_000);
/// # let _ = limit;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct MockRateLimit {
    /// Requests per window.
    pub requests: Option<u64>,
    /// Tokens (input plus output) per window.
    pub tokens: Option<u64>,
    /// The window the counts are per (a minute).
    pub window: Duration,
    /// How much of the budget may be spent at once, as the time it takes to refill.
    pub burst: Duration,
}

impl MockRateLimit {
    /// `requests` requests and `tokens` tokens a minute, with a one-second burst.
    pub fn per_minute(requests: u64, tokens: u64) -> Self {
        MockRateLimit {
            requests: Some(requests),
            tokens: Some(tokens),
            window: Duration::from_secs(60),
            burst: Duration::from_secs(1),
        }
    }

    /// Only a request budget: `requests` a minute.
    pub fn requests_per_minute(requests: u64) -> Self {
        MockRateLimit {
            tokens: None,
            ..MockRateLimit::per_minute(requests, 0)
        }
    }

    /// Changes the window the counts are per (for tests: per second).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(1));
        self
    }

    /// Changes the burst (at most the window).
    pub fn burst(mut self, burst: Duration) -> Self {
        self.burst = burst.min(self.window);
        self
    }
}

/// One budget of one model: a bucket refilled at `rate` units a second up to `capacity`.
#[derive(Debug)]
struct Budget {
    limit: u64,
    capacity: f64,
    rate: f64,
    level: f64,
}

impl Budget {
    fn new(limit: Option<u64>, l: &MockRateLimit) -> Option<Budget> {
        let limit = limit?;
        let rate = limit as f64 / l.window.as_secs_f64();
        let capacity = (rate * l.burst.as_secs_f64()).max(1.0);
        Some(Budget {
            limit,
            capacity,
            rate,
            level: capacity,
        })
    }

    fn refill(&mut self, elapsed: f64) {
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
    }

    /// How long until `cost` fits (a cost above the capacity fits a full bucket).
    fn wait_for(&self, cost: f64) -> f64 {
        let needed = cost.min(self.capacity);
        ((needed - self.level) / self.rate).max(0.0)
    }
}

/// The budgets of one model.
#[derive(Debug)]
struct ModelBudgets {
    requests: Option<Budget>,
    tokens: Option<Budget>,
    at: Instant,
}

/// Every model's budgets, and how many requests were refused.
#[derive(Debug, Default)]
pub(super) struct Limits {
    models: HashMap<String, ModelBudgets>,
    pub(super) refused: u64,
}

impl Limits {
    pub(super) fn set(&mut self, model: String, limit: MockRateLimit) {
        self.models.insert(
            model,
            ModelBudgets {
                requests: Budget::new(limit.requests, &limit),
                tokens: Budget::new(limit.tokens, &limit),
                at: Instant::now(),
            },
        );
    }

    /// Spends the request's budget, or returns the 429 that refuses it.
    pub(super) fn admit(&mut self, prompt: &Prompt, reply: &MockReply) -> Option<MockReply> {
        let budgets = self.models.get_mut(&prompt.model)?;
        let now = Instant::now();
        let elapsed = now.duration_since(budgets.at).as_secs_f64();
        budgets.at = now;
        let tokens = tokens_of(prompt, reply) as f64;
        let mut wait: f64 = 0.0;
        for (budget, cost) in [(&mut budgets.requests, 1.0), (&mut budgets.tokens, tokens)] {
            if let Some(b) = budget {
                b.refill(elapsed);
                wait = wait.max(b.wait_for(cost));
            }
        }
        if wait <= 0.0 {
            for (budget, cost) in [(&mut budgets.requests, 1.0), (&mut budgets.tokens, tokens)] {
                if let Some(b) = budget {
                    b.level -= cost.min(b.capacity);
                }
            }
            return None;
        }
        self.refused += 1;
        Some(refusal(budgets, wait))
    }
}

/// The tokens a request costs: its prompt's plus its answer's.
fn tokens_of(prompt: &Prompt, reply: &MockReply) -> u64 {
    let output = |text: &str| (text.len() as u64).div_ceil(4).max(1);
    let answer = match reply {
        MockReply::Default => output(&prompt.default_answer()),
        MockReply::Text(text) | MockReply::LengthLimited(text) => output(text),
        MockReply::Delayed(_, inner) => return tokens_of(prompt, inner),
        _ => 0,
    };
    prompt.input_tokens() + answer
}

fn refusal(budgets: &ModelBudgets, wait: f64) -> MockReply {
    let wait_ms = (wait * 1000.0).ceil() as u64;
    let reset_at = chrono::Utc::now() + chrono::Duration::milliseconds(wait_ms as i64);
    let reset_at = reset_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut headers = vec![
        (
            "retry-after".to_string(),
            wait_ms.div_ceil(1000).to_string(),
        ),
        ("retry-after-ms".to_string(), wait_ms.to_string()),
    ];
    for (name, budget) in [("requests", &budgets.requests), ("tokens", &budgets.tokens)] {
        let Some(b) = budget else { continue };
        let remaining = b.level.max(0.0).floor() as u64;
        let reset_ms = ((b.capacity - b.level) / b.rate * 1000.0).ceil().max(0.0) as u64;
        headers.extend([
            (format!("x-ratelimit-limit-{name}"), b.limit.to_string()),
            (
                format!("x-ratelimit-remaining-{name}"),
                remaining.to_string(),
            ),
            (format!("x-ratelimit-reset-{name}"), format!("{reset_ms}ms")),
            (
                format!("anthropic-ratelimit-{name}-limit"),
                b.limit.to_string(),
            ),
            (
                format!("anthropic-ratelimit-{name}-remaining"),
                remaining.to_string(),
            ),
            (
                format!("anthropic-ratelimit-{name}-reset"),
                reset_at.clone(),
            ),
        ]);
    }
    MockReply::Status {
        status: 429,
        message: "Rate limit reached (mock)".into(),
        headers,
    }
}
