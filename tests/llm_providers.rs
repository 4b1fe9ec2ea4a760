//! Both providers, plain and streamed, against the local mock server.

use std::time::Duration;

use llmjobs::llm::mock::{MockLlmServer, MockReply, MockRoute};
use llmjobs::llm::{ChatRequest, FinishReason, LlmClient, Price, RetryPolicy, StreamEvent};

async fn setup() -> (MockLlmServer, LlmClient) {
    let mock = MockLlmServer::start().await.expect("mock server starts");
    let client = mock
        .client_builder()
        .retry(RetryPolicy::new().base_delay(Duration::from_millis(10)))
        .price("openai/*", Price::per_million_tokens(1.0, 2.0))
        .build()
        .expect("client builds");
    (mock, client)
}

#[tokio::test]
async fn openai_plain_call_returns_text_and_usage() {
    let (mock, client) = setup().await;
    let req = ChatRequest::new("openai/gpt-4o-mini")
        .system("Be brief.")
        .user("Tell me a short joke.")
        .temperature(0.7)
        .max_tokens(100);
    let answer = client.chat(&req).await.unwrap();

    assert_eq!(answer.text, "Mock answer to: Tell me a short joke.");
    assert_eq!(answer.provider, "openai");
    assert_eq!(answer.model, "gpt-4o-mini");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert!(answer.usage.input_tokens > 0 && answer.usage.output_tokens > 0);
    assert!(!answer.usage.estimated);
    let expected_cost =
        (answer.usage.input_tokens as f64 + 2.0 * answer.usage.output_tokens as f64) / 1e6;
    assert!((answer.cost.unwrap() - expected_cost).abs() < 1e-12);

    let sent = &mock.requests()[0];
    assert_eq!(sent.route, MockRoute::OpenAiChat);
    assert_eq!(sent.model, "gpt-4o-mini", "the routing prefix is stripped");
    assert_eq!(sent.header("authorization"), Some("Bearer mock-openai-key"));
    assert_eq!(sent.body["messages"][0]["role"], "system");
    assert_eq!(sent.body["max_tokens"], 100);
}

#[tokio::test]
async fn openai_stream_reports_deltas_and_usage() {
    let (mock, client) = setup().await;
    let req = ChatRequest::new("openai/gpt-4o-mini").user("Count the words in this prompt please");
    let mut events: Vec<StreamEvent> = Vec::new();
    let answer = client
        .chat_stream(&req, |e| events.push(e.clone()))
        .await
        .unwrap();

    assert_eq!(
        answer.text,
        "Mock answer to: Count the words in this prompt please"
    );
    assert!(events.len() > 3, "one event per word: {events:?}");
    let streamed: String = events.iter().map(|e| e.delta_text.as_str()).collect();
    assert_eq!(streamed, answer.text);
    assert!(
        events
            .windows(2)
            .all(|w| w[0].output_tokens_so_far <= w[1].output_tokens_so_far)
    );
    assert!(answer.usage.input_tokens > 0 && answer.usage.output_tokens > 0);
    assert!(
        !answer.usage.estimated,
        "usage comes from the stream's usage chunk"
    );
    assert_eq!(
        mock.requests()[0].body["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn anthropic_plain_call_returns_text_and_usage() {
    let (mock, client) = setup().await;
    let req = ChatRequest::new("anthropic/claude-sonnet-4-5")
        .system("You are a pirate poet.")
        .user("Write a 2-line poem about the sea.");
    let answer = client.chat(&req).await.unwrap();

    assert_eq!(
        answer.text,
        "Mock answer to: Write a 2-line poem about the sea."
    );
    assert_eq!(answer.provider, "anthropic");
    assert_eq!(answer.finish_reason, Some(FinishReason::Stop));
    assert!(answer.usage.input_tokens > 0 && answer.usage.output_tokens > 0);
    assert_eq!(answer.cost, None, "no price is set for anthropic models");

    let sent = &mock.requests()[0];
    assert_eq!(sent.route, MockRoute::AnthropicMessages);
    assert_eq!(sent.model, "claude-sonnet-4-5");
    assert_eq!(sent.header("x-api-key"), Some("mock-anthropic-key"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.body["system"], "You are a pirate poet.");
    assert_eq!(sent.body["max_tokens"], 4096);
}

#[tokio::test]
async fn anthropic_stream_reports_deltas_and_usage() {
    let (_mock, client) = setup().await;
    let req = ChatRequest::new("anthropic/claude-sonnet-4-5").user("Stream a few words back to me");
    let mut deltas = Vec::new();
    let mut last_tokens = 0;
    let answer = client
        .chat_stream(&req, |e| {
            deltas.push(e.delta_text.clone());
            last_tokens = e.output_tokens_so_far;
            assert!(
                e.input_tokens.is_some(),
                "message_start reports input tokens"
            );
        })
        .await
        .unwrap();

    assert_eq!(
        deltas.concat(),
        "Mock answer to: Stream a few words back to me"
    );
    assert_eq!(answer.text, deltas.concat());
    assert!(last_tokens > 0);
    assert!(answer.usage.output_tokens >= last_tokens);
    assert!(!answer.usage.estimated);
}

#[tokio::test]
async fn json_requests_get_json_from_both_providers() {
    let (_mock, client) = setup().await;
    for model in ["openai/gpt-4o-mini", "anthropic/claude-haiku"] {
        let req = ChatRequest::new(model)
            .user("Give me a JSON object with a 'status' field.")
            .json();
        let answer = client.chat(&req).await.unwrap();
        let value: serde_json::Value = answer.json().unwrap();
        assert_eq!(value["status"], "mock", "{model}");
    }
}

#[tokio::test]
async fn max_proxy_models_keep_their_prefix() {
    let (mock, client) = setup().await;
    let answer = client
        .chat(&ChatRequest::new("max/text-generation").user("Hello Claude"))
        .await
        .unwrap();
    assert_eq!(answer.provider, "max");
    assert_eq!(mock.requests()[0].model, "max/text-generation");
}

#[tokio::test]
async fn the_call_layer_streams_and_totals_usage() {
    let (mock, client) = setup().await;
    mock.push_reply(MockReply::server_error());
    let req = ChatRequest::new("openai/gpt-4o-mini").user("hello there");
    let mut attempts = Vec::new();
    let answer = client
        .call_stream(&req, |e| attempts.push(e.attempt))
        .await
        .unwrap();
    assert_eq!(answer.attempts, 1, "one answer was validated");
    assert_eq!(answer.total_usage, answer.usage);
    assert!(
        attempts.iter().all(|&a| a == 2),
        "deltas come from the second HTTP try"
    );
    assert_eq!(mock.request_count(), 2);
}
