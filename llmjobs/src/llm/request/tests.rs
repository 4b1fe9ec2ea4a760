//! Tests of requests: the `llm_config` shape, content parts, validators, background rules.

use serde_json::json;

use super::*;

#[test]
fn question_becomes_a_trailing_user_message() {
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"}],
        "question": "why?"
    }))
    .unwrap();
    assert_eq!(req.messages.len(), 2);
    assert_eq!(req.messages[1], Message::user("why?"));
    assert!(
        serde_json::to_value(&req)
            .unwrap()
            .get("question")
            .is_none()
    );
}

#[test]
fn multi_part_content_and_unknown_parts_round_trip() {
    let value = json!({
        "role": "user",
        "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            {"type": "input_audio", "input_audio": {"data": "…"}}
        ]
    });
    let message: Message = serde_json::from_value(value.clone()).unwrap();
    let Content::Parts(parts) = &message.content else {
        panic!("parts expected")
    };
    assert_eq!(parts[0], ContentPart::text("look"));
    assert_eq!(parts[1], ContentPart::image_url("https://x/y.png"));
    assert!(matches!(parts[2], ContentPart::Other(_)));
    assert_eq!(serde_json::to_value(&message).unwrap(), value);
}

#[test]
fn null_content_is_empty_text() {
    let m: Message = serde_json::from_value(json!({"role": "assistant", "content": null})).unwrap();
    assert_eq!(m.content, Content::default());
}

#[test]
fn stop_accepts_a_string_or_a_list() {
    let one: ChatRequest = serde_json::from_value(json!({"model": "m", "stop": "END"})).unwrap();
    let many: ChatRequest =
        serde_json::from_value(json!({"model": "m", "stop": ["a", "b"]})).unwrap();
    assert_eq!(one.stop, ["END"]);
    assert_eq!(many.stop, ["a", "b"]);
}

#[test]
fn unknown_fields_are_kept_but_provider_options_are_separate() {
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "m",
        "image_directory": "./img",
        "extra_body": {"seed": 7}
    }))
    .unwrap();
    assert_eq!(req.extra["image_directory"], "./img");
    assert_eq!(req.provider_options["seed"], 7);
    let back = serde_json::to_value(&req).unwrap();
    assert_eq!(back["image_directory"], "./img");
    assert_eq!(back["provider_options"]["seed"], 7);
}

#[test]
fn default_validation_is_response_not_empty() {
    let req = ChatRequest::new("m").user("hi");
    assert_eq!(req.validators(), [Validator::ResponseNotEmpty]);
    let req = req.validate(Validator::JsonString).default_validate(false);
    assert_eq!(req.validators(), [Validator::JsonString]);
}

#[test]
fn long_running_by_pattern_flag_or_agent_validator() {
    let patterns = DEFAULT_LONG_RUNNING_PATTERNS;
    assert!(ChatRequest::new("max/text-generation").is_long_running(patterns));
    assert!(!ChatRequest::new("openai/gpt-4o").is_long_running(patterns));
    assert!(
        ChatRequest::new("openai/gpt-4o")
            .long_running(true)
            .is_long_running(patterns)
    );
    let agent = Validator::agent_task("max/checker", "Is {answer} fine?");
    assert!(
        ChatRequest::new("openai/gpt-4o")
            .validate(agent)
            .is_long_running(&[] as &[&str])
    );
}

#[test]
fn feedback_appends_the_failed_answer_and_the_reasons() {
    let req = ChatRequest::new("m").user("json please");
    let next = req.with_feedback("nope", &["answer is not valid JSON".into()]);
    assert_eq!(next.messages.len(), 3);
    assert_eq!(next.messages[1], Message::assistant("nope"));
    assert!(next.messages[2].content.text().contains("not valid JSON"));
}

#[test]
fn from_value_names_the_bad_field() {
    let err = ChatRequest::from_value(json!({"model": "m", "max_tokens": "many"}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_tokens"), "{err}");
}
