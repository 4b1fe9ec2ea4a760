//! Rate limits shared through the job database: runtimes (and processes) sharing one database
//! stay under a limit together, a 429 pauses every caller, 500/529 back off, a context-length
//! error is permanent, and a dead process's reservation expires. On SQLite and PostgreSQL (the
//! test kit's throwaway cluster; skipped, saying why, when none can be had).

use std::time::{Duration, Instant};

use llmjobs::llm::mock::{MockLlmServer, MockRateLimit, MockReply};
use llmjobs::llm::{ChatRequest, LlmClient, RateLimit, RetryPolicy, llm_call};
use llmjobs::{JobState, Jobs};
use llmjobs_testkit::pg::pg_url;
use llmjobs_testkit::{TempDb, WorkerProcess, wait_until};

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");

/// The model the limits apply to, as sent to the mock.
const MODEL: &str = "gpt-4o-mini";

/// Ten requests and 300 tokens a second, spent at most half a second's worth at once.
fn client_limit() -> RateLimit {
    RateLimit::new()
        .requests_per_minute(10)
        .tokens_per_minute(300)
        .window(Duration::from_secs(1))
        .burst(Duration::from_millis(500))
}

/// The mock enforces the same rates with a one-second burst, as a provider would.
fn mock_limit() -> MockRateLimit {
    MockRateLimit::per_minute(10, 300).window(Duration::from_secs(1))
}

fn shared_client(mock: &MockLlmServer, limit: RateLimit) -> LlmClient {
    mock.client_builder()
        .rate_limit("openai/*", limit)
        .retry(RetryPolicy::new().base_delay(Duration::from_millis(20)))
        .shared_limits()
        .build()
        .unwrap()
}

async fn runtime(url: &str, client: LlmClient) -> Jobs {
    Jobs::builder()
        .url(url)
        .concurrency(16)
        .poll_interval(Duration::from_millis(50))
        .llm(client)
        .open()
        .await
        .unwrap()
}

fn request(n: usize) -> ChatRequest {
    ChatRequest::new(format!("openai/{MODEL}"))
        .user(format!("question {n}"))
        .max_tokens(10)
}

