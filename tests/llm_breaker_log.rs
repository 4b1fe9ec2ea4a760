//! The circuit breaker's log lines. A test binary of its own: a thread-local subscriber misses
//! events while tests on other threads share the callsites.

use std::time::Duration;

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{ChatRequest, CircuitBreaker, RetryPolicy};

const COOL_DOWN: Duration = Duration::from_millis(300);

/// Log lines, captured.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn opening_and_closing_are_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test runs on one thread, so the subscriber sees every event of the client.
    let _guard = tracing::subscriber::set_default(subscriber);
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
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("circuit breaker opened"), "{log}");
    assert!(log.contains("circuit breaker closed"), "{log}");
    assert!(log.contains("provider=openai"), "{log}");
}
