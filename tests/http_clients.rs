//! `POST /v1/chat/completions` and `GET /openapi.json` used by real client libraries: the
//! `openai` Python package (direct answers, 202 then polling, streaming, a wrong key) and
//! `openapi-spec-validator`, against a server on loopback whose upstream is the mock LLM
//! server. The Python scenarios are in tests/py/clients.py.
//!
//! They need a virtualenv with both packages: `.ci/run` makes one in `target/py-venv` (or set
//! `LLMJOBS_PY_VENV`). Without it the Python tests skip, unless `LLMJOBS_REQUIRE_PY=1` or the
//! venv was prepared by `.ci/run`: then they fail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use llmjobs::Jobs;
use llmjobs::http::HttpApi;
use llmjobs::llm::mock::{MockLlmServer, MockReply};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "test-token";

/// The API with a token (the OpenAI clients' API key), its jobs' LLM calls going to a mock.
struct Server {
    base: String,
    mock: MockLlmServer,
    _db: llmjobs_testkit::TempDb,
}

impl Server {
    async fn start() -> Server {
        Server::with(|api| api).await
    }

    async fn with(configure: impl FnOnce(HttpApi) -> HttpApi) -> Server {
        let mock = MockLlmServer::start().await.unwrap();
        let model = "gpt-4o-mini";
        mock.always_reply_matching(model, "fast question", MockReply::text("fast answer"));
        mock.always_reply_matching(
            model,
            "slow question",
            MockReply::text("slow answer").delayed(Duration::from_millis(1500)),
        );
        mock.always_reply_matching(
            model,
            "stream question",
            MockReply::text("a streamed answer in several words"),
        );
        let db = llmjobs_testkit::TempDb::new();
        let jobs = Jobs::builder()
            .url(db.url())
            .poll_interval(Duration::from_millis(20))
            .llm(mock.client_builder().build().unwrap())
            .open()
            .await
            .unwrap();
        let api = configure(HttpApi::new(jobs).token(TOKEN));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { api.serve_on(listener).await.unwrap() });
        Server {
            base,
            mock,
            _db: db,
        }
    }

    /// How many upstream requests carried `needle` in their prompt.
    fn upstream_calls(&self, needle: &str) -> usize {
        self.mock
            .requests()
            .iter()
            .filter(|r| r.body.to_string().contains(needle))
            .count()
    }

    async fn chat(
        &self,
        body: Value,
        token: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", self.base))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.json().await.unwrap())
    }
}

/// The virtualenv's Python, if it has the client libraries; `None` (skip) when it does not and
/// nothing requires it.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("LLMJOBS_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-venv"));
    let python = venv.join("bin/python");
    let required = std::env::var("LLMJOBS_REQUIRE_PY").is_ok_and(|v| v == "1")
        || venv.join(".llmjobs-ready").exists();
    let works = std::process::Command::new(&python)
        .args(["-c", "import openai, openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    match (works, required) {
        (true, _) => Some(python),
        (false, true) => panic!(
            "{} cannot import openai and openapi_spec_validator, and the Python client tests \
             are required (LLMJOBS_REQUIRE_PY=1, or .ci/run prepared the venv)",
            python.display()
        ),
        (false, false) => {
            eprintln!(
                "skipping: no Python with openai and openapi-spec-validator at {} \
                 (.ci/run makes it; LLMJOBS_REQUIRE_PY=1 makes this a failure)",
                python.display()
            );
            None
        }
    }
}

