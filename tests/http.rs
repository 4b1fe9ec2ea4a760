//! The HTTP job API (`llmjobs::http`), called over real HTTP on loopback the way any client
//! would: every route's status codes and bodies, the 202-then-poll flow, bad input, auth, SSE.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use llmjobs::http::HttpApi;
use llmjobs::{Error, JobContext, JobError, JobState, Jobs, llm_job};
use llmjobs_testkit::http::{TestServer, id_of, read_until, send};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[llm_job]
async fn add(a: i64, b: i64) -> Result<i64, JobError> {
    Ok(a + b)
}

/// Gates the `gated` and `reporting` jobs hold on, by name: open once the test says so.
static OPEN_GATES: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// How many attempts started, by gate.
static STARTS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn open_gate(gate: &str) {
    OPEN_GATES.lock().unwrap().push(gate.to_string());
}

fn starts(gate: &str) -> u32 {
    STARTS
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|s| s.get(gate).copied())
        .unwrap_or(0)
}

/// Waits for `gate` to open, reporting progress each turn if given a context.
async fn held_at(gate: &str, reporter: Option<&JobContext>) {
    *STARTS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(gate.to_string())
        .or_default() += 1;
    while !OPEN_GATES.lock().unwrap().iter().any(|g| g == gate) {
        if let Some(ctx) = reporter {
            ctx.progress(0.5, "halfway").await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs until its gate opens; says which attempt finished it.
#[llm_job]
async fn gated(ctx: JobContext, gate: String) -> Result<String, JobError> {
    held_at(&gate, None).await;
    Ok(format!("{gate}: attempt {}", ctx.attempt()))
}

/// Reports progress until its gate opens.
#[llm_job]
async fn reporting(ctx: JobContext, gate: String) -> Result<String, JobError> {
    held_at(&gate, Some(&ctx)).await;
    Ok("done".into())
}

#[llm_job]
async fn refuses() -> Result<(), JobError> {
    Err(JobError::permanent(JobError::msg("no, never")))
}

#[tokio::test]
async fn submit_that_ends_within_the_wait_answers_200_with_the_result() {
    let server = TestServer::open().await;
    let response = server
        .client
        .post(server.url("/jobs/add?wait=30s"))
        .json(&json!({"a": 2, "b": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let location = response.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "completed");
    assert_eq!(body["result"], 5);
    assert_eq!(location, format!("/jobs/{}", id_of(&body)));
}

#[tokio::test]
async fn submit_past_the_wait_answers_202_and_the_same_attempt_finishes() {
    let server = TestServer::open().await;
    let response = server
        .client
        .post(server.url("/jobs/gated?wait=100ms"))
        .json(&json!({"gate": "poll"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    let id = id_of(&body);
    assert_eq!(location, format!("/jobs/{id}"));
    assert!(body["result"].is_null());

    let (status, polled) = server.get(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        polled["state"], "running",
        "the attempt goes on past the wait"
    );

    let (status, _) = server.get(&format!("/jobs/{id}/wait?timeout=50ms")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "still running at the timeout");

    open_gate("poll");
    let (status, done) = server.get(&format!("/jobs/{id}/wait?timeout=30s")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"], "poll: attempt 1");
    assert_eq!(done["attempts"], 1);
    assert_eq!(starts("poll"), 1, "the job ran once: nothing restarted it");

    let (status, shown) = server.get(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["result"], "poll: attempt 1");
}

#[tokio::test]
async fn submit_without_a_wait_answers_202_at_once() {
    let server = TestServer::open().await;
    let (status, body) = server.post("/jobs/gated", json!({"gate": "no-wait"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    open_gate("no-wait");
    let (status, done) = server
        .get(&format!("/jobs/{}/wait?timeout=30s", id_of(&body)))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["result"], "no-wait: attempt 1");
}

#[tokio::test]
async fn unknown_job_name_is_404_naming_the_known_ones() {
    let server = TestServer::open().await;
    let (status, body) = server.post("/jobs/nope", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("`nope`"), "{error}");
    assert!(error.contains("add") && error.contains("gated"), "{error}");
    assert!(body["known"].as_array().unwrap().contains(&json!("add")));
}

#[tokio::test]
async fn arguments_that_do_not_deserialize_are_422_with_the_field_path() {
    let server = TestServer::open().await;
    let (status, body) = server
        .post("/jobs/add?wait=1s", json!({"a": 1, "b": "x"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["path"], "b");
    assert!(
        body["error"].as_str().unwrap().contains("field `b`"),
        "{body}"
    );

    let (status, body) = server.post("/jobs/add", json!({"a": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"].as_str().unwrap().contains("`b`"), "{body}");

    let (status, list) = server.get("/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["jobs"], json!([]), "nothing was spawned");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_400() {
    let server = TestServer::open().await;
    let (status, body) = send(server.client.post(server.url("/jobs/add")).body("{a: 1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("not JSON"),
        "{body}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let server = TestServer::with(|api| {
        api.no_token()
            .allow_unauthenticated_changes()
            .body_limit(1024)
    })
    .await;
    let big = json!({"gate": "x".repeat(2000)});
    let (status, body) = server.post("/jobs/gated", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn idempotency_key_header_returns_the_same_job() {
    let server = TestServer::open().await;
    let submit = |args: Value| {
        send(
            server
                .client
                .post(server.url("/jobs/add?wait=10s"))
                .header("Idempotency-Key", "order-42")
                .json(&args),
        )
    };
    let (status, first) = submit(json!({"a": 1, "b": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, second) = submit(json!({"a": 1, "b": 1})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(id_of(&first), id_of(&second));
    assert_eq!(second["idempotency_key"], "order-42");

    let (status, body) = submit(json!({"a": 5, "b": 5})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("order-42"));
}

#[tokio::test]
async fn get_of_a_missing_job_is_404_and_of_a_bad_id_400() {
    let server = TestServer::open().await;
    let (status, body) = server
        .get("/jobs/0190b5a4-7f00-7000-8000-000000000000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().contains("not found"),
        "{body}"
    );
    let (status, _) = server.get("/jobs/not-an-id").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.get("/jobs/not-an-id/wait").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.get("/nothing/here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn list_filters_by_state_and_name_and_pages_with_the_cursor() {
    let server = TestServer::open().await;
    let mut ids = Vec::new();
    for a in 0..3 {
        let (status, body) = server
            .post("/jobs/add?wait=10s", json!({"a": a, "b": 0}))
            .await;
        assert_eq!(status, StatusCode::OK);
        ids.push(id_of(&body));
    }
    let (_, running) = server.post("/jobs/gated", json!({"gate": "list"})).await;

    let (status, page) = server.get("/jobs?name=add&limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<String> = page["jobs"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(listed, [ids[2].clone(), ids[1].clone()], "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = server
        .get(&format!("/jobs?name=add&limit=2&cursor={cursor}"))
        .await;
    let listed: Vec<String> = rest["jobs"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(listed, [ids[0].clone()]);
    assert!(rest["next_cursor"].is_null());

    let (_, completed) = server.get("/jobs?state=completed").await;
    assert_eq!(completed["jobs"].as_array().unwrap().len(), 3);
    let (_, not_done) = server.get("/jobs?state=running").await;
    let not_done: Vec<String> = not_done["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(not_done, [id_of(&running)]);

    let (status, body) = server.get("/jobs?state=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("done"));
    let (status, _) = server.get("/jobs?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    open_gate("list");
}

#[tokio::test]
async fn delete_cancels_a_running_job() {
    let server = TestServer::open().await;
    let (_, body) = server
        .post("/jobs/gated?wait=50ms", json!({"gate": "never"}))
        .await;
    let id = id_of(&body);
    let (status, cancel) = server.delete(&format!("/jobs/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancel}");
    assert_eq!(cancel["cancel"], "requested");
    let (status, ended) = server.get(&format!("/jobs/{id}/wait?timeout=30s")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ended["state"], "cancelled");

    let (status, again) = server.delete(&format!("/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["cancel"], "already_finished");
    let (status, _) = server
        .delete("/jobs/0190b5a4-7f00-7000-8000-000000000000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn retry_puts_a_failed_job_back_and_refuses_a_completed_one() {
    let server = TestServer::open().await;
    let (status, failed) = server.post("/jobs/refuses?wait=30s", json!({})).await;
    assert_eq!(status, StatusCode::OK, "it ended within the wait");
    assert_eq!(failed["state"], "failed");
    assert!(failed["error"].as_str().unwrap().contains("no, never"));
    let id = id_of(&failed);

    let (status, retried) =
        send(server.client.post(server.url(&format!("/jobs/{id}/retry")))).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_ne!(retried["state"], "failed");
    let (_, ended) = server.get(&format!("/jobs/{id}/wait?timeout=30s")).await;
    assert_eq!(ended["state"], "failed");
    assert_eq!(ended["attempts"], 1, "a fresh attempt budget");

    let (_, done) = server
        .post("/jobs/add?wait=10s", json!({"a": 1, "b": 2}))
        .await;
    let (status, body) = send(
        server
            .client
            .post(server.url(&format!("/jobs/{}/retry", id_of(&done)))),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("completed"));
}

#[tokio::test]
async fn with_a_token_mutating_routes_need_it_and_reads_do_not() {
    let server = TestServer::with(|api| api.token("s3cret")).await;
    let (status, body) = server
        .post("/jobs/add?wait=10s", json!({"a": 1, "b": 1}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let (status, _) = send(
        server
            .client
            .post(server.url("/jobs/add"))
            .bearer_auth("wrong")
            .json(&json!({"a": 1, "b": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .delete("/jobs/0190b5a4-7f00-7000-8000-000000000000")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, done) = send(
        server
            .client
            .post(server.url("/jobs/add?wait=10s"))
            .bearer_auth("s3cret")
            .json(&json!({"a": 1, "b": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, shown) = server.get(&format!("/jobs/{}", id_of(&done))).await;
    assert_eq!(status, StatusCode::OK, "reads on loopback need no token");
    assert_eq!(shown["result"], 2);
}

#[tokio::test]
async fn beyond_loopback_serving_needs_a_token_and_so_does_every_route() {
    let jobs = Jobs::open("sqlite::memory:").await.unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = HttpApi::new(jobs.clone())
        .no_token()
        .serve_on(listener)
        .await;
    assert!(
        matches!(&refused, Err(Error::Config(m)) if m.contains("token")),
        "{refused:?}"
    );

    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let api = HttpApi::new(jobs).token("s3cret");
    tokio::spawn(async move { api.serve_on(listener).await.unwrap() });
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/jobs");
    let (status, _) = send(client.get(&url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(client.get(&url).bearer_auth("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_router_mounts_under_a_prefix_and_locations_follow_it() {
    let jobs = Jobs::open("sqlite::memory:").await.unwrap();
    let app = axum::Router::new().nest(
        "/api",
        HttpApi::new(jobs)
            .no_token()
            .allow_unauthenticated_changes()
            .router(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let response = reqwest::Client::new()
        .post(format!("{base}/api/jobs/gated"))
        .json(&json!({"gate": "mounted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/api/jobs/{}", id_of(&body)));
    open_gate("mounted");
    let (status, _) = send(reqwest::Client::new().get(format!("{base}{location}"))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn events_stream_progress_then_the_end() {
    let server = TestServer::open().await;
    let (_, body) = server.post("/jobs/reporting", json!({"gate": "sse"})).await;
    let id = id_of(&body);
    let mut response = server
        .client
        .get(server.url(&format!("/jobs/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    read_until(&mut response, &mut seen, "event: status").await;
    read_until(&mut response, &mut seen, "event: progress").await;
    assert!(seen.contains("halfway"), "{seen}");
    open_gate("sse");
    read_until(&mut response, &mut seen, "event: end").await;
    let end = seen.split("event: end").nth(1).unwrap();
    assert!(end.contains(r#""state":"completed""#), "{end}");
    assert!(end.contains(r#""result":"done""#), "{end}");
    assert!(
        response.chunk().await.unwrap().is_none(),
        "the stream closes after the end"
    );
}

#[tokio::test]
async fn events_resume_numbering_after_last_event_id() {
    let server = TestServer::open().await;
    let (_, body) = server
        .post("/jobs/add?wait=10s", json!({"a": 1, "b": 1}))
        .await;
    let text = server
        .client
        .get(server.url(&format!("/jobs/{}/events", id_of(&body))))
        .header("Last-Event-ID", "41")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("id: 42\n") && text.contains("event: status"),
        "{text}"
    );
    assert!(
        text.contains("id: 43\n") && text.contains("event: end"),
        "{text}"
    );
}

#[tokio::test]
async fn spawn_json_checks_the_name_and_the_arguments() {
    let jobs = Jobs::open("sqlite::memory:").await.unwrap();
    let handle = jobs
        .spawn_json("add", json!({"a": 20, "b": 22}))
        .await
        .unwrap();
    assert_eq!(handle.wait().await.unwrap(), json!(42));
    assert!(jobs.job_names().contains(&"add"));

    match jobs.spawn_json("ad", json!({})).await {
        Err(Error::UnknownJob { name, known }) => {
            assert_eq!(name, "ad");
            assert!(known.contains(&"add".to_string()));
        }
        other => panic!("expected UnknownJob, got {other:?}"),
    }
    match jobs.spawn_json("add", json!({"a": 1, "b": [1]})).await {
        Err(Error::InvalidArgs { name, path, .. }) => {
            assert_eq!(name, "add");
            assert_eq!(path.as_deref(), Some("b"));
        }
        other => panic!("expected InvalidArgs, got {other:?}"),
    }
    let all = jobs.list(llmjobs::JobFilter::new()).await.unwrap();
    assert_eq!(all.len(), 1, "rejected calls record nothing");
    assert_eq!(all[0].state, JobState::Completed);
}
