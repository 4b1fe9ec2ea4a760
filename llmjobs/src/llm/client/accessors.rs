//! What the provider batch calls need of an [`LlmClient`]: its HTTP client, routes, prices.

use std::sync::Arc;
use std::time::Duration;

use super::LlmClient;
use crate::llm::router::ProviderConfig;
use crate::llm::{LlmError, Price};

/// What the provider batch calls ([`crate::llm::batch`]) need of the client.
impl LlmClient {
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn resolve(&self, model: &str) -> Result<crate::llm::router::Resolved, LlmError> {
        self.inner.router.resolve(model)
    }

    pub(crate) fn provider_named(&self, name: &str) -> Option<Arc<ProviderConfig>> {
        self.inner.router.providers.get(name).cloned()
    }

    pub(crate) fn price_of(&self, model: &str) -> Option<Price> {
        self.inner.prices.get(model)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    pub(crate) fn max_tokens_default(&self) -> u32 {
        self.inner.default_max_tokens
    }
}
