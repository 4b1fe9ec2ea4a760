//! Fallback chains: `ChatRequest::fallbacks` lets the next model answer when one is
//! rate-limited past its patience, overloaded or down, and never when the request is at fault.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{ChatRequest, ChatResponse, LlmClient, LlmError, RetryPolicy, llm_call};
use llmjobs::{JobContext, JobError, JobState, Jobs, llm_job};
use llmjobs_testkit::TempDb;

fn client(mock: &MockLlmServer) -> LlmClient {
    mock.client_builder()
        .retry(
            RetryPolicy::new()
                .max_retries(1)
                .base_delay(Duration::from_millis(10)),
        )
        .build()
        .unwrap()
}

fn chained() -> ChatRequest {
    ChatRequest::new("openai/primary")
        .user("hi")
        .fallbacks(["anthropic/second", "openai/third"])
}

#[tokio::test]
async fn an_overloaded_model_falls_through_to_the_next() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_for("primary", MockReply::status(529, "Overloaded"));
    mock.always_reply_for("second", MockReply::status(503, "Service unavailable"));
    mock.always_reply_for("third", MockReply::text("from the third"));
    let answer = client(&mock).call(&chained()).await.unwrap();
    assert_eq!(answer.text, "from the third");
    assert_eq!(answer.fallback_model.as_deref(), Some("openai/third"));
    let trail: Vec<(&str, Option<u16>)> = answer
        .fallback_trail
        .iter()
        .map(|s| (s.model.as_str(), s.status))
        .collect();
    assert_eq!(
        trail,
        [
            ("openai/primary", Some(529)),
            ("anthropic/second", Some(503))
        ]
    );
    assert!(answer.fallback_trail[0].reason.contains("Overloaded"));
    assert_eq!(mock.request_count(), 5, "two tries each, then the third");
}

#[tokio::test]
async fn a_rate_limit_longer_than_the_patience_falls_through_at_once() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_for("primary", MockReply::rate_limited(120));
    mock.always_reply_for("second", MockReply::text("second answers"));
    let req = chained().fallback_patience(Duration::from_secs(5));
    let answer = client(&mock).call(&req).await.unwrap();
    assert_eq!(answer.text, "second answers");
    assert_eq!(answer.fallback_trail[0].status, Some(429));
    assert_eq!(mock.request_count(), 2, "the 429 was not retried");
}

#[tokio::test]
async fn a_connection_error_falls_through() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_for("primary", MockReply::DropConnection);
    mock.always_reply_for("second", MockReply::text("still here"));
    let answer = client(&mock).call(&chained()).await.unwrap();
    assert_eq!(answer.text, "still here");
    assert!(
        answer.fallback_trail[0].reason.contains("transport error"),
        "{:?}",
        answer.fallback_trail
    );
}

#[tokio::test]
async fn errors_of_the_request_itself_do_not_fall_through() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_for(
        "primary",
        MockReply::status(400, "Invalid value for `messages`"),
    );
    let err = client(&mock).call(&chained()).await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(mock.request_count(), 1);

    mock.clear_requests();
    mock.always_reply_for(
        "primary",
        MockReply::status(400, "This model's maximum context length is 8192 tokens"),
    );
    let err = client(&mock).call(&chained()).await.unwrap_err();
    assert!(matches!(err, LlmError::ContextLength { .. }), "{err}");
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn when_every_model_fails_the_last_error_is_returned() {
    let mock = MockLlmServer::start().await.unwrap();
    for model in ["primary", "second", "third"] {
        mock.always_reply_for(model, MockReply::status(529, "Overloaded"));
    }
    let err = client(&mock).call(&chained()).await.unwrap_err();
    assert_eq!(err.status(), Some(529));
    assert!(err.to_string().contains("openai/third"), "{err}");
}

