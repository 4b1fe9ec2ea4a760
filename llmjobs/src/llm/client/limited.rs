//! A call under the rate limits, and its answer priced.

use super::LlmClient;
use crate::llm::limits::Tokens;
use crate::llm::provider::{CallCtx, Parsed};
use crate::llm::request::estimate_tokens;
use crate::llm::router::ProviderConfig;
use crate::llm::{ChatRequest, ChatResponse, LlmError, Price, Usage};

/// The output tokens assumed for rate limiting when a request sets no `max_tokens`.
const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;

impl LlmClient {
    /// Runs `call`, one exchange with `provider`, under the rate limits: it waits for its
    /// place, holds it while it runs, shares a rate limit's pause with every caller of the
    /// model, and settles the place with the tokens the answer used.
    pub(super) async fn limited(
        &self,
        ctx: CallCtx<'_>,
        req: &ChatRequest,
        provider: &ProviderConfig,
        call: impl Future<Output = Result<Parsed, LlmError>>,
    ) -> Result<ChatResponse, LlmError> {
        let inner = &*self.inner;
        let estimate = Tokens {
            input: req.estimated_input_tokens(),
            output: req.max_tokens.map_or(DEFAULT_OUTPUT_ESTIMATE, u64::from),
        };
        let permit = self
            .limits
            .acquire(&inner.limiter, &provider.name, &req.model, estimate)
            .await?;
        let parsed = match permit.hold(call).await {
            Ok(parsed) => parsed,
            Err(error) => {
                if error.is_rate_limited() {
                    let pause = error
                        .retry_after()
                        .unwrap_or(inner.retry.base_delay)
                        .min(inner.retry.max_retry_after);
                    tracing::warn!(provider = %provider.name, model = %req.model, ?pause, "rate limited; pausing");
                    self.limits
                        .pause(&inner.limiter, &provider.name, &req.model, pause)
                        .await;
                }
                permit.settle(Tokens::default()).await;
                return Err(error);
            }
        };
        let response = self.finish_response(ctx, req, provider, parsed);
        permit
            .settle(Tokens {
                input: response.usage.input_tokens,
                output: response.usage.output_tokens,
            })
            .await;
        Ok(response)
    }

    fn finish_response(
        &self,
        ctx: CallCtx<'_>,
        req: &ChatRequest,
        provider: &ProviderConfig,
        parsed: Parsed,
    ) -> ChatResponse {
        priced_response(parsed, req, provider, self.inner.prices.get(ctx.model))
    }
}

/// The answer `parsed` to `req` from `provider`, its usage estimated when the provider gave
/// none, and priced at `price`.
pub(in crate::llm) fn priced_response(
    parsed: Parsed,
    req: &ChatRequest,
    provider: &ProviderConfig,
    price: Option<Price>,
) -> ChatResponse {
    let usage = parsed.usage.unwrap_or_else(|| Usage {
        input_tokens: req.estimated_input_tokens(),
        output_tokens: estimate_tokens(parsed.text.len()),
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        estimated: true,
    });
    let cost = price.map(|p| p.cost(&usage));
    let mut response = ChatResponse::new(
        parsed.text,
        parsed.model.unwrap_or_else(|| req.model.clone()),
        provider.name.clone(),
    );
    response.id = parsed.id;
    response.usage = usage;
    response.cost = cost;
    response.finish_reason = parsed.finish_reason;
    response.set_tool_calls(parsed.tool_calls);
    response.total_usage = usage;
    response.total_cost = cost;
    response
}
