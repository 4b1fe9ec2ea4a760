//! The web dashboard (`HttpApi::dashboard`): its routes called over real HTTP on loopback, the
//! refusal of cross-site requests, and the page itself driven in headless Chromium over
//! WebDriver (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them).
//!
//! Every test serves jobs in each state: a completed `summarize` with a step journal and token
//! counts, a failed `refuses`, a pending and a cancelled `crawl`, and a running `crawl` that
//! reports progress a page at a time.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llmjobs::http::HttpApi;
use llmjobs::{JobContext, JobError, JobId, JobState, Jobs, Progress, llm_job};
use llmjobs_testkit::TempDb;
use llmjobs_testkit::http::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Journals two steps and answers with token counts, as an LLM job's result reports them.
#[llm_job]
async fn summarize(ctx: JobContext, text: String) -> Result<Value, JobError> {
    let words = ctx
        .step("split", async {
            Ok::<_, JobError>(text.split_whitespace().count())
        })
        .await?;
    let summary = ctx
        .step("draft", async {
            Ok::<_, JobError>(format!("{words} words"))
        })
        .await?;
    Ok(json!({
        "text": summary,
        "usage": {"input_tokens": 12, "output_tokens": 5},
        "total_usage": {"input_tokens": 30, "output_tokens": 9},
        "total_cost": 0.0042,
    }))
}

#[llm_job]
async fn refuses() -> Result<(), JobError> {
    Err(JobError::permanent(JobError::msg("no, never")))
}

