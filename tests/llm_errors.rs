//! Failures against the local mock server: rate limits, server errors, auth errors, broken
//! bodies and connections.

use std::time::{Duration, Instant};

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{ChatRequest, LlmClient, LlmError, RetryPolicy};
use llmjobs::{ErrorKind, JobError};

async fn setup(retry: RetryPolicy) -> (MockLlmServer, LlmClient) {
    let mock = MockLlmServer::start().await.expect("mock server starts");
    let client = mock
        .client_builder()
        .retry(retry)
        .build()
        .expect("client builds");
    (mock, client)
}

fn fast() -> RetryPolicy {
    RetryPolicy::new()
        .base_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(40))
}

fn req(model: &str) -> ChatRequest {
    ChatRequest::new(model).user("hello")
}

#[tokio::test]
async fn a_429_with_retry_after_delays_the_retry_and_pauses_sibling_calls() {
    let (mock, client) = setup(fast()).await;
    mock.push_reply_for("gpt-4o-mini", MockReply::rate_limited(2));

    let first = tokio::spawn({
        let client = client.clone();
        async move { client.call(&req("openai/gpt-4o-mini")).await }
    });
    while mock.request_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let limited_at = mock.requests()[0].received_at;
    // Give the client time to read the 429, then start a sibling on another model of the
    // same provider, and one on another provider.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (sibling_req, other_req) = (req("openai/gpt-4o"), req("anthropic/claude-haiku"));
    let (sibling, other_provider) =
        tokio::join!(client.call(&sibling_req), client.call(&other_req));
    let first = first.await.unwrap();
    assert!(first.is_ok() && sibling.is_ok() && other_provider.is_ok());

    let requests = mock.requests();
    let at = |model: &str| {
        let times: Vec<Instant> = requests
            .iter()
            .filter(|r| r.model == model)
            .map(|r| r.received_at)
            .collect();
        times
    };
    let retry = at("gpt-4o-mini")[1];
    assert!(
        retry - limited_at >= Duration::from_secs(2),
        "retried after {:?}",
        retry - limited_at
    );
    let sibling_at = at("gpt-4o")[0];
    assert!(
        sibling_at - limited_at >= Duration::from_millis(1950),
        "sibling sent after {:?}",
        sibling_at - limited_at
    );
    let other_at = at("claude-haiku")[0];
    assert!(
        other_at - limited_at < Duration::from_secs(1),
        "other providers are not paused"
    );
}

#[tokio::test]
async fn a_500_is_retried_with_backoff() {
    let base = Duration::from_millis(100);
    let (mock, client) = setup(RetryPolicy::new().base_delay(base)).await;
    mock.push_reply(MockReply::server_error());
    mock.push_reply(MockReply::server_error());

    let answer = client.call(&req("openai/gpt-4o-mini")).await.unwrap();
    assert_eq!(answer.text, "Mock answer to: hello");
    let times: Vec<Instant> = mock.requests().iter().map(|r| r.received_at).collect();
    assert_eq!(times.len(), 3);
    // Delays are drawn from the upper half of each step: >= 50 ms, then >= 100 ms.
    assert!(times[1] - times[0] >= base / 2, "{:?}", times[1] - times[0]);
    assert!(times[2] - times[1] >= base, "{:?}", times[2] - times[1]);
}

#[tokio::test]
async fn a_401_fails_at_once_with_a_clear_message() {
    let (mock, client) = setup(fast()).await;
    mock.push_reply(MockReply::status(401, "Incorrect API key provided"));

    let err = client.call(&req("openai/gpt-4o-mini")).await.unwrap_err();
    assert_eq!(mock.request_count(), 1, "no retry");
    assert_eq!(err.status(), Some(401));
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "HTTP 401 from openai (model `openai/gpt-4o-mini`): Incorrect API key provided (authentication_error)"
    );
    assert!(err.into_job_error().is_permanent());
}

