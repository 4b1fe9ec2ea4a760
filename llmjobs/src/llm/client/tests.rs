//! Tests of the client: configuration from the environment, and calls that need no server.

use std::collections::HashMap;

use super::*;

#[test]
fn the_environment_configures_providers() {
    let vars: HashMap<&str, &str> = [
        ("OPENAI_API_KEY", "sk-test"),
        ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
        ("LLMJOBS_MAX_BASE_URL", "http://127.0.0.1:3010/v1"),
    ]
    .into();
    let client = LlmClientBuilder::new()
        .with_vars(|k| vars.get(k).map(|v| v.to_string()))
        .build()
        .unwrap();
    let openai = &client.inner.router.providers["openai"];
    assert_eq!(openai.base_url, "http://127.0.0.1:9/v1");
    assert_eq!(openai.api_key.as_ref().unwrap().expose(), "sk-test");
    assert_eq!(client.provider_for("max/agent").unwrap(), "max");
    assert!(!format!("{client:?}").contains("sk-test"));
}

#[test]
fn configuring_an_unknown_provider_fails_the_build() {
    let err = LlmClient::builder()
        .api_key("nope", "k")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("nope"));
}

#[tokio::test]
async fn a_missing_required_key_fails_before_sending() {
    let client = LlmClient::builder().build().unwrap();
    let err = client
        .chat(&ChatRequest::new("openai/gpt-4o").user("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::MissingApiKey { .. }), "{err}");
    assert!(err.to_string().contains("OPENAI_API_KEY"));
}

#[tokio::test]
async fn meta_task_models_answer_with_the_given_text() {
    let client = LlmClient::builder().build().unwrap();
    let req = ChatRequest::new("meta-task/check").assistant("Some output.");
    let answer = client.chat(&req).await.unwrap();
    assert_eq!(answer.text, "Some output.");
    assert_eq!(answer.provider, "meta-task");
}