/// The most requests the mock received in any window of `window`.
fn most_in_window(arrivals: &[Instant], window: Duration) -> usize {
    let mut arrivals = arrivals.to_vec();
    arrivals.sort();
    (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|t| t.duration_since(arrivals[i]) < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Two runtimes on `url` each run `per_runtime` calls; the mock must refuse none, and never
/// see more than the limit allows in a second (the burst plus a second's rate, plus one).
async fn two_runtimes_stay_under_the_limit(url: &str, per_runtime: usize) {
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_rate_limit(MODEL, mock_limit());
    let a = runtime(url, shared_client(&mock, client_limit())).await;
    let b = runtime(url, shared_client(&mock, client_limit())).await;
    let mut handles = Vec::new();
    for n in 0..per_runtime {
        handles.push(a.spawn(llm_call(request(2 * n))).await.unwrap());
        handles.push(b.spawn(llm_call(request(2 * n + 1))).await.unwrap());
    }
    for handle in handles {
        tokio::time::timeout(Duration::from_secs(120), handle.wait())
            .await
            .expect("every call finishes")
            .unwrap();
    }
    assert_eq!(
        mock.rate_limited_count(),
        0,
        "no request went past the limit"
    );
    let arrivals: Vec<Instant> = mock.requests().iter().map(|r| r.received_at).collect();
    assert_eq!(arrivals.len(), 2 * per_runtime);
    let most = most_in_window(&arrivals, Duration::from_secs(1));
    assert!(most <= 5 + 10 + 1, "{most} requests in one second");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runtimes_sharing_a_sqlite_database_stay_under_the_limit_together() {
    let db = TempDb::new();
    two_runtimes_stay_under_the_limit(&db.url(), 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runtimes_sharing_a_postgres_database_stay_under_the_limit_together() {
    let Some(url) = pg_url().await else { return };
    two_runtimes_stay_under_the_limit(&url, 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_pauses_the_model_for_every_runtime() {
    let db = TempDb::new();
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply_for(MODEL, MockReply::rate_limited(2));
    // One call at a time over both runtimes, so no call is on its way when the 429 comes
    // back: whatever arrives later was sent after the pause was shared.
    let limit = RateLimit::new().max_concurrency(1);
    let a = runtime(&db.url(), shared_client(&mock, limit)).await;
    let b = runtime(&db.url(), shared_client(&mock, limit)).await;
    let mut handles = Vec::new();
    for n in 0..6 {
        handles.push(a.spawn(llm_call(request(2 * n))).await.unwrap());
        handles.push(b.spawn(llm_call(request(2 * n + 1))).await.unwrap());
    }
    for handle in handles {
        tokio::time::timeout(Duration::from_secs(120), handle.wait())
            .await
            .expect("every call finishes")
            .unwrap();
    }
    let requests = mock.requests();
    let refused_at = requests[0].received_at;
    // One 429, then nothing from anyone until its Retry-After has passed: no burst of retries.
    assert_eq!(requests.len(), 13, "twelve answers after the one 429");
    for later in &requests[1..] {
        let after = later.received_at.duration_since(refused_at);
        assert!(
            after >= Duration::from_millis(1_950),
            "a request came {after:?} after the 429"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_mock_refuses_past_its_limit_with_retry_after_and_reset_headers() {
    let mock = MockLlmServer::start().await.unwrap();
    // Two a minute, one at a time: the second request within the minute is refused.
    mock.set_rate_limit(MODEL, MockRateLimit::requests_per_minute(2));
    let client = mock
        .client_builder()
        .retry(RetryPolicy::no_retries())
        .build()
        .unwrap();
    let req = ChatRequest::new(format!("openai/{MODEL}")).user("hi");
    client.chat(&req).await.unwrap();
    let error = client.chat(&req).await.unwrap_err();
    assert!(error.is_rate_limited(), "{error}");
    let wait = error.retry_after().expect("the 429 says when to come back");
    assert!(
        wait > Duration::from_secs(20) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert_eq!(mock.rate_limited_count(), 1);
    let refused = &mock.requests()[1];
    assert!(refused.rate_limited);
}

#[tokio::test]
async fn server_errors_back_off_and_ignore_rate_limit_reset_headers() {
    let mock = MockLlmServer::start().await.unwrap();
    for status in [500, 529] {
        let mut reply = MockReply::status(status, "overloaded");
        if let MockReply::Status { headers, .. } = &mut reply {
            headers.extend([
                ("x-ratelimit-remaining-requests".into(), "0".into()),
                ("x-ratelimit-reset-requests".into(), "1h".into()),
                ("anthropic-ratelimit-requests-remaining".into(), "0".into()),
            ]);
        }
        mock.push_reply(reply);
    }
    let client = mock
        .client_builder()
        .retry(RetryPolicy::new().base_delay(Duration::from_millis(10)))
        .build()
        .unwrap();
    let req = ChatRequest::new(format!("openai/{MODEL}")).user("hi");
    let error = client.chat(&req).await.unwrap_err();
    assert_eq!(error.status(), Some(500));
    assert!(error.is_retryable());
    assert_eq!(
        error.retry_after(),
        None,
        "a 500 is not told when to come back"
    );
    // The 529 is retried with back-off (milliseconds here), not after the hour its headers name.
    let answer = tokio::time::timeout(Duration::from_secs(60), client.call(&req))
        .await
        .expect("back-off, not the reset time")
        .unwrap();
    assert_eq!(answer.retries, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_length_error_fails_the_job_at_once() {
    let db = TempDb::new();
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply(MockReply::status(
        400,
        "This model's maximum context length is 8192 tokens",
    ));
    let jobs = runtime(&db.url(), shared_client(&mock, client_limit())).await;
    let handle = jobs.spawn(llm_call(request(1))).await.unwrap();
    let error = handle.wait().await.unwrap_err();
    assert!(error.to_string().contains("context length"), "{error}");
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.attempts, 1);
    assert_eq!(mock.request_count(), 1);
    jobs.shutdown().await;
}

/// A worker process takes the only place of a model (concurrency 1, 3-second leases) for a call
/// the mock holds for ten minutes, and is killed. A runtime on the same database gets the place
/// once the dead worker's lease has run out, and not before.
async fn a_dead_holders_place_comes_back(url: &str) {
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply_for(
        "held",
        MockReply::text("too late").delayed(Duration::from_secs(600)),
    );
    let holder = WorkerProcess::start(WORKER, &["hold", url, &mock.base_url()]);
    wait_until(Duration::from_secs(60), "the held call to arrive", || {
        mock.request_count() == 1
    });
    holder.kill();
    let killed_at = Instant::now();
    let client = mock
        .client_builder()
        .rate_limit("openai/held", RateLimit::new().max_concurrency(1))
        .shared_limits()
        .shared_limits_lease(Duration::from_secs(3))
        .build()
        .unwrap();
    let jobs = runtime(url, client).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(120),
        jobs.run(llm_call(ChatRequest::new("openai/held").user("next"))),
    )
    .await
    .expect("the dead worker's place came back")
    .unwrap();
    assert!(answer.text.contains("next"), "{}", answer.text);
    let second = &mock.requests()[1];
    // The lease was renewed at most a second before the kill, so it held two seconds more.
    assert!(
        second.received_at.duration_since(killed_at) >= Duration::from_millis(1_500),
        "the place was given away while the dead worker's lease held"
    );
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_processes_reservation_expires_on_sqlite() {
    let db = TempDb::new();
    a_dead_holders_place_comes_back(&db.url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_processes_reservation_expires_on_postgres() {
    let Some(url) = pg_url().await else { return };
    a_dead_holders_place_comes_back(&url).await;
}