#[tokio::test]
async fn retries_stop_after_the_policy_and_keep_the_last_error() {
    let (mock, client) = setup(fast().max_retries(2)).await;
    mock.always_reply_for("gpt-4o-mini", MockReply::status(503, "overloaded"));
    let err = client.call(&req("openai/gpt-4o-mini")).await.unwrap_err();
    assert_eq!(mock.request_count(), 3);
    assert!(
        matches!(err, LlmError::RetriesExhausted { tries: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert_eq!(err.into_job_error().kind(), ErrorKind::Retryable);
}

#[tokio::test]
async fn a_malformed_body_is_an_error_not_an_answer() {
    let (mock, client) = setup(fast()).await;
    mock.push_reply(MockReply::MalformedJson);
    let err = client.chat(&req("openai/gpt-4o-mini")).await.unwrap_err();
    assert!(matches!(err, LlmError::InvalidResponse { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("not valid JSON"), "{err}");

    // Through the retry layer, the next try gets a real answer.
    mock.push_reply(MockReply::MalformedJson);
    let answer = client.call(&req("openai/gpt-4o-mini")).await.unwrap();
    assert_eq!(answer.text, "Mock answer to: hello");
}

#[tokio::test]
async fn malformed_stream_events_are_an_error() {
    let (mock, client) = setup(fast()).await;
    mock.push_reply(MockReply::MalformedJson);
    let err = client
        .chat_stream(&req("openai/gpt-4o-mini"), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Stream { .. }), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_truncated_stream_is_a_retryable_error_for_both_providers() {
    let (mock, client) = setup(fast()).await;
    for model in ["openai/gpt-4o-mini", "anthropic/claude-haiku"] {
        mock.push_reply(MockReply::TruncatedStream);
        let mut partial = String::new();
        let err = client
            .chat_stream(&req(model), |e| partial.push_str(&e.delta_text))
            .await
            .unwrap_err();
        assert!(matches!(err, LlmError::Stream { .. }), "{model}: {err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(err.is_retryable());
        assert!(
            !partial.is_empty(),
            "{model}: some deltas arrived before the cut"
        );
    }
}

#[tokio::test]
async fn a_truncated_plain_body_is_an_invalid_response() {
    let (mock, client) = setup(fast()).await;
    mock.push_reply(MockReply::TruncatedStream);
    let err = client
        .chat(&req("anthropic/claude-haiku"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::InvalidResponse { .. }), "{err}");
}

#[tokio::test]
async fn a_connection_reset_mid_stream_is_a_retryable_transport_error() {
    let (mock, client) = setup(fast()).await;
    mock.push_reply(MockReply::ResetMidStream);
    let err = client
        .chat_stream(&req("openai/gpt-4o-mini"), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Transport { .. }), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let (mock, client) = setup(fast()).await;
    mock.push_reply(MockReply::DropConnection);
    let err = client.chat(&req("openai/gpt-4o-mini")).await.unwrap_err();
    assert!(matches!(err, LlmError::Transport { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("transport error calling openai"),
        "{err}"
    );
    assert!(err.to_string().contains("connection closed"), "{err}");

    mock.push_reply(MockReply::DropConnection);
    let answer = client.call(&req("openai/gpt-4o-mini")).await.unwrap();
    assert_eq!(answer.text, "Mock answer to: hello");
}

#[tokio::test]
async fn a_slow_provider_times_out() {
    let mock = MockLlmServer::start().await.unwrap();
    let client = mock
        .client_builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    mock.push_reply(MockReply::Default.delayed(Duration::from_secs(2)));
    let err = client.chat(&req("openai/gpt-4o-mini")).await.unwrap_err();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn context_length_errors_are_permanent() {
    let (mock, client) = setup(fast()).await;
    mock.push_reply(MockReply::status(
        400,
        "prompt is too long: 210000 tokens > 200000 maximum",
    ));
    let err = client
        .call(&req("anthropic/claude-haiku"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::ContextLength { .. }), "{err}");
    assert_eq!(mock.request_count(), 1);
    assert!(err.into_job_error().is_permanent());
}

#[tokio::test]
async fn rate_limit_errors_become_retry_after_job_errors() {
    let (mock, client) = setup(fast()).await;
    mock.push_reply(MockReply::rate_limited(7));
    let err = client.chat(&req("openai/gpt-4o-mini")).await.unwrap_err();
    assert!(err.is_rate_limited());
    let job: JobError = err.into_job_error();
    assert_eq!(job.kind(), ErrorKind::RetryAfter(Duration::from_secs(7)));
}