/// Runs a scenario of tests/py/clients.py against the server; its output on success.
async fn scenario(python: &Path, name: &str, server: &Server) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/clients.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .args([name, &server.base, TOKEN])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scenario {name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn an_openai_client_gets_an_answer_that_arrives_within_the_wait() {
    let Some(python) = python() else { return };
    let server = Server::start().await;
    scenario(&python, "direct", &server).await;
    assert_eq!(server.upstream_calls("fast question"), 1);
}

#[tokio::test]
async fn past_the_wait_an_openai_client_gets_202_and_polls_the_same_call_to_its_answer() {
    let Some(python) = python() else { return };
    let server = Server::start().await;
    let job = scenario(&python, "accepted", &server).await;
    assert!(!job.trim().is_empty(), "the scenario prints the job id");
    assert_eq!(
        server.upstream_calls("slow question"),
        1,
        "the wait running out did not send the call again"
    );
}

#[tokio::test]
async fn an_openai_client_streams_the_answer() {
    let Some(python) = python() else { return };
    let server = Server::start().await;
    scenario(&python, "stream", &server).await;
}

#[tokio::test]
async fn an_openai_client_with_the_wrong_key_gets_an_authentication_error() {
    let Some(python) = python() else { return };
    let server = Server::start().await;
    scenario(&python, "wrong_key", &server).await;
    assert_eq!(server.mock.request_count(), 0);
}

#[tokio::test]
async fn the_served_openapi_document_passes_a_real_validator() {
    let Some(python) = python() else { return };
    let server = Server::start().await;
    scenario(&python, "openapi_document", &server).await;
}

#[tokio::test]
async fn the_served_openapi_document_lists_every_route_and_names_the_mount_prefix() {
    let jobs = Jobs::open("sqlite::memory:").await.unwrap();
    let app = axum::Router::new().nest("/api", HttpApi::new(jobs).router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let doc: Value = reqwest::get(format!("{base}/api/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    assert_eq!(doc["servers"][0]["url"], "/api");
    for (method, path) in llmjobs::http::served_routes() {
        let method = method.as_str().to_ascii_lowercase();
        assert!(
            doc["paths"][path][&method].is_object(),
            "{method} {path} is served but not in the document"
        );
    }
}

#[tokio::test]
async fn a_max_model_goes_to_the_background_at_once() {
    let server = Server::start().await;
    let body = json!({"model": "max/text-generation", "messages": [{"role": "user", "content": "fast question"}]});
    let (status, headers, job) = server.chat(body, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap();
    assert_eq!(headers["location"], format!("/jobs/{id}").as_str());
    assert_eq!(headers["x-llmjobs-job-id"], id);
    assert_eq!(job["name"], "llmjobs.llm_call");
}

#[tokio::test]
async fn bad_requests_are_answered_in_openais_error_shape() {
    let server = Server::with(|api| api.body_limit(2048)).await;
    let (status, _, body) = server
        .chat(
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "model");

    let (status, _, body) = server
        .chat(
            json!({"model": "openai/gpt-4o-mini", "messages": [], "n": 3}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "n");

    let big = "x".repeat(4096);
    let (status, _, body) = server
        .chat(
            json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": big}]}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"]["message"].is_string(), "{body}");

    let (status, _, body) = server
        .chat(json!({"model": "openai/gpt-4o-mini", "messages": []}), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(server.mock.request_count(), 0, "nothing reached the model");
}

#[tokio::test]
async fn a_call_that_fails_within_the_wait_is_an_error_naming_its_job() {
    let server = Server::start().await;
    server.mock.push_reply_for(
        "gpt-4o-mini",
        MockReply::status(401, "Incorrect API key provided"),
    );
    let body =
        json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "doomed"}]});
    let (status, headers, body) = server.chat(body, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "job_failed");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("401"),
        "{body}"
    );
    assert!(body["error"]["job_id"].is_string(), "{body}");
    assert!(!headers.contains_key("location"));
}

#[tokio::test]
async fn a_chat_stream_with_no_output_for_the_idle_time_closes_naming_its_job() {
    let server = Server::with(|api| api.event_stream_idle(Duration::from_millis(300))).await;
    let body = json!({
        "model": "openai/gpt-4o-mini",
        "stream": true,
        "messages": [{"role": "user", "content": "slow question"}],
    });
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()["x-llmjobs-job-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("the idle stream closed")
        .unwrap();
    assert!(text.contains(r#""code":"stream_idle""#), "{text}");
    assert!(text.contains(&id), "the error names the job: {text}");
    assert!(!text.contains("[DONE]"), "{text}");
}
