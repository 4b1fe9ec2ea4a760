//! The original system's call configs (examples/data/seed_prompts.json) parse into
//! `ChatRequest`s and run as they are against the local mock server.

use std::time::Duration;

use llmjobs::llm::mock::MockLlmServer;
use llmjobs::llm::{
    ChatRequest, DEFAULT_LONG_RUNNING_PATTERNS, LlmError, ResponseFormat, RetryPolicy, Validator,
};
use serde_json::Value;

/// `(test_case_id, llm_config)` of every seed case.
fn seeds() -> Vec<(String, Value)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/data/seed_prompts.json"
    );
    let text = std::fs::read_to_string(path).expect("the seed file exists");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("the seed file is JSON");
    cases
        .into_iter()
        .map(|case| {
            let id = case["test_case_id"].as_str().unwrap().to_string();
            (id, case["llm_config"].clone())
        })
        .collect()
}

fn parse(id: &str, config: &Value) -> ChatRequest {
    ChatRequest::from_value(config.clone()).unwrap_or_else(|e| panic!("{id}: {e}"))
}

#[test]
fn every_seed_config_parses() {
    let seeds = seeds();
    assert_eq!(seeds.len(), 31);
    for (id, config) in &seeds {
        let req = parse(id, config);
        assert_eq!(req.model, config["model"], "{id}");
        assert!(!req.messages.is_empty(), "{id}: question or messages");
        let entries = config
            .get("validation")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        assert_eq!(req.validation.len(), entries, "{id}");
    }
}

#[test]
fn seed_configs_round_trip_through_serde() {
    for (id, config) in seeds() {
        let req = parse(&id, &config);
        let again: ChatRequest =
            serde_json::from_value(serde_json::to_value(&req).unwrap()).unwrap();
        assert_eq!(again, req, "{id}");
    }
}

#[test]
fn seed_details_are_interpreted() {
    let seeds = seeds();
    let by_id = |id: &str| {
        let (_, config) = seeds.iter().find(|(i, _)| i == id).unwrap();
        parse(id, config)
    };

    let simple = by_id("max_text_001_simple_question_string");
    assert_eq!(
        simple.messages[0].content.text(),
        "Hello Claude, how are you today?"
    );
    assert_eq!(simple.validators(), [Validator::ResponseNotEmpty]);
    assert!(simple.is_long_running(DEFAULT_LONG_RUNNING_PATTERNS));

    let no_validation = by_id("max_text_004_no_validation_explicit");
    assert!(no_validation.validators().is_empty());

    let retry = by_id("max_text_005_custom_retry");
    assert_eq!(retry.max_answer_attempts(), 2);
    assert_eq!(
        retry.retry_config.as_ref().unwrap().initial_delay,
        Some(0.5)
    );

    let json = by_id("openai_json_001_basic_json_request");
    assert_eq!(json.response_format, Some(ResponseFormat::JsonObject));
    assert_eq!(json.validation[2], Validator::field_present("name"));
    assert!(!json.is_long_running(DEFAULT_LONG_RUNNING_PATTERNS));

    let agent = by_id("agent_task_001_simple_command");
    assert!(
        agent.is_long_running(&[] as &[&str]),
        "agent checks go to the background"
    );
    assert_eq!(
        agent.original_user_prompt.as_deref(),
        Some("User asked to list files in /tmp.")
    );

    let image = by_id("openai_multimodal_001_image_description_local");
    assert_eq!(
        image.extra["image_directory"],
        "./src/llm_call/proof_of_concept/test_images_poc"
    );
}

#[tokio::test]
async fn every_seed_config_runs_against_the_mock_or_is_refused_by_its_route() {
    let mock = MockLlmServer::start().await.unwrap();
    let client = mock
        .client_builder()
        // The seeds also use Vertex AI models, which the original system reached via LiteLLM.
        .route_keeping_prefix("vertex_ai/", "openai")
        .retry(RetryPolicy::new().base_delay(Duration::from_millis(10)))
        .build()
        .unwrap();
    let mut refused = Vec::new();
    for (id, config) in seeds() {
        let mut req = parse(&id, &config);
        if let Some(retry) = req.retry_config.as_mut() {
            retry.initial_delay = Some(0.01);
        }
        match client.call(&req).await {
            Ok(answer) => assert!(!answer.text.is_empty() || !req.default_validate, "{id}"),
            Err(LlmError::Unsupported { .. }) => refused.push(id),
            Err(LlmError::NeedsReview { feedback, .. }) => {
                panic!("{id} needs review: {feedback:?}")
            }
            Err(e) => panic!("{id}: {e}"),
        }
    }
    assert_eq!(
        refused,
        [
            "max_multimodal_001_image_description_local",
            "max_multimodal_002_http_image",
            "max_text_006_only_system_prompt_error"
        ],
        "the Claude proxy route refuses images and prompts with no user message"
    );
    assert!(mock.request_count() >= 28);
}
