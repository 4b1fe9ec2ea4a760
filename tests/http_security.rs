//! The HTTP job API's defences, over real HTTP on loopback: changes need a token unless
//! explicitly opened, secrets are redacted in every response, event streams are bounded in
//! number and idle time, and a reconnect with `Last-Event-ID` gets what it missed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use llmjobs::http::HttpApi;
use llmjobs::{JobContext, JobError, Jobs, llm_job};
use llmjobs_testkit::http::{TestServer, id_of, read_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Answers with secrets in its result, at the top and nested.
#[llm_job]
async fn leaky(user: String) -> Result<Value, JobError> {
    Ok(json!({
        "user": user,
        "api_key": "sk-live-123",
        "config": {"Authorization": "Bearer abc", "db": {"password": "hunter2"}},
        "calls": [{"openai_api_key": "sk-2", "max_tokens": 5}],
    }))
}

/// Gates the `held` job waits on, by name.
static OPEN_GATES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn open_gate(gate: &str) {
    OPEN_GATES.lock().unwrap().push(gate.to_string());
}

/// Reports progress once (if `report`), then runs until its gate opens.
#[llm_job]
async fn held(ctx: JobContext, gate: String, report: bool) -> Result<String, JobError> {
    if report {
        ctx.progress(0.5, "halfway").await;
    }
    while !OPEN_GATES.lock().unwrap().contains(&gate) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(format!("{gate} done"))
}

/// What these tests ask of a server beyond the test kit's.
trait Streams {
    async fn events(&self, id: &str, last_event_id: Option<&str>) -> reqwest::Response;
    /// Polls the job until `ready` holds of it.
    async fn job_until(&self, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value;
}

impl Streams for TestServer {
    async fn events(&self, id: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url(&format!("/jobs/{id}/events")));
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        request.send().await.unwrap()
    }

    /// Polls the job until `ready` holds of it.
    async fn job_until(&self, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, job) = self.get(&format!("/jobs/{id}")).await;
            if ready(&job) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The events of a stream's text: (id, event, data).
fn events_of(text: &str) -> Vec<(String, String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim_start().to_string())
            };
            Some((field("id:")?, field("event:")?, field("data:")?))
        })
        .collect()
}

