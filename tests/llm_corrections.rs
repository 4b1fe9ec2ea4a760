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
