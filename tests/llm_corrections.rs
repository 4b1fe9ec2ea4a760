//! Corrections to the LLM client: error messages that state their cause once, an overall
//! deadline for streams, secrets kept out of stored job arguments.

use std::time::Duration;

use llmjobs::JobError;
use llmjobs::llm::mock::MockLlmServer;
use llmjobs::llm::{ChatRequest, LlmClient, RetryPolicy};

fn unreachable_client() -> LlmClient {
    // A port nothing listens on: bind one, then drop the listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    MockLlmServer::client_builder_for(&format!("http://127.0.0.1:{port}"))
        .retry(
            RetryPolicy::new()
                .max_retries(1)
                .base_delay(Duration::from_millis(1)),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_failed_call_states_its_transport_error_once() {
    let err = unreachable_client()
        .call(&ChatRequest::new("openai/gpt-4o-mini").user("hi"))
        .await
        .unwrap_err();
    let job_error = JobError::from(err);
    assert_eq!(
        job_error.to_string(),
        "gave up after 2 tries: transport error calling openai (model `openai/gpt-4o-mini`): \
         error sending request: client error (Connect): tcp connect error: Connection refused \
         (os error 111)"
    );
}

#[tokio::test]
async fn a_failed_llm_call_job_states_its_transport_error_once() {
    let db = llmjobs_testkit::TempDb::new();
    let jobs = llmjobs::Jobs::builder()
        .url(db.url())
        .llm(unreachable_client())
        .open()
        .await
        .unwrap();
    let req = ChatRequest::new("openai/gpt-4o-mini").user("hi");
    let handle = jobs.spawn(llmjobs::llm::llm_call(req)).await.unwrap();
    let err = handle.clone().wait().await.unwrap_err().to_string();
    let cause = "transport error calling openai (model `openai/gpt-4o-mini`): error sending \
                 request: client error (Connect): tcp connect error: Connection refused (os error 111)";
    assert!(err.contains(cause), "{err}");
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    let status = handle.status().await.unwrap();
    let stored = status.error.unwrap_or_default();
    assert_eq!(stored.matches("Connection refused").count(), 1, "{stored}");
    jobs.shutdown().await;
}

/// A server that answers every request with a stream that sends one delta every 20 ms and
/// never ends.
async fn endless_stream_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = socket.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n";
                let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                while socket.write_all(chunk.as_bytes()).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_stream_that_never_ends_stops_at_the_call_deadline() {
    let url = endless_stream_server().await;
    let client = MockLlmServer::client_builder_for(&url)
        .timeout(Duration::from_millis(300))
        .stream_idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut deltas = 0;
    let err = client
        .chat_stream(&ChatRequest::new("openai/gpt-4o-mini").user("hi"), |_| {
            deltas += 1
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "openai (model `openai/gpt-4o-mini`) did not answer within 300ms"
    );
    assert!(deltas > 0, "the stream had started");
}

#[tokio::test]
async fn llm_call_refuses_to_store_a_literal_secret() {
    let db = llmjobs_testkit::TempDb::new();
    let jobs = llmjobs::Jobs::builder().url(db.url()).open().await.unwrap();
    let mut req = ChatRequest::new("max/agent").user("hi");
    req.mcp_config = Some(serde_json::json!({"mcpServers": {"gh": {
        "command": "gh-mcp", "env": {"GITHUB_TOKEN": "ghp_live_secret"}}}}));
    let err = jobs
        .spawn(llmjobs::llm::llm_call(req))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mcp_config.mcpServers.gh.env.GITHUB_TOKEN")
            && err.contains("${GITHUB_TOKEN}"),
        "{err}"
    );
    assert!(!err.contains("ghp_live_secret"), "{err}");
    assert!(
        jobs.list(llmjobs::JobFilter::new())
            .await
            .unwrap()
            .is_empty()
    );
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_secret_reference_is_stored_as_written_and_sent_expanded() {
    // HOME stands in for a secret every test process already has in its environment.
    let home = std::env::var("HOME").unwrap();
    let mock = MockLlmServer::start().await.unwrap();
    let db = llmjobs_testkit::TempDb::new();
    let jobs = llmjobs::Jobs::builder()
        .url(db.url())
        .llm(mock.client_builder().build().unwrap())
        .open()
        .await
        .unwrap();
    let mut req = ChatRequest::new("openai/gpt-4o-mini").user("hi");
    req.mcp_config = Some(serde_json::json!({"mcpServers": {"gh": {
        "command": "gh-mcp", "env": {"GITHUB_TOKEN": "${HOME}"}}}}));
    let handle = jobs.spawn(llmjobs::llm::llm_call(req)).await.unwrap();
    handle.clone().wait().await.unwrap();
    let sent = &mock.requests()[0].body;
    assert_eq!(
        sent["mcp_config"]["mcpServers"]["gh"]["env"]["GITHUB_TOKEN"],
        home.as_str()
    );
    let inspector = llmjobs::Inspector::open(&db.url()).await.unwrap();
    let stored = inspector.job(handle.id()).await.unwrap();
    let args = serde_json::to_string(&stored.args).unwrap();
    assert!(args.contains("${HOME}"), "{args}");
    assert!(!args.contains("tok-from-env"), "{args}");
    jobs.shutdown().await;
}

/// A server that answers every request with `body` as JSON (a provider's canned answer).
async fn canned_server(body: serde_json::Value) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let body = body.to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = socket.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn tool_calls_of_both_providers_come_back_in_one_shape() {
    let openai = canned_server(serde_json::json!({
        "id": "chatcmpl-1", "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": null, "tool_calls": [{"id": "call_7", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5}
    }))
    .await;
    let anthropic = canned_server(serde_json::json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "stop_reason": "tool_use",
        "content": [{"type": "tool_use", "id": "call_7", "name": "get_weather",
            "input": {"city": "Paris"}}],
        "usage": {"input_tokens": 10, "output_tokens": 5}
    }))
    .await;
    let mut answers = Vec::new();
    for (model, url) in [("openai/gpt-4o", openai), ("anthropic/claude", anthropic)] {
        let client = MockLlmServer::client_builder_for(&url).build().unwrap();
        answers.push(
            client
                .chat(&ChatRequest::new(model).user("weather?"))
                .await
                .unwrap(),
        );
    }
    let [openai, anthropic] = [&answers[0], &answers[1]];
    assert_eq!(openai.calls, anthropic.calls);
    assert_eq!(openai.calls.len(), 1);
    let call = &openai.calls[0];
    assert_eq!(
        (call.id.as_str(), call.name.as_str()),
        ("call_7", "get_weather")
    );
    assert_eq!(call.arguments, serde_json::json!({"city": "Paris"}));
    assert_eq!(
        openai.tool_calls[0]["function"]["name"], "get_weather",
        "raw kept"
    );
    assert_eq!(
        anthropic.tool_calls[0]["input"]["city"], "Paris",
        "raw kept"
    );
}