#[tokio::test]
async fn without_a_token_changes_are_refused_with_how_to_configure_one() {
    let server = TestServer::with(|api| api.no_token()).await;
    let (status, body) = server.post("/jobs/leaky", json!({"user": "ann"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("LLMJOBS_HTTP_TOKEN"), "{message}");
    assert!(
        message.contains("allow_unauthenticated_changes"),
        "{message}"
    );
    let (status, _) = server.get("/jobs").await;
    assert_eq!(status, StatusCode::OK, "reads on loopback stay open");
    let (_, page) = server.get("/jobs").await;
    assert_eq!(page["jobs"], json!([]), "nothing was submitted");
}

#[tokio::test]
async fn allow_unauthenticated_changes_opens_them_but_a_token_still_wins() {
    let open = TestServer::open().await;
    let (status, _) = open
        .post("/jobs/leaky?wait=10s", json!({"user": "ann"}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let guarded = TestServer::with(|api| api.token("s3cret").allow_unauthenticated_changes()).await;
    let (status, _) = guarded.post("/jobs/leaky", json!({"user": "ann"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn secret_fields_are_redacted_in_every_response() {
    let server = TestServer::open().await;
    let (status, done) = server
        .post("/jobs/leaky?wait=10s", json!({"user": "ann"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = id_of(&done);
    let (_, shown) = server.get(&format!("/jobs/{id}")).await;
    let (_, waited) = server.get(&format!("/jobs/{id}/wait?timeout=1s")).await;
    let mut stream = String::new();
    let mut response = server.events(&id, None).await;
    read_until(&mut response, &mut stream, "event: end").await;
    let (_, _, end) = events_of(&stream)
        .into_iter()
        .find(|(_, event, _)| event == "end")
        .expect("the end");
    let end: Value = serde_json::from_str(&end).unwrap();
    for job in [&done, &shown, &waited, &end] {
        let result = &job["result"];
        assert_eq!(result["user"], "ann", "{job}");
        assert_eq!(result["api_key"], "[redacted]", "{job}");
        assert_eq!(result["config"]["Authorization"], "[redacted]", "{job}");
        assert_eq!(result["config"]["db"]["password"], "[redacted]", "{job}");
        assert_eq!(result["calls"][0]["openai_api_key"], "[redacted]", "{job}");
        assert_eq!(result["calls"][0]["max_tokens"], 5, "{job}");
        let text = job.to_string();
        for secret in ["sk-live-123", "hunter2", "sk-2", "Bearer abc"] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
    }
}

#[tokio::test]
async fn the_redacted_fields_are_configurable() {
    let server = TestServer::with(|api| {
        api.no_token()
            .allow_unauthenticated_changes()
            .redact_fields(["user"])
    })
    .await;
    let (_, done) = server
        .post("/jobs/leaky?wait=10s", json!({"user": "ann"}))
        .await;
    assert_eq!(done["result"]["user"], "[redacted]");
    assert_eq!(
        done["result"]["api_key"], "sk-live-123",
        "the list replaces the defaults"
    );
}

#[tokio::test]
async fn event_streams_past_the_limit_are_503_until_one_closes() {
    let server = TestServer::with(|api| {
        api.no_token()
            .allow_unauthenticated_changes()
            .max_event_streams(1)
    })
    .await;
    let (_, job) = server
        .post("/jobs/held", json!({"gate": "limit", "report": false}))
        .await;
    let id = id_of(&job);
    let first = server.events(&id, None).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = server.events(&id, None).await;
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.headers().contains_key("retry-after"));
    let body: Value = second.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("too many"),
        "{body}"
    );

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let again = server.events(&id, None).await;
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open_gate("limit");
}

#[tokio::test]
async fn an_idle_event_stream_closes() {
    let server = TestServer::with(|api| {
        api.no_token()
            .allow_unauthenticated_changes()
            .event_stream_idle(Duration::from_millis(300))
    })
    .await;
    let (_, job) = server
        .post("/jobs/held", json!({"gate": "idle", "report": false}))
        .await;
    let mut response = server.events(&id_of(&job), None).await;
    let mut seen = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle stream stayed open: {seen}");
    assert!(seen.contains("event: status"), "{seen}");
    assert!(
        !seen.contains("event: end"),
        "the job is still running: {seen}"
    );
    open_gate("idle");
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_the_latest_progress_and_the_end() {
    let server = TestServer::open().await;
    let (_, job) = server
        .post("/jobs/held", json!({"gate": "resume", "report": true}))
        .await;
    let id = id_of(&job);
    server
        .job_until(&id, "the progress report", |job| {
            job["progress"].is_object()
        })
        .await;

    let mut response = server.events(&id, Some("7")).await;
    let mut seen = String::new();
    read_until(&mut response, &mut seen, "event: progress").await;
    open_gate("resume");
    read_until(&mut response, &mut seen, "event: end").await;
    let events = events_of(&seen);
    let (ids, kinds): (Vec<&str>, Vec<&str>) = events
        .iter()
        .map(|(id, kind, _)| (id.as_str(), kind.as_str()))
        .unzip();
    assert_eq!(ids, ["8", "9", "10"], "{seen}");
    assert_eq!(kinds, ["status", "progress", "end"], "{seen}");
    assert!(events[1].2.contains("halfway"), "{seen}");
    assert!(events[2].2.contains(r#""result":"resume done""#), "{seen}");
}

#[tokio::test]
async fn a_reconnect_after_the_job_ended_gets_the_outcome() {
    let server = TestServer::open().await;
    let (_, job) = server
        .post("/jobs/held", json!({"gate": "after", "report": true}))
        .await;
    let id = id_of(&job);
    open_gate("after");
    server
        .job_until(&id, "the job to complete", |job| {
            job["state"] == "completed"
        })
        .await;
    let text = server.events(&id, Some("3")).await.text().await.unwrap();
    let events = events_of(&text);
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|(id, kind, _)| (id.as_str(), kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("4", "status"), ("5", "progress"), ("6", "end")],
        "{text}"
    );
    assert!(events[2].2.contains(r#""result":"after done""#), "{text}");
}

#[tokio::test]
async fn it_listens_on_loopback_unless_told_otherwise() {
    assert!(llmjobs::http::DEFAULT_ADDR.ip().is_loopback());
    let jobs = Jobs::open("sqlite::memory:").await.unwrap();
    let api = format!("{:?}", HttpApi::new(jobs));
    assert!(api.contains("addr: 127.0.0.1:8787"), "{api}");
}
