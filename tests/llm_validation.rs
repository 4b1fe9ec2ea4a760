//! Validators with feedback retries, against the local mock server.

use std::sync::Mutex;
use std::time::Duration;

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{
    Attempt, AttemptRunner, BoxFuture, ChatRequest, ChatResponse, LlmClient, LlmError, RetryPolicy,
    Validator,
};

async fn setup() -> (MockLlmServer, LlmClient) {
    let mock = MockLlmServer::start().await.expect("mock server starts");
    let client = mock
        .client_builder()
        .retry(RetryPolicy::new().base_delay(Duration::from_millis(10)))
        .build()
        .expect("client builds");
    (mock, client)
}

fn json_request(model: &str) -> ChatRequest {
    ChatRequest::new(model)
        .user("Give me a JSON object with a 'status' field.")
        .json()
        .validate(Validator::JsonString)
        .validate(Validator::field_present("status"))
}

#[tokio::test]
async fn a_non_json_answer_is_retried_with_feedback_and_then_passes() {
    let (mock, client) = setup().await;
    mock.push_reply(MockReply::text("Sure! Here is your JSON: {status: ok}"));

    let answer = client
        .call(&json_request("openai/gpt-4o-mini"))
        .await
        .unwrap();
    assert_eq!(answer.attempts, 2);
    assert_eq!(
        answer.json::<serde_json::Value>().unwrap()["status"],
        "mock"
    );
    assert_eq!(mock.request_count(), 2);
    assert!(
        answer.total_usage.total() > answer.usage.total(),
        "both answers were paid for"
    );

    let second = &mock.requests()[1].body["messages"];
    let messages = second.as_array().unwrap();
    assert_eq!(
        messages.len(),
        3,
        "the question, the failed answer, the feedback"
    );
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(
        messages[1]["content"],
        "Sure! Here is your JSON: {status: ok}"
    );
    assert_eq!(messages[2]["role"], "user");
    let feedback = messages[2]["content"].as_str().unwrap();
    assert!(feedback.contains("not valid JSON"), "{feedback}");
}

#[tokio::test]
async fn a_stubborn_model_ends_as_needs_review() {
    let (mock, client) = setup().await;
    mock.always_reply_for("claude-haiku", MockReply::text("I will not write JSON."));

    let req = json_request("anthropic/claude-haiku").max_attempts(3);
    let err = client.call(&req).await.unwrap_err();
    let LlmError::NeedsReview {
        attempts,
        answer,
        feedback,
        ..
    } = &err
    else {
        panic!("expected NeedsReview, got {err}");
    };
    assert_eq!(*attempts, 3);
    assert_eq!(answer.text, "I will not write JSON.");
    assert!(
        feedback.iter().any(|f| f.contains("not valid JSON")),
        "{feedback:?}"
    );
    assert_eq!(mock.request_count(), 3);
    assert!(err.needs_review());
    assert!(
        err.into_job_error().is_permanent(),
        "paying for the same answers again will not help"
    );
}

#[tokio::test]
async fn an_empty_answer_fails_the_default_validator() {
    let (mock, client) = setup().await;
    mock.push_reply(MockReply::text("   "));
    let answer = client
        .call(&ChatRequest::new("openai/gpt-4o-mini").user("Say something"))
        .await
        .unwrap();
    assert_eq!(answer.attempts, 2);
    // An empty answer is not echoed back as an assistant turn (Anthropic rejects those).
    let retry = &mock.requests()[1].body["messages"];
    assert_eq!(retry.as_array().unwrap().len(), 2);
    assert!(retry[1]["content"].as_str().unwrap().contains("empty"));
}

#[tokio::test]
async fn default_validation_can_be_turned_off() {
    let (mock, client) = setup().await;
    mock.push_reply(MockReply::text(""));
    let req = ChatRequest::new("openai/gpt-4o-mini")
        .user("Say nothing")
        .default_validate(false);
    let answer = client.call(&req).await.unwrap();
    assert_eq!(answer.text, "");
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn an_agent_check_asks_a_second_model_with_the_answer_filled_in() {
    let (mock, client) = setup().await;
    mock.push_reply_for(
        "gpt-4o-mini",
        MockReply::text("def add(a, b): return a + b"),
    );
    let req = ChatRequest::new("openai/gpt-4o-mini")
        .user("Write add(a, b) in Python.")
        .validate(Validator::agent_task(
            "max/code_checker",
            r#"Is '{CODE_TO_VALIDATE}' valid? Respond JSON: {"validation_passed": <bool>, "reasoning": "<str>"}"#,
        ));
    let answer = client.call(&req).await.unwrap();
    assert_eq!(answer.text, "def add(a, b): return a + b");

    let check = mock
        .requests()
        .into_iter()
        .find(|r| r.model == "max/code_checker")
        .unwrap();
    let prompt = check.body["messages"][1]["content"].as_str().unwrap();
    assert_eq!(
        prompt,
        r#"Is 'def add(a, b): return a + b' valid? Respond JSON: {"validation_passed": <bool>, "reasoning": "<str>"}"#
    );
    assert_eq!(check.body["response_format"]["type"], "json_object");
}

#[tokio::test]
async fn a_rejecting_agent_check_feeds_its_reasoning_back() {
    let (mock, client) = setup().await;
    mock.push_reply_for(
        "max/strict_checker",
        MockReply::text(r#"{"validation_passed": false, "reasoning": "the colon is missing"}"#),
    );
    let req = ChatRequest::new("openai/gpt-4o-mini")
        .user("Write greet(name).")
        .validate(Validator::agent_task(
            "max/strict_checker",
            "Check: {answer}",
        ));
    let answer = client.call(&req).await.unwrap();
    assert_eq!(answer.attempts, 2);

    let answers: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.model == "gpt-4o-mini")
        .collect();
    let feedback = answers[1].body["messages"][2]["content"].as_str().unwrap();
    assert!(feedback.contains("the colon is missing"), "{feedback}");
}

/// Records each attempt's step name, as a job runtime journaling the attempts would.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl AttemptRunner for Recorder {
    fn run<'a>(&'a self, attempt: Attempt<'a>) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        self.0.lock().unwrap().push(attempt.info().step_name());
        Box::pin(attempt.send())
    }
}

#[tokio::test]
async fn every_http_attempt_goes_through_the_runner_with_a_stable_name() {
    let (mock, client) = setup().await;
    mock.push_reply_for("gpt-4o-mini", MockReply::server_error());
    mock.push_reply_for("gpt-4o-mini", MockReply::text("not json"));
    let req = ChatRequest::new("openai/gpt-4o-mini")
        .user("Give me a JSON object with a 'status' field.")
        .json()
        .validate(Validator::JsonString)
        .validate(Validator::agent_task("max/checker", "Is {answer} right?"));
    let recorder = Recorder::default();
    client.call_with(&req, &recorder, None).await.unwrap();
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            "answer-1/try-1",
            "answer-1/try-2",
            "answer-2/try-1",
            "check-2.2/try-1"
        ]
    );
}
