//! The original's routing rules and the routes' capability checks.

use std::time::Duration;

use llmjobs::llm::mock::MockLlmServer;
use llmjobs::llm::{
    Capability, ChatRequest, ContentPart, DEFAULT_LONG_RUNNING_PATTERNS, LlmError, Message,
    llm_call,
};
use llmjobs::{JobState, Jobs, Outcome};
use llmjobs_testkit::TempDb;
use serde_json::json;

fn request(config: serde_json::Value) -> ChatRequest {
    ChatRequest::from_value(config).unwrap()
}

#[test]
fn the_original_routing_rules_decide_the_background() {
    let routed = |config| request(config).is_long_running(DEFAULT_LONG_RUNNING_PATTERNS);
    assert!(routed(json!({"model": "max/agent", "question": "q"})));
    assert!(!routed(json!({"model": "openai/gpt-4o", "question": "q"})));
    assert!(routed(
        json!({"model": "openai/gpt-4o", "question": "q", "mcp_config": {"mcpServers": {}}})
    ));
    assert!(routed(
        json!({"model": "openai/gpt-4o", "question": "q", "long_running": true})
    ));
    assert!(routed(
        json!({"model": "openai/gpt-4o", "question": "q", "polling": true})
    ));
    assert!(!routed(
        json!({"model": "max/agent", "question": "q", "use_polling": false})
    ));
    assert!(routed(
        json!({"model": "openai/gpt-4o", "question": "q", "wait_for_completion": false})
    ));
}

#[test]
fn wait_keys_cap_the_callers_wait_and_bad_ones_are_named() {
    let wait = |config| request(config).wait_limit();
    assert_eq!(
        wait(json!({"model": "m", "timeout": 2.5})),
        Some(Duration::from_millis(2500))
    );
    assert_eq!(
        wait(json!({"model": "m", "wait_for_completion": 3, "timeout": 9})),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        wait(json!({"model": "m", "wait_for_completion": true})),
        None
    );
    let err = ChatRequest::from_value(json!({"model": "m", "timeout": -1}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("timeout") && err.contains("-1"), "{err}");
}

async fn jobs_on(mock: &MockLlmServer, db: &TempDb) -> Jobs {
    Jobs::builder()
        .url(db.url())
        .llm(mock.client_builder().build().unwrap())
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_request_timeout_gives_the_handle_and_the_same_call_goes_on_without_routing_keys_sent() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_delay(Duration::from_millis(800));
    let db = TempDb::new();
    let jobs = jobs_on(&mock, &db).await;
    let req = request(json!({
        "model": "openai/gpt-4o-mini", "question": "slow one",
        "timeout": 0.05, "use_polling": false, "wait_for_completion": true
    }));
    let outcome = jobs
        .run_with_timeout(llm_call(req), Duration::from_secs(60))
        .await
        .unwrap();
    let Outcome::Pending(handle) = outcome else {
        panic!("an 800 ms call cannot answer within the request's 50 ms");
    };
    assert!(!handle.wait().await.unwrap().text.is_empty());
    assert_eq!(mock.request_count(), 1, "the same call went on");
    let body = &mock.requests()[0].body;
    for key in ["timeout", "polling", "use_polling", "wait_for_completion"] {
        assert!(body.get(key).is_none(), "{key} was sent: {body}");
    }
    jobs.shutdown().await;
}

#[tokio::test]
async fn an_image_for_the_claude_proxy_fails_at_once_without_a_call_or_a_retry() {
    let mock = MockLlmServer::start().await.unwrap();
    let db = TempDb::new();
    let jobs = jobs_on(&mock, &db).await;
    let req = ChatRequest::new("max/image_analyzer_agent").user(vec![
        ContentPart::text("Describe it."),
        ContentPart::image_url("https://example.com/logo.png"),
    ]);
    let handle = jobs.spawn(llm_call(req.clone())).await.unwrap();
    let err = handle.clone().wait().await.unwrap_err().to_string();
    assert!(
        err.contains("route `max/`") && err.contains("does not accept images"),
        "{err}"
    );
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.attempts, 1, "permanent: not retried");
    assert_eq!(mock.request_count(), 0, "nothing was sent");

    let client = mock.client_builder().build().unwrap();
    let err = client.chat(&req).await.unwrap_err();
    assert!(
        matches!(
            err,
            LlmError::Unsupported {
                capability: Capability::Images,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_route_can_be_told_what_it_refuses() {
    let mock = MockLlmServer::start().await.unwrap();
    let system_only = ChatRequest::new("max/x").message(Message::system("Only say OK."));
    let client = mock.client_builder().build().unwrap();
    let err = client.chat(&system_only).await.unwrap_err().to_string();
    assert!(err.contains("without a user message"), "{err}");

    let lifted = mock
        .client_builder()
        .route_refuses("max/", Vec::new())
        .build()
        .unwrap();
    assert!(lifted.chat(&system_only).await.is_ok());
    let strict = mock
        .client_builder()
        .route_refuses("openai/", [Capability::Images])
        .build()
        .unwrap();
    let image = ChatRequest::new("openai/gpt-4o")
        .user(vec![ContentPart::image_url("https://example.com/x.png")]);
    assert!(matches!(
        strict.chat(&image).await,
        Err(LlmError::Unsupported { .. })
    ));
    let err = mock
        .client_builder()
        .route_refuses("nope/", Vec::new())
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope/"), "{err}");
    assert_eq!(mock.request_count(), 1, "only the lifted call was sent");
}
