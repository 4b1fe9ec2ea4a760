//! The usage ledger: one row per provider call that jobs made, and the sums read from it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::JobId;
use crate::status::to_ms;

/// How a provider call recorded in the usage ledger ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CallOutcome {
    /// The provider answered.
    Ok,
    /// The completion cache answered; nothing was sent and nothing was paid.
    CacheHit,
    /// The call failed (a 429, a 500, a dropped connection, a refused request).
    Error,
}

impl CallOutcome {
    /// The name stored in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::CacheHit => "cache_hit",
            CallOutcome::Error => "error",
        }
    }
}

/// One provider call, as the bridge writes it to the ledger.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LedgerEntry {
    pub(crate) job_id: JobId,
    pub(crate) job_name: String,
    /// The model as requested, with its routing prefix (`openai/gpt-4o-mini`).
    pub(crate) model: String,
    pub(crate) provider: String,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_read_tokens: u64,
    pub(crate) cache_write_tokens: u64,
    pub(crate) cost_usd: Option<f64>,
    pub(crate) latency_ms: u64,
    pub(crate) outcome: CallOutcome,
    /// For an error: its kind (`rate_limited`, `server`, …); `None` otherwise.
    pub(crate) error_kind: Option<String>,
    /// When the call ended, in milliseconds since the epoch.
    pub(crate) at: i64,
}

/// What a usage ledger row is summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UsageKey {
    /// The model as requested (`openai/gpt-4o-mini`).
    Model,
    /// The name of the job that made the call.
    JobName,
    /// The day the call ended, in UTC (`2026-12-01`).
    Day,
}

/// Which provider calls a usage query sums, and by what ([`Jobs::usage`](crate::Jobs::usage),
/// [`Inspector::usage`](crate::Inspector::usage)).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use llmjobs::{UsageFilter, UsageKey};
/// let yesterday = SystemTime::now() - Duration::from_secs(86_400);
/// let filter = UsageFilter::new()
///     .since(yesterday)
///     .by(UsageKey::Model)
///     .by(UsageKey::Day);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct UsageFilter {
    /// Calls that ended at or after this time, in milliseconds since the epoch.
    pub(crate) since: Option<i64>,
    /// Calls that ended before this time, in milliseconds since the epoch.
    pub(crate) until: Option<i64>,
    /// Calls of jobs of this name.
    pub(crate) job_name: Option<String>,
    /// Calls to this model.
    pub(crate) model: Option<String>,
    /// Calls of this job.
    pub(crate) job: Option<JobId>,
    /// Calls through this provider.
    pub(crate) provider: Option<String>,
    /// What the sums are grouped by, in this order; none: one sum of everything.
    pub(crate) group_by: Vec<UsageKey>,
}

impl UsageFilter {
    /// Every call, summed into one group.
    pub fn new() -> Self {
        UsageFilter::default()
    }

    /// Only calls that ended at or after `time`.
    pub fn since(mut self, time: SystemTime) -> Self {
        self.since = Some(to_ms(time));
        self
    }

    /// Only calls that ended before `time`.
    pub fn until(mut self, time: SystemTime) -> Self {
        self.until = Some(to_ms(time));
        self
    }

    /// Only calls of jobs named `name`.
    pub fn job_name(mut self, name: impl Into<String>) -> Self {
        self.job_name = Some(name.into());
        self
    }

    /// Only calls to `model` (as requested, with its routing prefix).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Only calls through the provider named `provider` (`openai`, `anthropic`, or the name
    /// of a provider you configured).
    pub fn provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = Some(provider.into());
        self
    }

    /// Only calls of the job `id`.
    pub fn job(mut self, id: JobId) -> Self {
        self.job = Some(id);
        self
    }

    /// Sums separately for each value of `key` (added to the keys already given).
    pub fn by(mut self, key: UsageKey) -> Self {
        if !self.group_by.contains(&key) {
            self.group_by.push(key);
        }
        self
    }

    pub(crate) fn groups_by(&self, key: UsageKey) -> bool {
        self.group_by.contains(&key)
    }
}

