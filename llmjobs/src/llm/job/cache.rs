//! The completion cache: answers shared through the job database, keyed by a hash of the
//! normalised request.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::JobContext;
use crate::llm::{ChatRequest, ChatResponse, Usage};
use crate::status::now_ms;
use crate::store::CacheEntry;

/// The opt-in completion cache ([`JobsBuilder::llm_cache`](crate::JobsBuilder::llm_cache)):
/// a provider call whose request was answered before, by any process sharing the database, is
/// answered from the database instead, for as long as the answer is fresh.
///
/// The key is a SHA-256 of the normalised request: the model as requested, the system prompt,
/// the messages, and every sampling and format field sent to the provider (temperature,
/// `top_p`, `max_tokens`, response format, stop sequences, tools, tool choice, MCP config and
/// provider options). Fields the provider never sees (validators, retry and routing options)
/// are not in it. By default only requests at temperature 0 (or none set) are cached: an
/// answer sampled at a higher temperature is one of many, and serving it again is a choice
/// [`CompletionCache::any_temperature`] makes.
///
/// A hit is recorded in the usage ledger with the outcome `cache_hit`, no tokens and no cost;
/// the answer comes back with zero usage and cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompletionCache {
    ttl: Duration,
    any_temperature: bool,
}

impl CompletionCache {
    /// A cache whose answers are served for `ttl` after they were received.
    pub fn new(ttl: Duration) -> Self {
        CompletionCache {
            ttl,
            any_temperature: false,
        }
    }

    /// Caches requests at any temperature, not only at 0.
    pub fn any_temperature(mut self) -> Self {
        self.any_temperature = true;
        self
    }

    /// How long an answer is served.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The key of `request`, or `None` when it is not to be cached.
    pub(crate) fn key_for(&self, request: &ChatRequest) -> Option<String> {
        let deterministic = request.temperature.is_none_or(|t| t == 0.0);
        (deterministic || self.any_temperature).then(|| cache_key(request))
    }

    /// The fresh answer under `key`, with zero usage; `None` on a miss or when the cache cannot
    /// be read (a cache is never a reason to fail a call).
    pub(crate) async fn lookup(&self, ctx: &JobContext, key: &str) -> Option<ChatResponse> {
        let stored = match ctx.store().cached_answer(key.to_string(), now_ms()).await {
            Ok(stored) => stored?,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the completion cache");
                return None;
            }
        };
        let mut response: ChatResponse = serde_json::from_str(&stored).ok()?;
        response.usage = Usage::default();
        response.total_usage = Usage::default();
        response.cost = Some(0.0);
        response.total_cost = Some(0.0);
        response.retries = 0;
        Some(response)
    }

    /// Stores `response` under `key` for the cache's TTL.
    pub(crate) async fn store(&self, ctx: &JobContext, key: String, response: &ChatResponse) {
        let Ok(json) = serde_json::to_string(response) else {
            return;
        };
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let entry = CacheEntry {
            key,
            model: response.model.clone(),
            response: json,
            expires_at: now_ms().saturating_add(ttl),
        };
        if let Err(e) = ctx.store().cache_answer(entry).await {
            tracing::warn!(error = %e, "could not write the completion cache");
        }
    }
}

/// What of a request the provider sees, in a fixed order.
#[derive(Serialize)]
struct Normalised<'a> {
    model: &'a str,
    system: Option<&'a str>,
    messages: Value,
    temperature: f64,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    response_format: Value,
    stop: &'a [String],
    tools: &'a [Value],
    tool_choice: Option<&'a Value>,
    mcp_config: Option<&'a Value>,
    provider_options: &'a Map<String, Value>,
}

/// The SHA-256, in hex, of the normalised request. An unset temperature is the same as 0;
/// JSON objects are hashed with their keys sorted (`serde_json`'s map), so key order in
/// tools or provider options makes no difference.
fn cache_key(request: &ChatRequest) -> String {
    let normalised = Normalised {
        model: &request.model,
        system: request.system.as_deref(),
        messages: serde_json::to_value(&request.messages).unwrap_or(Value::Null),
        temperature: request.temperature.unwrap_or(0.0),
        top_p: request.top_p,
        max_tokens: request.max_tokens,
        response_format: serde_json::to_value(&request.response_format).unwrap_or(Value::Null),
        stop: &request.stop,
        tools: &request.tools,
        tool_choice: request.tool_choice.as_ref(),
        mcp_config: request.mcp_config.as_ref(),
        provider_options: &request.provider_options,
    };
    let bytes = serde_json::to_vec(&normalised).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_temperature_keys_like_zero() {
        let cache = CompletionCache::new(Duration::from_secs(60));
        let a = ChatRequest::new("openai/m").user("hi");
        let b = ChatRequest::new("openai/m").user("hi").temperature(0.0);
        assert_eq!(cache.key_for(&a), cache.key_for(&b));
        assert!(cache.key_for(&a).is_some());
    }

    #[test]
    fn a_different_prompt_or_model_keys_differently() {
        let cache = CompletionCache::new(Duration::from_secs(60));
        let a = cache.key_for(&ChatRequest::new("openai/m").user("hi"));
        let b = cache.key_for(&ChatRequest::new("openai/m").user("hello"));
        let c = cache.key_for(&ChatRequest::new("openai/n").user("hi"));
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn sampled_requests_are_cached_only_when_asked() {
        let req = ChatRequest::new("openai/m").user("hi").temperature(0.7);
        assert!(
            CompletionCache::new(Duration::from_secs(1))
                .key_for(&req)
                .is_none()
        );
        let any = CompletionCache::new(Duration::from_secs(1)).any_temperature();
        assert!(any.key_for(&req).is_some());
    }
}
