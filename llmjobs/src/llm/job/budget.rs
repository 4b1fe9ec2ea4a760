//! Budgets: what a job, or a provider key over a window, may spend on LLM calls. Each call is
//! checked before it is sent, against what the usage ledger says was spent so far plus the
//! most the call could cost.

use std::time::Duration;

use crate::llm::{ChatRequest, LlmClient, LlmError};
use crate::status::now_ms;
use crate::usage::UsageFilter;
use crate::{Budget, JobContext};

/// The answer tokens a budget assumes a call uses when its request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 4096;

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
}

/// What a call could cost at most.
struct Estimate {
    usd: Option<f64>,
    tokens: u64,
}

/// Checks `request` against the job's budget and the budgets of its provider, before it is
/// sent.
pub(super) async fn check(
    ctx: &JobContext,
    client: &LlmClient,
    request: &ChatRequest,
) -> Result<(), LlmError> {
    let job_budget = ctx
        .llm_budget()
        .await
        .map_err(|e| LlmError::Config(format!("the job's budget cannot be read: {e}")))?;
    let provider = client.provider_for(&request.model).ok();
    let key_budgets: Vec<&KeyBudget> = ctx
        .llm_policy()
        .key_budgets
        .iter()
        .filter(|k| Some(k.provider.as_str()) == provider.as_deref())
        .collect();
    if job_budget.is_none() && key_budgets.is_empty() {
        return Ok(());
    }
    let input = request.estimated_input_tokens();
    let output = request
        .max_tokens
        .map_or(DEFAULT_OUTPUT_ESTIMATE, u64::from);
    let estimate = Estimate {
        usd: client
            .price_of(&request.model)
            .map(|p| p.ceiling(input, output)),
        tokens: input + output,
    };
    if let Some(budget) = job_budget {
        let filter = UsageFilter::new().job(ctx.id());
        let what = format!("the job's budget of {}", describe(&budget));
        fits(ctx, request, &budget, filter, what, &estimate).await?;
    }
    for key in key_budgets {
        let window = i64::try_from(key.window.as_millis()).unwrap_or(i64::MAX);
        let mut filter = UsageFilter::new().provider(key.provider.clone());
        filter.since = Some(now_ms().saturating_sub(window));
        let what = format!(
            "the budget of provider `{}` ({} per {:?})",
            key.provider,
            describe(&key.budget),
            key.window
        );
        fits(ctx, request, &key.budget, filter, what, &estimate).await?;
    }
    Ok(())
}

/// Whether the calls `filter` selects plus `estimate` fit in `budget`.
async fn fits(
    ctx: &JobContext,
    request: &ChatRequest,
    budget: &Budget,
    filter: UsageFilter,
    what: String,
    estimate: &Estimate,
) -> Result<(), LlmError> {
    let spent = ctx
        .store()
        .usage(filter)
        .await
        .map_err(|e| LlmError::Config(format!("{what} cannot be checked: {e}")))?;
    let spent_usd: f64 = spent.iter().map(|g| g.cost_usd).sum();
    let spent_tokens: u64 = spent.iter().map(|g| g.input_tokens + g.output_tokens).sum();
    let over_usd = match (budget.max_usd, estimate.usd) {
        (None, _) => false,
        (Some(_), None) => {
            return Err(LlmError::Config(format!(
                "model `{}` has no price, so {what} cannot be kept; set one with \
                 LlmClientBuilder::price",
                request.model
            )));
        }
        (Some(max), Some(call)) => spent_usd + call > max,
    };
    let over_tokens = budget
        .max_tokens
        .is_some_and(|max| spent_tokens + estimate.tokens > max);
    if over_usd || over_tokens {
        return Err(LlmError::BudgetExceeded {
            model: request.model.clone(),
            budget: what,
            spent: format!("${spent_usd:.4}, {spent_tokens} tokens"),
            call: match estimate.usd {
                Some(usd) => format!("${usd:.4}, {} tokens", estimate.tokens),
                None => format!("{} tokens", estimate.tokens),
            },
        });
    }
    Ok(())
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