/// The sum of the provider calls that share a model, job name and day (those the query
/// grouped by; the others are `None`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UsageGroup {
    /// The model, when grouped by [`UsageKey::Model`].
    pub model: Option<String>,
    /// The job name, when grouped by [`UsageKey::JobName`].
    pub job_name: Option<String>,
    /// The day in UTC (`YYYY-MM-DD`), when grouped by [`UsageKey::Day`].
    pub day: Option<String>,
    /// Provider calls, failed ones and cache hits included.
    pub calls: u64,
    /// Distinct jobs that made them.
    pub jobs: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Calls answered by the completion cache.
    pub cache_hits: u64,
    /// Prompt tokens (cached ones included).
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache.
    pub cache_write_tokens: u64,
    /// The cost in US dollars of the calls with a known price.
    pub cost_usd: f64,
    /// Calls with no known price (not in `cost_usd`).
    pub unpriced_calls: u64,
    /// The calls' time, summed, in milliseconds.
    pub latency_ms: u64,
}

impl UsageGroup {
    /// The cost, when at least one call had a known price.
    pub fn known_cost(&self) -> Option<f64> {
        (self.unpriced_calls < self.calls || self.calls == 0).then_some(self.cost_usd)
    }
}

/// A limit on LLM spending: dollars, tokens (input plus output), or both.
///
/// A job's budget comes from `#[llm_job(budget_usd = 0.5)]` (or `budget_tokens`), or from
/// [`JobCall::budget`](crate::JobCall::budget) for one call; a provider key's from
/// [`JobsBuilder::budget_per_key`](crate::JobsBuilder::budget_per_key).
///
/// Before each provider call, the spend so far (from the usage ledger: every call of every
/// attempt, failed and retried ones included, since they were paid; plus what the calls in
/// flight reserved) plus the most the call could cost must fit: its prompt at the input price (the client's estimate of its tokens,
/// [`ChatRequest::estimated_input_tokens`](crate::llm::ChatRequest::estimated_input_tokens), at the higher of the input and cache-write
/// prices) plus `max_tokens` (or [`DEFAULT_OUTPUT_ESTIMATE`](crate::llm::DEFAULT_OUTPUT_ESTIMATE)) at the output price. A call that
/// does not fit is not sent: the call fails with [`LlmError::BudgetExceeded`](crate::llm::LlmError::BudgetExceeded), naming the
/// budget and the spend, and its job fails permanently. A dollar budget cannot be kept for a
/// model with no price ([`LlmClientBuilder::price`](crate::llm::LlmClientBuilder::price)):
/// such a call is refused too.
///
/// The check and the reservation of the call's most possible cost are one transaction that
/// takes turns with every other reservation of the same budget, in any process on the
/// database, so calls that start together never overshoot a budget; the call's ledger row
/// replaces its reservation when it ends. Reservations are leases
/// ([`JobsBuilder::budget_lease`](crate::JobsBuilder::budget_lease)): a dead process's room
/// comes back. A provider batch ([`llm_batch`](crate::llm::llm_batch)) reserves the most its
/// requests could cost at the batch price before it is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Budget {
    /// The most to spend, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_usd: Option<f64>,
    /// The most tokens (input plus output) to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

impl Budget {
    /// At most `usd` US dollars.
    pub const fn usd(usd: f64) -> Self {
        Budget {
            max_usd: Some(usd),
            max_tokens: None,
        }
    }

    /// At most `tokens` tokens, input plus output.
    pub const fn tokens(tokens: u64) -> Self {
        Budget {
            max_usd: None,
            max_tokens: Some(tokens),
        }
    }

    /// This budget, and also at most `tokens` tokens.
    pub const fn and_tokens(mut self, tokens: u64) -> Self {
        self.max_tokens = Some(tokens);
        self
    }

    /// This budget, and also at most `usd` US dollars.
    pub const fn and_usd(mut self, usd: f64) -> Self {
        self.max_usd = Some(usd);
        self
    }
}

// Budgets are compared as configuration values (in `JobConfig`); a NaN limit equals nothing,
// which only ever makes two configurations differ.
impl Eq for Budget {}
