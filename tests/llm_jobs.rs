//! LLM calls inside durable jobs: journaled answers, the built-in `llm_call` job, background
//! routing.

use std::time::Duration;

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{ChatRequest, ChatResponse, llm_call};
use llmjobs::{JobFilter, JobState, Jobs, Outcome};
use llmjobs_testkit::{TempDb, WorkerProcess, read_lines, wait_until};

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");

#[tokio::test(flavor = "multi_thread")]
async fn a_job_killed_after_two_llm_calls_sends_only_the_third_on_restart() {
    let mock = MockLlmServer::start().await.unwrap();
    let db = TempDb::new();
    let log = db.file("llm.log");
    let (db_path, url) = (db.path(), mock.base_url());
    let first = WorkerProcess::start(
        WORKER,
        &[
            "llm3",
            db_path.to_str().unwrap(),
            log.to_str().unwrap(),
            &url,
        ],
    );
    wait_until(Duration::from_secs(60), "two answers journaled", || {
        read_lines(&log).iter().any(|l| l == "answered 2")
    });
    first.kill();
    assert_eq!(mock.request_count(), 2);

    let second = WorkerProcess::start(WORKER, &["run", db_path.to_str().unwrap(), &url]);
    assert!(second.wait(Duration::from_secs(60)).success());
    assert_eq!(
        mock.request_count(),
        3,
        "only the third call was sent again"
    );
    let bodies: Vec<String> = mock.requests().iter().map(|r| r.body.to_string()).collect();
    assert!(bodies[2].contains("question 3"), "{}", bodies[2]);

    let jobs = db.watcher().await;
    let all = jobs.list(JobFilter::new().limit(10)).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, JobState::Completed);
    let answers: Vec<String> = jobs.handle(all[0].id).wait().await.unwrap();
    assert_eq!(answers.len(), 3);
    jobs.shutdown().await;
}

async fn jobs_with(mock: &MockLlmServer, db: &TempDb) -> Jobs {
    Jobs::builder()
        .url(db.url())
        .llm(mock.client_builder().build().unwrap())
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn llm_call_with_timeout_keeps_the_same_request_going() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_delay(Duration::from_millis(600));
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let request = ChatRequest::new("openai/gpt-4o-mini").user("Tell me a short joke.");
    let outcome = jobs
        .run_with_timeout(llm_call(request), Duration::from_millis(100))
        .await
        .unwrap();
    let Outcome::Pending(handle) = outcome else {
        panic!("a 600 ms call cannot finish in 100 ms");
    };
    let response: ChatResponse = handle.wait().await.unwrap();
    assert!(!response.text.is_empty());
    assert!(response.usage.output_tokens > 0);
    assert_eq!(
        mock.request_count(),
        1,
        "the timeout did not send a second request"
    );
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_max_model_goes_straight_to_the_background() {
    let mock = MockLlmServer::start().await.unwrap();
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let request = ChatRequest::new("max/text-generation").user("Hello Claude");
    let outcome = jobs
        .run_with_timeout(llm_call(request), Duration::from_secs(30))
        .await
        .unwrap();
    let Outcome::Pending(handle) = outcome else {
        panic!("max/* calls are long-running");
    };
    assert!(!handle.wait().await.unwrap().text.is_empty());
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_401_fails_the_job_at_once_without_retrying() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply(MockReply::status(401, "Incorrect API key provided"));
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let request = ChatRequest::new("openai/gpt-4o-mini").user("hi");
    let handle = jobs.spawn(llm_call(request)).await.unwrap();
    let err = handle.wait().await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.attempts, 1);
    assert_eq!(mock.request_count(), 1);
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_stubborn_answer_fails_the_job_as_needing_review() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.always_reply_for("gpt-4o-mini", MockReply::Text("not json at all".into()));
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let request = ChatRequest::new("openai/gpt-4o-mini")
        .user("Give me JSON")
        .validate(llmjobs::llm::Validator::JsonString)
        .max_attempts(2);
    let handle = jobs.spawn(llm_call(request)).await.unwrap();
    let err = handle.wait().await.unwrap_err();
    assert!(matches!(err, llmjobs::Error::NeedsReview { .. }), "{err}");
    assert!(err.to_string().contains("fails validation"), "{err}");
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed, "never completed");
    assert!(status.needs_review);
    assert_eq!(
        status.attempts, 1,
        "not retried as a job: the feedback loop already ran"
    );
    assert_eq!(mock.request_count(), 2, "two answers, both rejected");
    jobs.shutdown().await;
}

#[tokio::test]
async fn configured_long_running_models_replace_the_default_patterns() {
    let mock = MockLlmServer::start().await.unwrap();
    let db = TempDb::new();
    let jobs = Jobs::builder()
        .url(db.url())
        .llm(mock.client_builder().build().unwrap())
        .long_running_models(["openai/gpt-4o*"])
        .open()
        .await
        .unwrap();
    let slow_model = ChatRequest::new("openai/gpt-4o-mini").user("hi");
    let outcome = jobs
        .run_with_timeout(llm_call(slow_model), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Pending(_)),
        "matches the configured pattern"
    );

    let proxy_model = ChatRequest::new("max/text-generation").user("hi");
    let outcome = jobs
        .run_with_timeout(llm_call(proxy_model), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Ready(_)),
        "max/* is no longer in the patterns"
    );
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_job_status_shows_its_llm_token_totals() {
    let mock = MockLlmServer::start().await.unwrap();
    let db = TempDb::new();
    let jobs = jobs_with(&mock, &db).await;
    let request = ChatRequest::new("openai/gpt-4o-mini").user("Summarize the sea in a line.");
    let handle = jobs.spawn(llm_call(request)).await.unwrap();
    let response = handle.clone().wait().await.unwrap();
    let progress: llmjobs::Progress =
        serde_json::from_value(handle.status().await.unwrap().progress.unwrap()).unwrap();
    assert_eq!(
        progress.input_tokens,
        Some(response.total_usage.input_tokens)
    );
    assert_eq!(
        progress.output_tokens,
        Some(response.total_usage.output_tokens)
    );
    assert!(response.total_usage.output_tokens > 0);
    assert_eq!(
        progress.partial_output.as_deref(),
        Some(response.text.as_str())
    );
    jobs.shutdown().await;
}
