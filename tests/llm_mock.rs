//! The mock LLM server itself: concurrency, inspection, scripting.

use std::time::{Duration, Instant};

use llmjobs::llm::mock::{MockLlmServer, MockReply, MockRoute};
use llmjobs::llm::{ChatRequest, RateLimit};

#[tokio::test]
async fn serves_many_concurrent_requests_on_both_routes() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_delay(Duration::from_millis(100));
    let client = mock.client_builder().build().unwrap();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = client.clone();
        let model = if i % 2 == 0 {
            "openai/gpt-4o-mini"
        } else {
            "anthropic/claude-haiku"
        };
        let req = ChatRequest::new(model).user(format!("request {i}"));
        tasks.spawn(async move {
            let answer = if i % 4 < 2 {
                client.chat(&req).await
            } else {
                client.chat_stream(&req, |_| {}).await
            };
            (i, answer.unwrap().text)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, text) = done.unwrap();
        assert_eq!(text, format!("Mock answer to: request {i}"));
    }
    assert_eq!(mock.request_count(), 200);
    assert_eq!(mock.request_count_for(MockRoute::OpenAiChat), 100);
    assert_eq!(mock.request_count_for(MockRoute::AnthropicMessages), 100);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "requests are served concurrently"
    );
}

#[tokio::test]
async fn model_scripts_take_precedence_over_the_shared_queue() {
    let mock = MockLlmServer::start().await.unwrap();
    let client = mock.client_builder().build().unwrap();
    mock.push_reply(MockReply::text("shared"));
    mock.push_reply_for("gpt-4o", MockReply::text("for gpt-4o"));
    let ask = |model: &'static str| {
        let client = client.clone();
        async move {
            client
                .chat(&ChatRequest::new(model).user("hi"))
                .await
                .unwrap()
                .text
        }
    };
    assert_eq!(ask("openai/gpt-4o").await, "for gpt-4o");
    assert_eq!(ask("openai/gpt-4o").await, "shared");
    assert_eq!(ask("openai/gpt-4o").await, "Mock answer to: hi");
}

#[tokio::test]
async fn unknown_routes_are_404_and_not_counted() {
    let mock = MockLlmServer::start().await.unwrap();
    let client = mock
        .client_builder()
        .base_url("openai", mock.base_url() + "/nowhere")
        .build()
        .unwrap();
    let err = client
        .chat(&ChatRequest::new("openai/gpt-4o").user("hi"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(mock.request_count(), 0);
}

#[tokio::test]
async fn a_delayed_reply_holds_only_its_request() {
    let mock = MockLlmServer::start().await.unwrap();
    let client = mock
        .client_builder()
        .rate_limit("*", RateLimit::new().max_concurrency(100))
        .build()
        .unwrap();
    mock.push_reply_for(
        "slow",
        MockReply::Default.delayed(Duration::from_millis(2000)),
    );
    let slow_req = ChatRequest::new("openai/slow").user("a");
    let fast_req = ChatRequest::new("openai/fast").user("b");
    let slow = client.chat(&slow_req);
    let fast = async {
        let start = Instant::now();
        client.chat(&fast_req).await.unwrap();
        start.elapsed()
    };
    let (slow, fast) = tokio::join!(slow, fast);
    slow.unwrap();
    assert!(fast < Duration::from_millis(1500), "{fast:?}");
}
