//! Budgets: what a job, or a provider key over a window, may spend on LLM calls. Before a call
//! is sent, the most it could cost is reserved against every budget it counts against, in one
//! transaction with the spend so far (the store's `budget` module); once it is over, its
//! usage-ledger rows replace the reservation.

use std::time::Duration;

use crate::llm::{ChatRequest, LlmError, Price};
use crate::status::now_ms;
use crate::store::LedgerEntry;
use crate::store::budget::{BudgetClaim, BudgetDecision, Spender, Spent};
use crate::{Budget, JobContext};

/// The answer tokens a budget assumes a call uses when its request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 4096;

/// How long a reservation holds unless renewed, by default.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A budget for every call through one provider (one API key), over a sliding window, kept
/// across every process on the database ([`JobsBuilder::budget_per_key`](crate::JobsBuilder::budget_per_key)).
///
/// The provider is the one that answers the call: the name of its
/// [`ProviderConfig`](crate::llm::ProviderConfig), which is the model's routing prefix for the
/// built-in providers (`openai` for `openai/gpt-4o-mini`). Spend is what the usage ledger holds
/// for that provider in the last `window`.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyBudget {
    provider: String,
    budget: Budget,
    window: Duration,
}

impl KeyBudget {
    /// At most `budget` through `provider` in any `window`.
    pub fn new(provider: impl Into<String>, budget: Budget, window: Duration) -> Self {
        KeyBudget {
            provider: provider.into(),
            budget,
            window,
        }
    }
}

/// The runtime's cache and budget settings for the LLM calls of jobs.
#[derive(Debug, Clone, Default)]
pub(crate) struct LlmPolicy {
    pub(crate) cache: Option<super::CompletionCache>,
    pub(crate) key_budgets: Vec<KeyBudget>,
    pub(crate) budget_lease: Option<Duration>,
}

/// What a call (or a whole batch) could cost at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Estimate {
    /// `None` when a model has no price.
    pub(super) usd: Option<f64>,
    pub(super) tokens: u64,
}

impl Estimate {
    /// Nothing yet.
    pub(super) const ZERO: Estimate = Estimate {
        usd: Some(0.0),
        tokens: 0,
    };

    /// The most `request` could cost at `price`: its prompt (as the client estimates its
    /// tokens) plus `max_tokens`, or [`DEFAULT_OUTPUT_ESTIMATE`], of answer.
    pub(super) fn of(request: &ChatRequest, price: Option<Price>) -> Estimate {
        let input = request.estimated_input_tokens();
        let output = request
            .max_tokens
            .map_or(DEFAULT_OUTPUT_ESTIMATE, u64::from);
        Estimate {
            usd: price.map(|p| p.ceiling(input, output)),
            tokens: input + output,
        }
    }

    /// Both estimates together.
    pub(super) fn plus(self, other: Estimate) -> Estimate {
        Estimate {
            usd: self.usd.zip(other.usd).map(|(a, b)| a + b),
            tokens: self.tokens + other.tokens,
        }
    }
}

/// A reservation a call holds against its budgets until its ledger rows replace it. One
/// dropped unsettled (the call's job was cancelled mid-call, which may still be billed) keeps
/// its room until its lease runs out.
pub(super) struct Hold {
    ctx: JobContext,
    id: String,
    lease: Duration,
}