/// Reads `pages` pages, a tenth of a second each, reporting each one.
#[llm_job]
async fn crawl(ctx: JobContext, pages: u32) -> Result<u32, JobError> {
    for page in 0..pages {
        ctx.report(
            Progress::stage("crawling")
                .with_fraction(f64::from(page) / f64::from(pages))
                .with_message(format!("page {page} of {pages}")),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(pages)
}

/// How long a condition may take to come true before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it gives a value; panics naming `what` past the deadline.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The jobs each test serves, one per state.
struct Fixture {
    completed: JobId,
    failed: JobId,
    pending: JobId,
    cancelled: JobId,
    running: JobId,
}

/// The API and dashboard on a free loopback port, over a database of its own.
/// The API and dashboard over the fixture's jobs.
struct Server {
    api: TestServer,
    ids: Fixture,
}

impl std::ops::Deref for Server {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.api
    }
}

impl Server {
    async fn start(token: Option<&str>) -> Server {
        // The dashboard is on by default, reading through an inspector it opens itself.
        let api = TestServer::with(|api| match token {
            Some(token) => api.token(token),
            None => api.no_token().allow_unauthenticated_changes(),
        })
        .await;
        let ids = populate(&api.jobs).await;
        Server { api, ids }
    }

    async fn state(&self, id: JobId) -> JobState {
        self.jobs.status(id).await.unwrap().state
    }
}

async fn populate(jobs: &Jobs) -> Fixture {
    let completed = jobs.spawn(summarize("a b c d".into())).await.unwrap();
    completed.wait().await.unwrap();
    let failed = jobs.spawn(refuses()).await.unwrap();
    failed.wait().await.unwrap_err();
    let later = Duration::from_secs(3600);
    let pending = jobs.spawn(crawl(10).delay(later)).await.unwrap().id();
    let cancelled = jobs.spawn(crawl(10).delay(later)).await.unwrap().id();
    jobs.cancel(cancelled).await.unwrap();
    // Long enough to outlast any test: the tests cancel it or leave it running.
    let running = jobs.spawn(crawl(6000)).await.unwrap().id();
    eventually("the crawl to run and report", async || {
        let status = jobs.status(running).await.unwrap();
        (status.state == JobState::Running && status.progress.is_some()).then_some(())
    })
    .await;
    Fixture {
        completed: completed.id(),
        failed: failed.id(),
        pending,
        cancelled,
        running,
    }
}

// ---- Routes ---------------------------------------------------------------------------------

#[tokio::test]
async fn the_page_and_its_assets_come_from_the_binary_and_fetch_nothing_elsewhere() {
    let server = Server::start(None).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert!(header("content-security-policy").contains("default-src 'self'"));
        assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
        let body = response.text().await.unwrap();
        // The only absolute URL is the SVG namespace, which names and fetches nothing.
        let outside = body
            .replace("http://www.w3.org/2000/svg", "")
            .contains("http");
        assert!(!outside, "{path} refers to something outside the server");
    }
    let page = server.client.get(server.url("/")).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains(r#"src="dashboard/app.js""#));
    assert!(page.contains(r#"name="viewport""#), "laid out for phones");
}

#[tokio::test]
async fn without_a_dashboard_only_the_job_api_is_served() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    let app = HttpApi::new(jobs.clone()).no_dashboard().router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    for path in ["/", "/dashboard/overview"] {
        let response = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let jobs_page = client.get(format!("{base}/jobs")).send().await.unwrap();
    assert_eq!(jobs_page.status(), StatusCode::OK);
    jobs.shutdown().await;
}

#[tokio::test]
async fn on_an_in_memory_database_the_dashboard_says_why_it_cannot_read() {
    let jobs = Jobs::open("sqlite::memory:").await.unwrap();
    let error = jobs.inspector().await.unwrap_err().to_string();
    assert!(error.contains("in-memory database"), "{error}");
    let app = HttpApi::new(jobs.clone()).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let response = reqwest::get(format!("{base}/dashboard/overview"))
        .await
        .unwrap();
    assert!(!response.status().is_success());
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("in-memory database"),
        "{body}"
    );
    jobs.shutdown().await;
}

#[tokio::test]
async fn the_overview_counts_the_states_and_charts_the_last_hour() {
    let server = Server::start(None).await;
    let (status, overview) = server.get("/dashboard/overview").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        overview["counts"],
        json!({"pending": 1, "running": 1, "completed": 1, "failed": 1, "cancelled": 1})
    );
    assert_eq!(overview["by_name"]["crawl"]["pending"], 1);
    assert_eq!(overview["by_name"]["summarize"]["completed"], 1);
    let chart = &overview["chart"];
    assert_eq!(chart["bucket_ms"], 60_000);
    assert_eq!(chart["truncated"], false);
    for (row, ended) in [("completed", 1), ("failed", 1), ("cancelled", 1)] {
        let bars = chart[row].as_array().unwrap();
        assert_eq!(bars.len(), 60, "{row}");
        let total: u64 = bars.iter().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(total, ended, "{row}");
        // All of them ended within the last minute: the newest bar.
        assert_eq!(bars[59], ended, "{row}");
    }
}

#[tokio::test]
async fn a_job_shows_its_arguments_result_journal_tokens_and_errors() {
    let server = Server::start(None).await;
    let (status, done) = server
        .get(&format!("/dashboard/jobs/{}", server.ids.completed))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["args"], json!({"text": "a b c d"}));
    assert_eq!(done["job"]["state"], "completed");
    assert_eq!(done["job"]["result"]["text"], "4 words");
    let steps: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["split", "draft"]);
    assert_eq!(done["steps"][1]["position"], 1);
    assert_eq!(
        done["usage"],
        json!({"input_tokens": 30, "output_tokens": 9, "cost_usd": 0.0042})
    );

    let (_, failed) = server
        .get(&format!("/dashboard/jobs/{}", server.ids.failed))
        .await;
    assert_eq!(failed["job"]["state"], "failed");
    assert!(
        failed["job"]["error"]
            .as_str()
            .unwrap()
            .contains("no, never")
    );
    assert_eq!(failed["usage"], Value::Null);
    assert_eq!(failed["steps"], json!([]));
    // Each attempt's error, for the page's table of them.
    let attempts = failed["attempt_errors"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{failed}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert!(attempts[0]["error"].as_str().unwrap().contains("no, never"));

    // Retried, it keeps how it ended before.
    server.jobs.retry(server.ids.cancelled).await.unwrap();
    let (_, retried) = server
        .get(&format!("/dashboard/jobs/{}", server.ids.cancelled))
        .await;
    assert_eq!(retried["earlier_runs"][0]["state"], "cancelled");

    let (status, missing) = server
        .get("/dashboard/jobs/0190a0f0-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing["error"].is_string());
    let (status, _) = server.get("/dashboard/jobs/not-an-id").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Reads Server-Sent Events from a response until `done` says it has seen enough.
async fn read_events(
    response: reqwest::Response,
    mut done: impl FnMut(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut response = response;
    let mut buffer = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let kind = block.lines().find_map(|l| l.strip_prefix("event: "));
                let data = block.lines().find_map(|l| l.strip_prefix("data: "));
                if let (Some(kind), Some(data)) = (kind, data) {
                    events.push((kind.to_string(), serde_json::from_str(data).unwrap()));
                }
            }
            if done(&events) {
                return;
            }
        }
        panic!("the event stream ended");
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("timed out waiting for events");
    events
}

#[tokio::test]
async fn the_event_stream_sends_counts_and_each_change_of_a_job() {
    let server = Server::start(None).await;
    let response = server
        .client
        .get(server.url(&format!("/dashboard/events?job={}", server.ids.failed)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let running = server.ids.running.to_string();
    let pending = server.ids.pending.to_string();
    let jobs = server.jobs.clone();
    let cancel = server.ids.pending;
    let mut cancelled = false;
    let events = read_events(response, |events| {
        let seen = |id: &str, state: &str| {
            events
                .iter()
                .any(|(kind, job)| kind == "job" && job["id"] == id && job["state"] == state)
        };
        if !cancelled && seen(&pending, "pending") {
            // Changed by another handle, as another process would.
            cancelled = true;
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.cancel(cancel).await.unwrap() });
        }
        seen(&pending, "cancelled")
            && events
                .iter()
                .filter(|(kind, job)| kind == "job" && job["id"] == running.as_str())
                .count()
                >= 2
    })
    .await;
    let (kind, counts) = &events[0];
    assert_eq!(kind, "counts");
    assert_eq!(counts["running"], 1);
    // The running crawl was sent again as its progress moved.
    let fractions: Vec<f64> = events
        .iter()
        .filter(|(kind, job)| kind == "job" && job["id"] == running.as_str())
        .map(|(_, job)| job["progress"]["fraction"].as_f64().unwrap())
        .collect();
    assert!(fractions.windows(2).all(|w| w[1] > w[0]), "{fractions:?}");
    // Every job the page shows is sent at first, the one named by `?job=` too.
    let failed = server.ids.failed.to_string();
    assert!(events.iter().any(|(_, job)| job["id"] == failed.as_str()));
    let (status, _) = server.get("/dashboard/events?job=nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn cross_site_requests_cannot_change_jobs() {
    let server = Server::start(None).await;
    let before = server.jobs.counts().await.unwrap();
    // A form on another site, posted by the visitor's browser.
    let form = server
        .client
        .post(server.url("/jobs/summarize?wait=1s"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body("text=hello")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::FORBIDDEN);
    let body: Value = form.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("cross-site"));
    assert_eq!(
        server.jobs.counts().await.unwrap(),
        before,
        "nothing spawned"
    );

    // Older browsers send only `Origin`.
    let running = format!("/jobs/{}", server.ids.running);
    let cancel = server
        .client
        .delete(server.url(&running))
        .header("origin", "http://evil.example")
        .header("x-llmjobs-request", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::FORBIDDEN);
    // Same origin, but without the header no form can send.
    let retry = format!("/jobs/{}/retry", server.ids.failed);
    let no_header = server
        .client
        .post(server.url(&retry))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(no_header.status(), StatusCode::FORBIDDEN);
    assert_eq!(server.state(server.ids.running).await, JobState::Running);
    assert_eq!(server.state(server.ids.failed).await, JobState::Failed);

    // The dashboard's own requests go through.
    let host = server.base.trim_start_matches("http://").to_string();
    let own = server
        .client
        .post(server.url(&retry))
        .header("origin", format!("http://{host}"))
        .header("x-llmjobs-request", "dashboard")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    let own = server
        .client
        .delete(server.url(&running))
        .header("sec-fetch-site", "same-origin")
        .header("x-llmjobs-request", "dashboard")
        .send()
        .await
        .unwrap();
    assert!(own.status().is_success(), "{}", own.status());
    // And so do programs, which name no origin.
    let program = server
        .client
        .delete(server.url(&format!("/jobs/{}", server.ids.pending)))
        .send()
        .await
        .unwrap();
    assert_eq!(program.status(), StatusCode::OK);
    eventually("the running crawl to be cancelled", async || {
        (server.state(server.ids.running).await == JobState::Cancelled).then_some(())
    })
    .await;
}

#[tokio::test]
async fn with_a_token_the_page_loads_and_only_changes_need_it() {
    let server = Server::start(Some("s3cret")).await;
    for path in ["/", "/dashboard/app.js", "/dashboard/overview"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let cancel = server.url(&format!("/jobs/{}", server.ids.pending));
    let without = server
        .client
        .delete(&cancel)
        .header("sec-fetch-site", "same-origin")
        .header("x-llmjobs-request", "dashboard")
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
    let with = server
        .client
        .delete(&cancel)
        .header("sec-fetch-site", "same-origin")
        .header("x-llmjobs-request", "dashboard")
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), StatusCode::OK);
    assert_eq!(server.state(server.ids.pending).await, JobState::Cancelled);
}

// ---- The page in a real browser ------------------------------------------------------------

/// chromedriver on a free loopback port, and a headless Chromium session through it; both
/// stopped when dropped.
struct Browser {
    client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver not found: install Debian's chromium and chromium-driver");
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium(), "args": args}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually("chromedriver to start a session", async || {
            fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
            .ok()
        })
        .await;
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Runs a script in the page and returns what it returns.
    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// The table's rows, as `(id, state)`.
    async fn rows(&self) -> Vec<(String, String)> {
        let rows = self
            .eval(
                "return [...document.querySelectorAll('#jobs tbody tr')]\
                 .map(r => [r.dataset.id, r.dataset.state]);",
            )
            .await;
        serde_json::from_value(rows).unwrap()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("chromium not found: install Debian's chromium and chromium-driver")
}

/// Where the test leaves its screenshots.
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("dashboard-screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium() {
    use fantoccini::Locator;

    let server = Server::start(None).await;
    let browser = Browser::start().await;
    let ids = &server.ids;
    browser
        .client
        .goto(&format!("{}/", server.base))
        .await
        .unwrap();

    // The table lists every job, the counts and the chart are drawn.
    eventually("the table to list the five jobs", async || {
        (browser.rows().await.len() == 5).then_some(())
    })
    .await;
    let listed: Vec<String> = browser.rows().await.into_iter().map(|r| r.0).collect();
    for id in [
        ids.completed,
        ids.failed,
        ids.pending,
        ids.cancelled,
        ids.running,
    ] {
        assert!(listed.contains(&id.to_string()), "{id} is listed");
    }
    eventually("the counts and the chart", async || {
        let drawn = browser
            .eval(
                "return document.querySelectorAll('#counts .count').length === 5 \
                 && document.querySelectorAll('#chart rect').length >= 3;",
            )
            .await;
        (drawn == json!(true)).then_some(())
    })
    .await;
    browser.screenshot("jobs.png").await;

    // A filter narrows the table.
    let state = browser
        .client
        .find(Locator::Css("#filter-state"))
        .await
        .unwrap();
    state.select_by_value("failed").await.unwrap();
    eventually("the table to show only the failed job", async || {
        (browser.rows().await == [(ids.failed.to_string(), "failed".to_string())]).then_some(())
    })
    .await;
    browser.screenshot("failed.png").await;
    state.select_by_value("").await.unwrap();
    eventually("the table to list the five jobs again", async || {
        (browser.rows().await.len() == 5).then_some(())
    })
    .await;

    // The running job's progress bar advances without a reload: a mark left in the page stays.
    browser
        .eval("window.notReloaded = true; return null;")
        .await;
    let bar = format!(
        "return document.querySelector('#jobs tr[data-id=\"{}\"] progress')?.value ?? null;",
        ids.running
    );
    let first = eventually("a progress bar for the running crawl", async || {
        browser.eval(&bar).await.as_f64()
    })
    .await;
    eventually("the progress bar to advance", async || {
        let now = browser.eval(&bar).await.as_f64()?;
        (now > first).then_some(())
    })
    .await;
    assert_eq!(
        browser.eval("return window.notReloaded;").await,
        json!(true)
    );

    // The job page of the completed job shows its journal, result and tokens.
    browser
        .client
        .find(Locator::Css(&format!("a[href='#/jobs/{}']", ids.completed)))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the job page with its step journal", async || {
        let text = browser
            .client
            .find(Locator::Css("#job-body"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text.contains("Step journal")
            && text.contains("split")
            && text.contains("draft")
            && text.contains("4 words")
            && text.contains("30 in, 9 out"))
        .then_some(())
    })
    .await;
    browser.screenshot("job.png").await;

    // Cancel from the page, confirmed in its dialog, cancels the running crawl.
    browser
        .client
        .goto(&format!("{}/#/jobs/{}", server.base, ids.running))
        .await
        .unwrap();
    let cancel = eventually("the cancel button", async || {
        browser.client.find(Locator::Css("#cancel-job")).await.ok()
    })
    .await;
    cancel.click().await.unwrap();
    let confirm = eventually("the confirmation", async || {
        let open = browser
            .eval("return document.getElementById('confirm').open;")
            .await;
        if open != json!(true) {
            return None;
        }
        browser.client.find(Locator::Css("#confirm-ok")).await.ok()
    })
    .await;
    browser.screenshot("confirm.png").await;
    assert_eq!(
        server.state(ids.running).await,
        JobState::Running,
        "nothing happens before the confirmation"
    );
    confirm.click().await.unwrap();
    eventually("the crawl to be cancelled", async || {
        (server.state(ids.running).await == JobState::Cancelled).then_some(())
    })
    .await;
    eventually(
        "the page to show it cancelled, with a retry button",
        async || browser.client.find(Locator::Css("#retry-job")).await.ok(),
    )
    .await;
    browser.screenshot("cancelled.png").await;

    // On a phone's width the page still reads.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser
        .client
        .goto(&format!("{}/", server.base))
        .await
        .unwrap();
    eventually("the table on a narrow screen", async || {
        (browser.rows().await.len() == 5).then_some(())
    })
    .await;
    let overflow = browser
        .eval("return document.documentElement.scrollWidth > window.innerWidth + 1;")
        .await;
    assert_eq!(overflow, json!(false), "the page fits a phone's width");
    browser.screenshot("phone.png").await;
    browser.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_once_and_sends_it() {
    use fantoccini::Locator;

    let server = Server::start(Some("s3cret")).await;
    let browser = Browser::start().await;
    let ids = &server.ids;
    let press = async |selector: &str| {
        let button = eventually(selector, async || {
            browser.client.find(Locator::Css(selector)).await.ok()
        })
        .await;
        button.click().await.unwrap();
    };
    let confirm_open = async || {
        let open = browser
            .eval("return document.getElementById('confirm').open;")
            .await;
        (open == json!(true)).then_some(())
    };

    // Reads need no token on loopback: the table fills without asking.
    browser
        .client
        .goto(&format!("{}/#/jobs/{}", server.base, ids.pending))
        .await
        .unwrap();
    press("#cancel-job").await;
    eventually("the confirmation", confirm_open).await;
    press("#confirm-ok").await;
    // The cancel was refused (401): the page asks for the token, then sends it.
    let input = eventually("the token dialog", async || {
        let open = browser
            .eval("return document.getElementById('token-dialog').open;")
            .await;
        if open != json!(true) {
            return None;
        }
        browser.client.find(Locator::Css("#token-input")).await.ok()
    })
    .await;
    browser.screenshot("token.png").await;
    assert_eq!(server.state(ids.pending).await, JobState::Pending);
    input.send_keys("s3cret").await.unwrap();
    press("#token-form button[value='ok']").await;
    eventually("the pending crawl to be cancelled", async || {
        (server.state(ids.pending).await == JobState::Cancelled).then_some(())
    })
    .await;

    // Asked once: the next change goes through with the kept token.
    browser
        .client
        .goto(&format!("{}/#/jobs/{}", server.base, ids.failed))
        .await
        .unwrap();
    press("#retry-job").await;
    eventually("the confirmation", confirm_open).await;
    press("#confirm-ok").await;
    eventually("the failed job to be retried", async || {
        let status = server.jobs.status(ids.failed).await.unwrap();
        (status.earlier_runs.len() == 1).then_some(())
    })
    .await;
    let asked_again = browser
        .eval("return document.getElementById('token-dialog').open;")
        .await;
    assert_eq!(asked_again, json!(false));
    browser.client.clone().close().await.unwrap();
}