#[test]
fn fallbacks_deserialize_from_a_config() {
    let req: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "openai/a", "question": "q", "fallbacks": ["openai/b"], "fallback_patience": 2
    }))
    .unwrap();
    assert_eq!(req.fallbacks, ["openai/b"]);
    assert_eq!(req.fallback_patience, Some(2.0));
    let single: ChatRequest = serde_json::from_value(
        serde_json::json!({"model": "openai/a", "question": "q", "fallbacks": "openai/b"}),
    )
    .unwrap();
    assert_eq!(single.fallbacks, ["openai/b"]);
}

async fn jobs_with(mock: &MockLlmServer, db: &TempDb) -> Jobs {
    Jobs::builder()
        .url(db.url())
        .backoff(llmjobs::Backoff {
            base: Duration::from_millis(10),
            factor: 2.0,
            cap: Duration::from_millis(50),
        })
        .llm(client(mock))
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_journal_and_status_say_which_model_answered_and_why() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_for("primary", MockReply::status(529, "Overloaded"));
    mock.always_reply_for("second", MockReply::text("fallback answer"));
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let handle = jobs.spawn(llm_call(chained())).await.unwrap();
    let answer: ChatResponse = handle.clone().wait().await.unwrap();
    assert_eq!(answer.fallback_model.as_deref(), Some("anthropic/second"));
    let inspector = llmjobs::Inspector::open(&db.url()).await.unwrap();
    let steps: Vec<String> = inspector
        .steps(handle.id())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(steps, ["llm answer-1", "llm fallback anthropic/second"]);
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Completed);
    let progress: llmjobs::Progress = serde_json::from_value(status.progress.unwrap()).unwrap();
    let message = progress.message.unwrap();
    assert!(
        message.contains(
            "answered by fallback anthropic/second (openai/primary: gave up after 2 tries: HTTP 529"
        ),
        "{message}"
    );
    jobs.shutdown().await;
}

static ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// Asks a chained model, then fails its first attempt after the answer was journaled.
#[llm_job(retries = 2)]
async fn ask_then_crash(ctx: JobContext, model: String) -> Result<String, JobError> {
    let req = ChatRequest::new(model)
        .user("hi")
        .fallbacks(["anthropic/second"]);
    let answer = ctx.llm().call(&req).await?;
    if ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(JobError::msg("crashed after the answer"));
    }
    Ok(answer.text)
}

#[tokio::test]
async fn a_resumed_job_replays_the_fallback_answer_without_asking_again() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_for("primary", MockReply::status(503, "Unavailable"));
    mock.always_reply_for("second", MockReply::text("paid once"));
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let handle = jobs
        .spawn(ask_then_crash("openai/primary".into()))
        .await
        .unwrap();
    assert_eq!(handle.wait().await.unwrap(), "paid once");
    assert_eq!(ATTEMPTS.load(Ordering::SeqCst), 2);
    let second = mock
        .requests()
        .iter()
        .filter(|r| r.body.to_string().contains("\"second\""))
        .count();
    assert_eq!(
        second, 1,
        "the fallback's answer was replayed, not bought again"
    );
    assert_eq!(
        mock.request_count(),
        3,
        "two tries of the primary, one of the fallback"
    );
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_stream_broken_by_one_model_starts_over_with_the_next() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_for("primary", MockReply::ResetMidStream);
    mock.always_reply_for("second", MockReply::text("a clean answer"));
    let mut text = String::new();
    let mut attempts = Vec::new();
    let no_retries = mock
        .client_builder()
        .retry(RetryPolicy::no_retries())
        .build()
        .unwrap();
    let answer = no_retries
        .call_stream(&chained(), |event| {
            if attempts.last() != Some(&event.attempt) {
                attempts.push(event.attempt);
                text.clear();
            }
            text.push_str(&event.delta_text);
        })
        .await
        .unwrap();
    assert_eq!(answer.text, "a clean answer");
    assert_eq!(
        text, "a clean answer",
        "the broken model's text was dropped"
    );
    assert_eq!(attempts, [1, 2], "one broken try, then the fallback's");
}
