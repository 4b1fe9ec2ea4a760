//! The circuit breaker: one per provider, shared by every call of a client.

use std::time::Duration;

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{ChatRequest, CircuitBreaker, LlmClient, LlmError, RetryPolicy, llm_call};
use llmjobs::{JobState, Jobs};
use llmjobs_testkit::TempDb;

const COOL_DOWN: Duration = Duration::from_millis(300);

fn client(mock: &MockLlmServer, fallback: bool) -> LlmClient {
    let mut builder = mock
        .client_builder()
        .retry(RetryPolicy::no_retries())
        .circuit_breaker(CircuitBreaker::new().failures(2).cool_down(COOL_DOWN));
    if fallback {
        builder = builder.fallback("openai", "ollama");
    }
    builder.build().unwrap()
}

fn req() -> ChatRequest {
    ChatRequest::new("openai/gpt-4o-mini").user("hi")
}

#[tokio::test]
async fn failures_of_separate_calls_open_the_circuit_then_one_probe_closes_it() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply_for("gpt-4o-mini", MockReply::server_error());
    mock.push_reply_for("gpt-4o-mini", MockReply::server_error());
    let client = client(&mock, false);
    for _ in 0..2 {
        let err = client.clone().chat(&req()).await.unwrap_err();
        assert_eq!(err.status(), Some(500), "{err}");
    }
    let err = client.chat(&req()).await.unwrap_err();
    assert!(matches!(err, LlmError::CircuitOpen { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("circuit open for provider `openai`")
    );
    assert!(err.is_retryable() && err.retry_after().is_some());
    assert_eq!(mock.request_count(), 2, "the open circuit sent nothing");

    tokio::time::sleep(COOL_DOWN + Duration::from_millis(50)).await;
    assert!(client.chat(&req()).await.is_ok(), "the probe goes through");
    assert!(client.chat(&req()).await.is_ok(), "closed again");
    assert_eq!(mock.request_count(), 4);
}

#[tokio::test]
async fn an_open_circuit_sends_calls_to_the_fallback() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply_for("gpt-4o-mini", MockReply::server_error());
    mock.push_reply_for("gpt-4o-mini", MockReply::server_error());
    let client = client(&mock, true);
    for _ in 0..2 {
        assert!(client.chat(&req()).await.is_err());
    }
    let answer = client.chat(&req()).await.unwrap();
    assert_eq!(answer.provider, "ollama");
}

#[tokio::test]
async fn a_call_stopped_by_the_circuit_says_so_in_its_progress() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_for("gpt-4o-mini", MockReply::server_error());
    let client = mock
        .client_builder()
        .retry(RetryPolicy::no_retries())
        .circuit_breaker(
            CircuitBreaker::new()
                .failures(1)
                .cool_down(Duration::from_secs(600)),
        )
        .build()
        .unwrap();
    assert!(client.chat(&req()).await.is_err(), "opens the circuit");
    let db = TempDb::new();
    let jobs = Jobs::builder()
        .url(db.url())
        .llm(client)
        .open()
        .await
        .unwrap();
    let handle = jobs.spawn(llm_call(req())).await.unwrap();
    let err = handle.clone().wait().await.unwrap_err().to_string();
    assert!(err.contains("circuit open"), "{err}");
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    let progress: llmjobs::Progress = serde_json::from_value(status.progress.unwrap()).unwrap();
    let message = progress.message.unwrap();
    assert!(
        message.contains("circuit open for provider `openai`"),
        "{message}"
    );
    assert_eq!(mock.request_count(), 1, "the job's call was not sent");
    jobs.shutdown().await;
}

#[test]
fn a_fallback_to_an_unknown_provider_fails_the_build() {
    let err = LlmClient::builder()
        .fallback("openai", "nope")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}
