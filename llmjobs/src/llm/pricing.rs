//! Per-model prices, to put a cost on every call.

use serde::{Deserialize, Serialize};

use super::Usage;
use super::router::matches_pattern;

/// What a provider batch costs, as a fraction of the list price: OpenAI's Batch API and
/// Anthropic's Message Batches both charge half.
pub const BATCH_PRICE_FACTOR: f64 = 0.5;

/// What a model costs, in US dollars per million tokens.
///
/// The client ships no prices (they change too often to hard-code); set the ones you use with
/// [`super::LlmClientBuilder::price`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Price {
    /// Dollars per million prompt tokens.
    pub input_per_million: f64,
    /// Dollars per million answer tokens.
    pub output_per_million: f64,
}

impl Price {
    /// A price in dollars per million prompt and answer tokens.
    pub fn per_million_tokens(input: f64, output: f64) -> Self {
        Price {
            input_per_million: input,
            output_per_million: output,
        }
    }

    /// The price of the same model in a provider batch: [`BATCH_PRICE_FACTOR`] of this one.
    pub fn batch(&self) -> Price {
        Price {
            input_per_million: self.input_per_million * BATCH_PRICE_FACTOR,
            output_per_million: self.output_per_million * BATCH_PRICE_FACTOR,
        }
    }

    /// The cost of `usage` in dollars.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.input_tokens as f64 * self.input_per_million
            + usage.output_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }
}

/// Prices by model pattern; the first matching pattern wins.
#[derive(Clone, Debug, Default)]
pub(crate) struct PriceTable(Vec<(String, Price)>);

impl PriceTable {
    pub(crate) fn set(&mut self, pattern: String, price: Price) {
        self.0.retain(|(p, _)| *p != pattern);
        self.0.push((pattern, price));
    }

    /// The price of `model` (the requested name, with its routing prefix).
    pub(crate) fn get(&self, model: &str) -> Option<Price> {
        self.0
            .iter()
            .find(|(pattern, _)| matches_pattern(pattern, model))
            .map(|(_, price)| *price)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_per_million_tokens() {
        let price = Price::per_million_tokens(0.15, 0.60);
        let cost = price.cost(&Usage::new(1_000_000, 500_000));
        assert!((cost - 0.45).abs() < 1e-9);
    }

    #[test]
    fn batches_cost_half_the_list_price() {
        let price = Price::per_million_tokens(0.15, 0.60).batch();
        let cost = price.cost(&Usage::new(1_000_000, 500_000));
        assert!((cost - 0.225).abs() < 1e-9);
    }

    #[test]
    fn first_matching_pattern_wins() {
        let mut table = PriceTable::default();
        table.set(
            "openai/gpt-4o-mini".into(),
            Price::per_million_tokens(1.0, 1.0),
        );
        table.set("openai/*".into(), Price::per_million_tokens(2.0, 2.0));
        assert_eq!(
            table.get("openai/gpt-4o-mini").unwrap().input_per_million,
            1.0
        );
        assert_eq!(table.get("openai/gpt-4o").unwrap().input_per_million, 2.0);
        assert!(table.get("anthropic/x").is_none());
    }
}
