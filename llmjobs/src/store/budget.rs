//! Budget reservations, common to both backends.
//!
//! Before a call is sent, one transaction reads the spend of every budget the call counts
//! against (the usage ledger's rows plus the unexpired reservations of calls in flight) and, if
//! the call's most possible cost fits in each, inserts a reservation for it. The backends make
//! these transactions take turns per budget (SQLite: its write lock; PostgreSQL: an advisory
//! lock per budget), so calls that start at once can never each pass against the same spend.
//! Once the call is over, one transaction replaces its reservation with its ledger rows. A
//! reservation is a lease: its call renews it while it runs, and a dead process's reservations
//! expire.

use crate::{Budget, JobId};

/// Whose spend a budget limits.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(not(feature = "llm"), allow(dead_code))] // made by the LLM bridge
pub(crate) enum Spender {
    /// Every call of one job.
    Job(JobId),
    /// Every call through one provider since `since` (ms since the epoch); reservations count
    /// whenever they were made.
    Provider { name: String, since: i64 },
}

/// A call's claim on the budgets it counts against.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BudgetClaim {
    pub(crate) job_id: JobId,
    pub(crate) provider: String,
    /// The most the call could cost (zero when no budget counts dollars).
    pub(crate) cost_usd: f64,
    /// The most tokens (input plus output) it could use.
    pub(crate) tokens: u64,
    pub(crate) lease_ms: i64,
    pub(crate) budgets: Vec<(Spender, Budget)>,
}

/// What a budget's calls spent: the ledger's rows, and the reservations of calls in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Spent {
    pub(crate) cost_usd: f64,
    pub(crate) tokens: u64,
    pub(crate) held_usd: f64,
    pub(crate) held_tokens: u64,
}

/// The store's answer to a [`BudgetClaim`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BudgetDecision {
    /// Reserved, under this id.
    Reserved(String),
    /// The claim does not fit in `claim.budgets[budget]`, which had spent `spent`.
    Exceeded { budget: usize, spent: Spent },
}

impl Spent {
    /// Whether `claim` fits in `budget` on top of this spend.
    fn fits(&self, budget: &Budget, claim: &BudgetClaim) -> bool {
        let usd = self.cost_usd + self.held_usd + claim.cost_usd;
        let tokens = self.tokens + self.held_tokens + claim.tokens;
        budget.max_usd.is_none_or(|max| usd <= max)
            && budget.max_tokens.is_none_or(|max| tokens <= max)
    }
}

/// Decides `claim` given the spend of each of its budgets (in `claim.budgets` order, read
/// inside the reservation's transaction); a new reservation's id when it fits.
pub(crate) fn decide(claim: &BudgetClaim, spent: &[Spent]) -> BudgetDecision {
    let over = claim
        .budgets
        .iter()
        .zip(spent)
        .position(|((_, budget), spent)| !spent.fits(budget, claim));
    match over {
        Some(budget) => BudgetDecision::Exceeded {
            budget,
            spent: spent[budget],
        },
        None => BudgetDecision::Reserved(uuid::Uuid::new_v4().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(budgets: Vec<Budget>) -> BudgetClaim {
        BudgetClaim {
            job_id: JobId::new(),
            provider: "openai".into(),
            cost_usd: 0.1,
            tokens: 100,
            lease_ms: 1_000,
            budgets: budgets
                .into_iter()
                .map(|b| (Spender::Job(JobId::new()), b))
                .collect(),
        }
    }

    #[test]
    fn reservations_in_flight_count_as_spend() {
        let c = claim(vec![Budget::usd(0.35)]);
        let spent = Spent {
            cost_usd: 0.1,
            held_usd: 0.2,
            ..Spent::default()
        };
        assert!(matches!(
            decide(&c, &[spent]),
            BudgetDecision::Exceeded { budget: 0, .. }
        ));
        let spent = Spent {
            held_usd: 0.2,
            ..Spent::default()
        };
        assert!(matches!(decide(&c, &[spent]), BudgetDecision::Reserved(_)));
    }

    #[test]
    fn the_first_budget_that_does_not_fit_is_named() {
        let c = claim(vec![Budget::usd(1.0), Budget::tokens(150)]);
        let spent = Spent {
            tokens: 60,
            ..Spent::default()
        };
        assert_eq!(
            decide(&c, &[Spent::default(), spent]),
            BudgetDecision::Exceeded { budget: 1, spent }
        );
    }
}
