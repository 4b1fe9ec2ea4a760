//! Staged escalation, as the original retry loop did it: feedback retries, tool-assisted
//! retries past `max_attempts_before_tool_use`, human review past `max_attempts_before_human`.

use std::time::Duration;

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{ChatRequest, LlmClient, LlmError, RetryPolicy, Stage, llm_call};
use llmjobs::{JobState, Jobs};
use llmjobs_testkit::TempDb;
use serde_json::{Value, json};

async fn setup() -> (MockLlmServer, LlmClient) {
    let mock = MockLlmServer::start().await.unwrap();
    let client = mock
        .client_builder()
        .retry(RetryPolicy::new().base_delay(Duration::from_millis(10)))
        .build()
        .unwrap();
    (mock, client)
}

fn staged_request() -> ChatRequest {
    ChatRequest::from_value(json!({
        "model": "max/coder",
        "question": "Write greet(name) as JSON.",
        "response_format": {"type": "json_object"},
        "validation": [{"type": "json_string"}],
        "retry_config": {"max_attempts": 3},
        "max_attempts_before_tool_use": 1,
        "debug_tool_name": "perplexity-ask",
        "debug_tool_mcp_config": {"mcpServers": {"perplexity-ask": {"command": "node"}}},
        "original_user_prompt": "Write the greet function."
    }))
    .unwrap()
}

fn last_message(body: &Value) -> String {
    let messages = body["messages"].as_array().unwrap();
    messages.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_retry_past_the_tool_threshold_carries_the_debug_tool() {
    let (mock, client) = setup().await;
    mock.push_reply_for("max/coder", MockReply::text("deff greet(name)"));

    let answer = client.call(&staged_request()).await.unwrap();
    assert_eq!(answer.attempts, 2);
    assert_eq!(answer.stage, Stage::ToolAssisted);

    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[0].body.get("mcp_config").is_none(),
        "the first answer is not tool-assisted"
    );
    assert_eq!(
        requests[1].body["mcp_config"],
        json!({"mcpServers": {"perplexity-ask": {"command": "node"}}})
    );
    let feedback = last_message(&requests[1].body);
    assert!(feedback.contains("not valid JSON"), "{feedback}");
    assert!(feedback.contains("'perplexity-ask' tool"), "{feedback}");
    assert!(
        feedback.contains("The original request was: Write the greet function."),
        "{feedback}"
    );
    for request in &requests {
        for key in [
            "max_attempts_before_tool_use",
            "debug_tool_name",
            "debug_tool_mcp_config",
            "original_user_prompt",
            "retry_config",
        ] {
            assert!(request.body.get(key).is_none(), "{key} was sent");
        }
    }
}

#[tokio::test]
async fn the_human_threshold_ends_the_call_as_needing_review_before_max_attempts() {
    let (mock, client) = setup().await;
    mock.always_reply_for("max/coder", MockReply::text("still not json"));
    let mut req = staged_request();
    req.max_attempts_before_human = Some(2);

    let err = client.call(&req).await.unwrap_err();
    let LlmError::NeedsReview { attempts, .. } = err else {
        panic!("needs review expected: {err}");
    };
    assert_eq!(attempts, 2);
    assert_eq!(mock.request_count(), 2, "no third answer was paid for");
}

#[tokio::test]
async fn each_stage_is_in_the_jobs_progress_and_journal_and_review_is_never_completed() {
    let (mock, client) = setup().await;
    mock.always_reply_for("max/coder", MockReply::text("still not json"));
    let db = TempDb::new();
    let jobs = Jobs::builder()
        .url(db.url())
        .llm(client)
        .open()
        .await
        .unwrap();
    let handle = jobs.spawn(llm_call(staged_request())).await.unwrap();
    let err = handle.clone().wait().await.unwrap_err();
    assert!(matches!(err, llmjobs::Error::NeedsReview { .. }), "{err}");

    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed, "never completed");
    assert!(status.needs_review);
    let progress: llmjobs::Progress = serde_json::from_value(status.progress.unwrap()).unwrap();
    assert_eq!(progress.stage.as_deref(), Some("human-review"));
    assert!(
        progress.output_tokens.unwrap() > 0,
        "the answers' tokens count"
    );
    jobs.shutdown().await;

    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let mut statement = conn
        .prepare("SELECT name FROM llmjobs_steps ORDER BY seq")
        .unwrap();
    let steps: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        steps,
        [
            "llm answer-1",
            "llm answer-2 tool-assisted",
            "llm answer-3 tool-assisted",
            "llm human-review"
        ]
    );
}
