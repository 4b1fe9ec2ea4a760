//! The circuit breaker's log lines. A test binary of its own: a thread-local subscriber misses
//! events while tests on other threads share the callsites.

use std::time::Duration;

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{ChatRequest, CircuitBreaker, RetryPolicy};
use llmjobs_testkit::logs::CapturedLogs;

const COOL_DOWN: Duration = Duration::from_millis(300);

#[tokio::test]
async fn opening_and_closing_are_logged() {
    // The test runs on one thread, so the subscriber sees every event of the client.
    let (captured, _guard) = CapturedLogs::start(tracing::Level::INFO);
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply_for("gpt-4o-mini", MockReply::server_error());
    mock.push_reply_for("gpt-4o-mini", MockReply::server_error());
    let client = mock
        .client_builder()
        .retry(RetryPolicy::no_retries())
        .circuit_breaker(CircuitBreaker::new().failures(2).cool_down(COOL_DOWN))
        .build()
        .unwrap();
    let req = ChatRequest::new("openai/gpt-4o-mini").user("hi");
    for _ in 0..2 {
        assert!(client.chat(&req).await.is_err());
    }
    tokio::time::sleep(COOL_DOWN + Duration::from_millis(50)).await;
    assert!(client.chat(&req).await.is_ok());
    let log = captured.text();
    assert!(log.contains("circuit breaker opened"), "{log}");
    assert!(log.contains("circuit breaker closed"), "{log}");
    assert!(log.contains("provider=openai"), "{log}");
}
