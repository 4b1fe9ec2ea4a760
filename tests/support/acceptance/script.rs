//! Scripting the mock so that each case meets its situation, whatever else runs beside it.

use std::time::Duration;

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{LlmClient, Validator};
use serde_json::{Value, json};

use super::{Case, Situation};

/// The text that picks out a case's requests among those to the same model: its first user
/// message (feedback retries keep it in the conversation).
pub(crate) fn needle(case: &Case) -> Option<String> {
    case.request
        .messages
        .iter()
        .find(|m| m.role == llmjobs::llm::Role::User)
        .map(|m| m.content.text())
}

/// The agent checker models of a case, as the mock sees them.
fn checkers(case: &Case, client: &LlmClient) -> Vec<String> {
    case.request
        .validation
        .iter()
        .filter_map(|v| match v {
            Validator::AgentTask(a) => Some(a.model.clone()),
            Validator::ContradictionCheck(c) => Some(c.model.clone()),
            _ => None,
        })
        .filter_map(|m| client.wire_model_for(&m).ok())
        .collect()
}

/// Scripts `mock` for every situation of `case`.
pub fn script_mock(mock: &MockLlmServer, client: &LlmClient, case: &Case) {
    let model = client
        .wire_model_for(&case.request.model)
        .unwrap_or_else(|_| case.request.model.clone());
    let needle = needle(case).unwrap_or_default();
    for situation in &case.situations {
        match situation {
            Situation::Empty => mock.always_reply_matching(&model, &needle, MockReply::text("")),
            Situation::EmptyOnce => mock.push_reply_matching(&model, &needle, MockReply::text("")),
            Situation::Truncated => {
                mock.always_reply_matching(&model, &needle, MockReply::length_limited(""))
            }
            Situation::RateLimited => {
                mock.push_reply_matching(&model, &needle, MockReply::rate_limited(1))
            }
            Situation::ServerError => {
                mock.push_reply_matching(&model, &needle, MockReply::server_error())
            }
            Situation::Slow { delay_ms, .. } => mock.push_reply_matching(
                &model,
                &needle,
                MockReply::Default.delayed(Duration::from_millis(*delay_ms)),
            ),
            Situation::Answers { texts } => {
                for text in texts {
                    mock.push_reply_matching(&model, &needle, MockReply::text(text.clone()));
                }
            }
            Situation::CheckerRejects {
                when,
                reasoning,
                details,
            } => {
                let verdict = json!({
                    "validation_passed": false,
                    "reasoning": reasoning,
                    "details": details.clone().unwrap_or_else(|| json!({})),
                })
                .to_string();
                for checker in checkers(case, client) {
                    mock.always_reply_matching(
                        &checker,
                        when.clone().unwrap_or_default(),
                        MockReply::text(verdict.clone()),
                    );
                }
            }
        }
    }
}

/// How many requests for `case` reached the mock: those to its model with its prompt.
pub(crate) fn requests_for(mock: &MockLlmServer, client: &LlmClient, case: &Case) -> usize {
    let model = client
        .wire_model_for(&case.request.model)
        .unwrap_or_else(|_| case.request.model.clone());
    let needle = needle(case);
    mock.requests()
        .iter()
        .filter(|r| r.model == model)
        .filter(|r| needle.as_deref().is_none_or(|n| mentions(&r.body, n)))
        .count()
}

/// Whether a request body's messages contain `needle`.
fn mentions(body: &Value, needle: &str) -> bool {
    let messages = body.get("messages").and_then(Value::as_array);
    messages
        .into_iter()
        .flatten()
        .any(|m| match m.get("content") {
            Some(Value::String(text)) => text.contains(needle),
            Some(Value::Array(parts)) => parts.iter().any(|p| {
                p.get("text")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.contains(needle))
            }),
            _ => false,
        })
}
