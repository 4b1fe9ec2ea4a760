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
/// [`super::LlmClientBuilder::price`]. Prompt tokens read from or written to the provider's
/// prompt cache ([`Usage::cache_read_tokens`], [`Usage::cache_write_tokens`]) cost the input
/// price unless a cache price is set: [`Price::anthropic`] and [`Price::openai`] set the
/// providers' own, [`Price::with_cache_prices`] any others.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Price {
    /// Dollars per million prompt tokens.
    pub input_per_million: f64,
    /// Dollars per million answer tokens.
    pub output_per_million: f64,
    /// Dollars per million prompt tokens read from the prompt cache; the input price if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_million: Option<f64>,
    /// Dollars per million prompt tokens written to the prompt cache; the input price if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_million: Option<f64>,
}

/// What Anthropic charges for a prompt-cache read, as a fraction of the input price.
pub const ANTHROPIC_CACHE_READ_FACTOR: f64 = 0.1;
/// What Anthropic charges for a prompt-cache write (the default five-minute cache), as a
/// fraction of the input price.
pub const ANTHROPIC_CACHE_WRITE_FACTOR: f64 = 1.25;
/// What OpenAI charges for cached prompt tokens, as a fraction of the input price (the GPT-4o
/// family's discount; newer families discount more: set theirs with
/// [`Price::with_cache_prices`]). OpenAI charges nothing extra for writing the cache.
pub const OPENAI_CACHE_READ_FACTOR: f64 = 0.5;

impl Price {
    /// A price in dollars per million prompt and answer tokens; cached prompt tokens cost the
    /// input price.
    pub fn per_million_tokens(input: f64, output: f64) -> Self {
        Price {
            input_per_million: input,
            output_per_million: output,
            cache_read_per_million: None,
            cache_write_per_million: None,
        }
    }

    /// An Anthropic model's price: cache reads cost [`ANTHROPIC_CACHE_READ_FACTOR`] of the
    /// input price and cache writes [`ANTHROPIC_CACHE_WRITE_FACTOR`] of it.
    pub fn anthropic(input: f64, output: f64) -> Self {
        Price::per_million_tokens(input, output).with_cache_prices(
            input * ANTHROPIC_CACHE_READ_FACTOR,
            input * ANTHROPIC_CACHE_WRITE_FACTOR,
        )
    }

    /// An OpenAI model's price: cached prompt tokens cost [`OPENAI_CACHE_READ_FACTOR`] of the
    /// input price; writing the cache costs nothing extra.
    pub fn openai(input: f64, output: f64) -> Self {
        Price::per_million_tokens(input, output)
            .with_cache_prices(input * OPENAI_CACHE_READ_FACTOR, input)
    }

    /// The same price with prompt-cache reads and writes at these dollars per million tokens.
    pub fn with_cache_prices(mut self, read: f64, write: f64) -> Self {
        self.cache_read_per_million = Some(read);
        self.cache_write_per_million = Some(write);
        self
    }

    /// The price of the same model in a provider batch: [`BATCH_PRICE_FACTOR`] of this one.
    pub fn batch(&self) -> Price {
        let half = |p: f64| p * BATCH_PRICE_FACTOR;
        Price {
            input_per_million: half(self.input_per_million),
            output_per_million: half(self.output_per_million),
            cache_read_per_million: self.cache_read_per_million.map(half),
            cache_write_per_million: self.cache_write_per_million.map(half),
        }
    }

    /// The cost of `usage` in dollars.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cache_read_tokens + usage.cache_write_tokens;
        let uncached = usage.input_tokens.saturating_sub(cached);
        let read = self
            .cache_read_per_million
            .unwrap_or(self.input_per_million);
        let write = self
            .cache_write_per_million
            .unwrap_or(self.input_per_million);
        (uncached as f64 * self.input_per_million
            + usage.cache_read_tokens as f64 * read
            + usage.cache_write_tokens as f64 * write
            + usage.output_tokens as f64 * self.output_per_million)
            / 1_000_000.0
    }

    /// The most a call can cost: `input_tokens` prompt tokens at the input price (none of them
    /// cached) and `max_output_tokens` answer tokens; what a budget checks before a call.
    pub fn ceiling(&self, input_tokens: u64, max_output_tokens: u64) -> f64 {
        let write = self
            .cache_write_per_million
            .unwrap_or(self.input_per_million)
            .max(self.input_per_million);
        (input_tokens as f64 * write + max_output_tokens as f64 * self.output_per_million)
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
    fn anthropic_cache_reads_cost_a_tenth_and_writes_a_quarter_more() {
        // 1M prompt tokens: 200k plain, 500k read from the cache, 300k written to it.
        let usage = Usage::new(1_000_000, 0).with_cache(500_000, 300_000);
        let cost = Price::anthropic(3.0, 15.0).cost(&usage);
        let expected = 0.2 * 3.0 + 0.5 * 0.3 + 0.3 * 3.75;
        assert!((cost - expected).abs() < 1e-9, "{cost} != {expected}");
    }

    #[test]
    fn openai_cached_tokens_cost_half() {
        let usage = Usage::new(1_000_000, 1_000_000).with_cache(400_000, 0);
        let cost = Price::openai(2.5, 10.0).cost(&usage);
        let expected = 0.6 * 2.5 + 0.4 * 1.25 + 10.0;
        assert!((cost - expected).abs() < 1e-9, "{cost} != {expected}");
    }

    #[test]
    fn without_cache_prices_cached_tokens_cost_the_input_price() {
        let usage = Usage::new(1_000_000, 0).with_cache(500_000, 0);
        assert_eq!(Price::per_million_tokens(2.0, 8.0).cost(&usage), 2.0);
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