/// Reserves `estimate` for a call to `model` through `provider` against the job's budget and
/// the budgets of that provider, before it is sent; `None` when no budget applies. A call that
/// does not fit fails with [`LlmError::BudgetExceeded`].
pub(super) async fn reserve(
    ctx: &JobContext,
    model: &str,
    provider: Option<&str>,
    estimate: impl FnOnce() -> Estimate,
) -> Result<Option<Hold>, LlmError> {
    let job_budget = ctx
        .llm_budget()
        .await
        .map_err(|e| LlmError::Config(format!("the job's budget cannot be read: {e}")))?;
    let policy = ctx.llm_policy();
    let mut budgets: Vec<(Spender, Budget, String)> = Vec::new();
    if let Some(budget) = job_budget {
        let what = format!("the job's budget of {}", describe(&budget));
        budgets.push((Spender::Job(ctx.id()), budget, what));
    }
    let now = now_ms();
    for key in &policy.key_budgets {
        if Some(key.provider.as_str()) != provider {
            continue;
        }
        let spender = Spender::Provider {
            name: key.provider.clone(),
            since: now.saturating_sub(ms(key.window)),
        };
        let what = format!(
            "the budget of provider `{}` ({} per {:?})",
            key.provider,
            describe(&key.budget),
            key.window
        );
        budgets.push((spender, key.budget, what));
    }
    if budgets.is_empty() {
        return Ok(None);
    }
    let estimate = estimate();
    if estimate.usd.is_none()
        && let Some((_, _, what)) = budgets.iter().find(|(_, b, _)| b.max_usd.is_some())
    {
        return Err(LlmError::Config(format!(
            "model `{model}` has no price, so {what} cannot be kept; set one with \
             LlmClientBuilder::price"
        )));
    }
    let lease = policy.budget_lease.unwrap_or(DEFAULT_LEASE);
    let claim = BudgetClaim {
        job_id: ctx.id(),
        provider: provider.unwrap_or_default().to_string(),
        cost_usd: estimate.usd.unwrap_or(0.0),
        tokens: estimate.tokens,
        lease_ms: ms(lease),
        budgets: budgets.iter().map(|(s, b, _)| (s.clone(), *b)).collect(),
    };
    let decision = ctx
        .store()
        .reserve_budget(claim)
        .await
        .map_err(|e| LlmError::Config(format!("{} cannot be checked: {e}", budgets[0].2)))?;
    match decision {
        BudgetDecision::Reserved(id) => Ok(Some(Hold {
            ctx: ctx.clone(),
            id,
            lease,
        })),
        BudgetDecision::Exceeded { budget, spent } => Err(LlmError::BudgetExceeded {
            model: model.to_string(),
            budget: budgets.swap_remove(budget).2,
            spent: describe_spent(&spent),
            call: match estimate.usd {
                Some(usd) => format!("${usd:.4}, {} tokens", estimate.tokens),
                None => format!("{} tokens", estimate.tokens),
            },
        }),
    }
}

impl Hold {
    /// Runs `call` while renewing the reservation, so a long call keeps its room.
    pub(super) async fn keep<T>(&self, call: impl Future<Output = T>) -> T {
        let renew = async {
            loop {
                tokio::time::sleep(self.lease / 3).await;
                let renewed = self
                    .ctx
                    .store()
                    .renew_budget(self.id.clone(), ms(self.lease))
                    .await;
                if let Err(error) = renewed {
                    tracing::warn!(%error, "could not renew an LLM budget reservation");
                }
            }
        };
        tokio::select! {
            out = call => out,
            never = renew => never,
        }
    }

    /// Replaces the reservation with `entries`, the ledger rows of what was really spent
    /// (none: nothing was sent). A ledger that cannot be written is logged, never the call's
    /// failure; the reservation then runs out with its lease.
    pub(super) async fn settle(self, entries: Vec<LedgerEntry>) {
        let settled = self.ctx.store().settle_budget(self.id, entries).await;
        if let Err(error) = settled {
            tracing::warn!(job = %self.ctx.id(), %error, "could not write LLM calls to the usage ledger");
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What a budget's calls spent, as errors name it (`$0.1800, 190 tokens`), with what calls in
/// flight hold.
fn describe_spent(spent: &Spent) -> String {
    let total = format!(
        "${:.4}, {} tokens",
        spent.cost_usd + spent.held_usd,
        spent.tokens + spent.held_tokens
    );
    if spent.held_usd == 0.0 && spent.held_tokens == 0 {
        return total;
    }
    format!(
        "{total} (of which ${:.4}, {} tokens reserved by calls in flight)",
        spent.held_usd, spent.held_tokens
    )
}

/// A budget's limits, as errors name them (`$0.5000 and 20000 tokens`).
fn describe(budget: &Budget) -> String {
    match (budget.max_usd, budget.max_tokens) {
        (Some(usd), Some(tokens)) => format!("${usd:.4} and {tokens} tokens"),
        (Some(usd), None) => format!("${usd:.4}"),
        (None, Some(tokens)) => format!("{tokens} tokens"),
        (None, None) => "no limit".into(),
    }
}
