//! The HTTP job API served on a free loopback port over a database of its own, and a client
//! that reads its JSON answers: what the HTTP, security and dashboard tests share.

use std::time::Duration;

use llmjobs::Jobs;
use llmjobs::http::HttpApi;
use reqwest::StatusCode;
use serde_json::Value;

use crate::TempDb;

/// A running API and the runtime behind it.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The runtime the API serves (it runs the jobs this test binary defines).
    pub jobs: Jobs,
    /// A client for requests the methods below do not cover.
    pub client: reqwest::Client,
    _db: TempDb,
}

impl TestServer {
    /// The API with `configure` applied to its settings, over a fresh database whose runtime
    /// polls every 20 ms.
    pub async fn with(configure: impl FnOnce(HttpApi) -> HttpApi) -> TestServer {
        let db = TempDb::new();
        let jobs = Jobs::builder()
            .url(db.url())
            .poll_interval(Duration::from_millis(20))
            .open()
            .await
            .expect("open the job database");
        let api = configure(HttpApi::new(jobs.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let base = format!("http://{}", listener.local_addr().expect("its address"));
        tokio::spawn(async move { api.serve_on(listener).await.expect("serve the API") });
        TestServer {
            base,
            jobs,
            client: reqwest::Client::new(),
            _db: db,
        }
    }

    /// The API open to changes without a token, as on a developer's machine.
    pub async fn open() -> TestServer {
        TestServer::with(|api| api.no_token().allow_unauthenticated_changes()).await
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`: the status and JSON body.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.client.get(self.url(path))).await
    }

    /// `POST path` with a JSON body: the status and JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(self.client.post(self.url(path)).json(&body)).await
    }

    /// `DELETE path`: the status and JSON body.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        send(self.client.delete(self.url(path))).await
    }
}

/// Sends `request`; its status and JSON body (a body that is not JSON fails the test).
pub async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("send the request");
    let status = response.status();
    let text = response.text().await.expect("read the body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text:?}"));
    (status, body)
}

/// The `id` of a job in a response.
pub fn id_of(body: &Value) -> String {
    body["id"].as_str().expect("a job id").to_string()
}

/// Reads an event stream into `seen` until `what` appears in it; fails the test if the stream
/// ends, or 30 s pass, first.
pub async fn read_until(response: &mut reqwest::Response, seen: &mut String, what: &str) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while !seen.contains(what) {
            match response.chunk().await.expect("read the stream") {
                Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                None => return,
            }
        }
    })
    .await;
    assert!(
        found.is_ok() && seen.contains(what),
        "no `{what}` in {seen}"
    );
}
