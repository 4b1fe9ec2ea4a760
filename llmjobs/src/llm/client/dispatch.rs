//! Routing one call: the route's refusals, given answers, the circuit breaker and its
//! fallback, then an HTTP or command-line provider.

use super::LlmClient;
use super::http::timeout;
use crate::llm::breaker::Admission;
use crate::llm::provider::{self, CallCtx};
use crate::llm::router::{ProviderConfig, ProviderKind};
use crate::llm::{ChatRequest, ChatResponse, LlmError, StreamEvent};

impl LlmClient {
    /// One provider call; streamed when `on_event` is given. `attempt` is reported in stream
    /// events. Refused at once when the route cannot take the request; sent to the provider's
    /// fallback, or refused, while the provider's circuit is open.
    pub(crate) async fn send_attempt(
        &self,
        req: &ChatRequest,
        attempt: u32,
        on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Result<ChatResponse, LlmError> {
        let inner = &*self.inner;
        let resolved = inner.router.resolve(&req.model)?;
        let mut provider = resolved.provider.clone();
        if let Some(route) = &resolved.route
            && let Some(capability) = route.refused_by(req)
        {
            return Err(LlmError::Unsupported {
                route: route.prefix.clone(),
                provider: provider.name.clone(),
                model: req.model.clone(),
                capability,
            });
        }
        if provider.kind == ProviderKind::Given {
            let ctx = CallCtx {
                provider: &provider.name,
                model: &req.model,
            };
            return given_answer(ctx, req);
        }
        let ticket = match inner.breakers.admit(&provider.name) {
            Admission::Go(ticket) => ticket,
            Admission::Refused(wait) => {
                let fallback = inner
                    .fallbacks
                    .get(&provider.name)
                    .and_then(|name| inner.router.providers.get(name));
                let Some(fallback) = fallback else {
                    return Err(LlmError::CircuitOpen {
                        provider: provider.name.clone(),
                        model: req.model.clone(),
                        retry_after: wait,
                    });
                };
                match inner.breakers.admit(&fallback.name) {
                    Admission::Go(ticket) => {
                        tracing::debug!(provider = %provider.name, fallback = %fallback.name, "circuit open: sending to the fallback");
                        provider = fallback.clone();
                        ticket
                    }
                    Admission::Refused(_) => {
                        return Err(LlmError::CircuitOpen {
                            provider: provider.name.clone(),
                            model: req.model.clone(),
                            retry_after: wait,
                        });
                    }
                }
            }
        };
        let result = self
            .send_to(&provider, &resolved.wire_model, req, attempt, on_event)
            .await;
        ticket.settle(&result);
        result
    }

    /// One call to `provider`, which has been admitted.
    async fn send_to(
        &self,
        provider: &ProviderConfig,
        wire_model: &str,
        req: &ChatRequest,
        attempt: u32,
        on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Result<ChatResponse, LlmError> {
        let inner = &*self.inner;
        let ctx = CallCtx {
            provider: &provider.name,
            model: &req.model,
        };
        if provider.api_key.is_none()
            && let Some(hint) = &provider.key_hint
        {
            return Err(LlmError::MissingApiKey {
                provider: provider.name.clone(),
                hint: hint.clone(),
            });
        }
        if let Some(command) = provider
            .command
            .as_ref()
            .filter(|_| provider.kind == ProviderKind::Command)
        {
            return self
                .send_command(provider, command, wire_model, req, attempt, on_event)
                .await;
        }
        let streaming = on_event.is_some();
        let body = provider::build_body(
            provider,
            ctx,
            wire_model,
            req,
            streaming,
            inner.default_max_tokens,
        )?;
        let headers = provider::headers(provider)?;
        tracing::debug!(provider = %provider.name, model = %req.model, attempt, streaming, "sending LLM request");
        let request = inner
            .http
            .post(provider::endpoint(provider))
            .headers(headers)
            .json(&body);
        let exchange = self.exchange(ctx, provider, request, attempt, on_event);
        self.limited(ctx, req, provider, exchange).await
    }

    /// One call to a command-line provider, under the same rate limits and deadline as an
    /// HTTP call; dropping it (a cancelled or timed-out job) kills the command.
    async fn send_command(
        &self,
        provider: &ProviderConfig,
        command: &crate::llm::CommandSpec,
        wire_model: &str,
        req: &ChatRequest,
        attempt: u32,
        on_event: Option<&mut (dyn FnMut(&StreamEvent) + Send)>,
    ) -> Result<ChatResponse, LlmError> {
        let inner = &*self.inner;
        let ctx = CallCtx {
            provider: &provider.name,
            model: &req.model,
        };
        tracing::debug!(provider = %provider.name, model = %req.model, attempt, "running the provider's command");
        let run = async {
            tokio::time::timeout(
                inner.timeout,
                provider::command::run(command, ctx, wire_model, req, attempt, on_event),
            )
            .await
            .map_err(|_| timeout(ctx, inner.timeout))?
        };
        self.limited(ctx, req, provider, run).await
    }
}

/// The answer of a [`ProviderKind::Given`] provider: the last assistant message.
fn given_answer(ctx: CallCtx<'_>, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
    let text = req.last_assistant_text().ok_or_else(|| {
        ctx.invalid_request(
            "a given answer needs an assistant message holding the text to validate",
        )
    })?;
    let mut response = ChatResponse::new(text, ctx.model, ctx.provider);
    response.finish_reason = Some(crate::llm::FinishReason::Stop);
    Ok(response)
}
