//! The usage ledger, budgets and the completion cache, written once and run on each backend by
//! a thin test binary (`tests/llm_ledger_sqlite.rs`, `tests/llm_ledger_postgres.rs`), as the
//! store conformance suite is: each behaviour is an `async fn` taking a fresh, empty database,
//! and [`ledger_tests!`] makes one `#[tokio::test]` of each. A test that needs several
//! runtimes on one database (as workers in several processes would be) opens its URL twice.

use std::time::{Duration, Instant};

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{
    ChatRequest, ChatResponse, CompletionCache, KeyBudget, LlmClient, Price, RetryPolicy, llm_call,
};
use llmjobs::{
    Budget, Error, JobContext, JobError, JobState, Jobs, JobsBuilder, UsageFilter, UsageGroup,
    UsageKey, llm_job,
};
use llmjobs_testkit::{TempDb, WorkerProcess};

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");

/// Expands to one `#[tokio::test]` per behaviour, each on a fresh database from `$backend`
/// (`impl Future<Output = Option<Backend>>`; `None`: this backend cannot be had here, and the
/// test is skipped).
macro_rules! ledger_tests {
    ($backend:expr) => {
        $crate::llm_ledger::ledger_tests!(@each $backend;
            each_provider_call_is_a_ledger_row_failed_tries_included,
            usage_sums_by_model_job_name_and_day,
            cache_tokens_are_priced_as_each_provider_prices_them,
            a_job_budget_stops_the_call_that_would_exceed_it_before_it_is_sent,
            a_call_budget_refuses_a_call_that_cannot_fit_and_is_kept_with_the_job,
            a_key_budget_over_a_window_holds_across_two_runtimes,
            concurrent_calls_from_two_runtimes_never_overshoot_a_key_budget,
            a_call_in_flight_holds_its_room_but_is_no_spend_in_usage,
            a_dead_processes_reservation_expires_with_its_lease,
            a_cache_hit_is_shared_across_runtimes_and_expires_after_its_ttl,
        );
    };
    (@each $backend:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = $backend.await else {
                    return; // this backend cannot be had here: skipped (it said why)
                };
                $crate::llm_ledger::$name(backend).await;
            }
        )+
    };
}
pub(crate) use ledger_tests;

/// A fresh database.
pub(crate) enum Backend {
    Sqlite(TempDb),
    Postgres(String),
}

impl Backend {
    #[allow(dead_code)] // each test binary uses one backend
    pub(crate) async fn sqlite() -> Option<Backend> {
        Some(Backend::Sqlite(TempDb::new()))
    }

    #[allow(dead_code)] // each test binary uses one backend
    pub(crate) async fn postgres() -> Option<Backend> {
        Some(Backend::Postgres(llmjobs_testkit::pg::pg_url().await?))
    }

    fn url(&self) -> String {
        match self {
            Backend::Sqlite(db) => db.url(),
            Backend::Postgres(url) => url.clone(),
        }
    }

    /// A runtime whose LLM client is `client`.
    fn builder(&self, client: LlmClient) -> JobsBuilder {
        Jobs::builder()
            .url(self.url())
            .poll_interval(Duration::from_millis(20))
            .shutdown_grace(Duration::ZERO)
            .llm(client)
    }
}

/// A client of `mock` with quick HTTP retries and these prices.
fn client(mock: &MockLlmServer, prices: &[(&str, Price)]) -> LlmClient {
    let mut builder = mock.client_builder().retry(
        RetryPolicy::new()
            .max_retries(3)
            .base_delay(Duration::from_millis(5))
            .max_delay(Duration::from_millis(20)),
    );
    for (pattern, price) in prices {
        builder = builder.price(*pattern, *price);
    }
    builder.build().unwrap()
}

/// One dollar per thousand answer tokens, prompts free: a call's cost is its answer's length.
fn answer_price() -> Price {
    Price::per_million_tokens(0.0, 1000.0)
}

/// An answer the mock counts as 90 tokens (its estimate: a token per four characters), so
/// $0.09 at [`answer_price`].
fn answer_of_90_tokens() -> MockReply {
    MockReply::text("x".repeat(360))
}

/// The one group a query without `by` returns.
async fn total(jobs: &Jobs, filter: UsageFilter) -> UsageGroup {
    let mut groups = jobs.usage(filter).await.unwrap();
    assert!(groups.len() <= 1, "{groups:?}");
    groups.pop().unwrap_or_default()
}

/// Waits for `condition`, checking every 10 ms, for at most 60 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

pub(crate) async fn each_provider_call_is_a_ledger_row_failed_tries_included(backend: Backend) {
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply(MockReply::server_error());
    mock.push_reply(MockReply::rate_limited(0));
    let jobs = backend
        .builder(client(&mock, &[("openai/*", answer_price())]))
        .open()
        .await
        .unwrap();
    let request = ChatRequest::new("openai/gpt-4o-mini").user("Name a colour.");
    let handle = jobs.spawn(llm_call(request)).await.unwrap();
    let answer: ChatResponse = handle.wait().await.unwrap();
    assert_eq!(mock.request_count(), 3);

    let usage = total(&jobs, UsageFilter::new().job(handle.id())).await;
    assert_eq!(usage.calls, 3, "{usage:?}");
    assert_eq!(usage.errors, 2, "{usage:?}");
    assert_eq!(usage.jobs, 1);
    assert_eq!(usage.input_tokens, answer.usage.input_tokens);
    assert_eq!(usage.output_tokens, answer.usage.output_tokens);
    assert!(close(usage.cost_usd, answer.cost.unwrap()), "{usage:?}");
    assert_eq!(usage.unpriced_calls, 0);
    jobs.shutdown().await;
}

pub(crate) async fn usage_sums_by_model_job_name_and_day(backend: Backend) {
    let mock = MockLlmServer::start().await.unwrap();
    let prices = [
        ("openai/*", answer_price()),
        ("anthropic/*", Price::per_million_tokens(1.0, 1.0)),
    ];
    let jobs = backend
        .builder(client(&mock, &prices))
        .open()
        .await
        .unwrap();
    let mut by_model = std::collections::BTreeMap::<String, (u64, f64)>::new();
    for model in ["openai/a", "openai/a", "anthropic/b"] {
        let request = ChatRequest::new(model).user("Say something.");
        let answer: ChatResponse = jobs.run(llm_call(request)).await.unwrap();
        let entry = by_model.entry(model.to_string()).or_default();
        entry.0 += answer.usage.input_tokens + answer.usage.output_tokens;
        entry.1 += answer.cost.unwrap();
    }
    let groups = jobs
        .usage(UsageFilter::new().by(UsageKey::Model))
        .await
        .unwrap();
    let models: Vec<&str> = groups.iter().filter_map(|g| g.model.as_deref()).collect();
    assert_eq!(models, ["anthropic/b", "openai/a"]);
    for group in &groups {
        let (tokens, cost) = by_model[group.model.as_deref().unwrap()];
        assert_eq!(
            group.input_tokens + group.output_tokens,
            tokens,
            "{group:?}"
        );
        assert!(close(group.cost_usd, cost), "{group:?}");
        assert!(group.job_name.is_none() && group.day.is_none());
    }
    assert_eq!(groups[1].calls, 2);
    assert_eq!(groups[1].jobs, 2);

    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let days = jobs
        .usage(UsageFilter::new().by(UsageKey::JobName).by(UsageKey::Day))
        .await
        .unwrap();
    assert_eq!(days.len(), 1, "{days:?}");
    assert_eq!(days[0].job_name.as_deref(), Some("llmjobs.llm_call"));
    assert_eq!(days[0].day.as_deref(), Some(today.as_str()));
    assert_eq!(days[0].calls, 3);

    let none = jobs
        .usage(UsageFilter::new().job_name("no such job"))
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let only = total(&jobs, UsageFilter::new().model("anthropic/b")).await;
    assert_eq!(only.calls, 1);
    jobs.shutdown().await;
}

pub(crate) async fn cache_tokens_are_priced_as_each_provider_prices_them(backend: Backend) {
    let mock = MockLlmServer::start().await.unwrap();
    let prices = [
        ("anthropic/*", Price::anthropic(3.0, 15.0)),
        ("openai/*", Price::openai(2.5, 10.0)),
    ];
    let jobs = backend
        .builder(client(&mock, &prices))
        .open()
        .await
        .unwrap();
    let prompt = "Summarise the attached contract. ".repeat(200);

    mock.push_reply(MockReply::cached_text("Done.", 1000, 400));
    let claude: ChatResponse = jobs
        .run(llm_call(
            ChatRequest::new("anthropic/claude").user(prompt.as_str()),
        ))
        .await
        .unwrap();
    let u = claude.usage;
    assert_eq!((u.cache_read_tokens, u.cache_write_tokens), (1000, 400));
    let plain = u.input_tokens - 1400;
    let expected =
        (plain as f64 * 3.0 + 1000.0 * 0.3 + 400.0 * 3.75 + u.output_tokens as f64 * 15.0) / 1e6;
    assert!(close(claude.cost.unwrap(), expected), "{claude:?}");

    mock.push_reply(MockReply::cached_text("Done.", 1024, 0));
    let gpt: ChatResponse = jobs
        .run(llm_call(
            ChatRequest::new("openai/gpt-4o").user(prompt.as_str()),
        ))
        .await
        .unwrap();
    let u = gpt.usage;
    assert_eq!((u.cache_read_tokens, u.cache_write_tokens), (1024, 0));
    let expected =
        ((u.input_tokens - 1024) as f64 * 2.5 + 1024.0 * 1.25 + u.output_tokens as f64 * 10.0)
            / 1e6;
    assert!(close(gpt.cost.unwrap(), expected), "{gpt:?}");

    let groups = jobs
        .usage(UsageFilter::new().by(UsageKey::Model))
        .await
        .unwrap();
    assert_eq!(groups[0].model.as_deref(), Some("anthropic/claude"));
    assert_eq!(
        (groups[0].cache_read_tokens, groups[0].cache_write_tokens),
        (1000, 400)
    );
    assert!(close(groups[0].cost_usd, claude.cost.unwrap()));
    assert_eq!(groups[1].cache_read_tokens, 1024);
    assert!(close(groups[1].cost_usd, gpt.cost.unwrap()));
    jobs.shutdown().await;
}

/// Asks for three answers of at most 100 tokens each, within a budget of $0.25.
#[llm_job(budget_usd = 0.25, retries = 3)]
async fn three_answers(ctx: JobContext, model: String) -> Result<u32, JobError> {
    let llm = ctx.llm();
    for i in 1..=3 {
        let request = ChatRequest::new(&model)
            .user(format!("Answer number {i}."))
            .max_tokens(100);
        llm.call(&request).await?;
    }
    Ok(3)
}

pub(crate) async fn a_job_budget_stops_the_call_that_would_exceed_it_before_it_is_sent(
    backend: Backend,
) {
    let mock = MockLlmServer::start().await.unwrap();
    for _ in 0..3 {
        mock.push_reply(answer_of_90_tokens());
    }
    let jobs = backend
        .builder(client(&mock, &[("openai/*", answer_price())]))
        .open()
        .await
        .unwrap();
    // Each call could cost $0.10 (100 answer tokens): the first two fit ($0 + $0.10, then
    // $0.09 + $0.10); the third does not ($0.18 + $0.10 > $0.25).
    let handle = jobs
        .spawn(three_answers("openai/gpt-4o-mini".into()))
        .await
        .unwrap();
    let err = handle.wait().await.unwrap_err();
    assert_eq!(mock.request_count(), 2, "the third call was never sent");
    let message = err.to_string();
    for part in [
        "the job's budget of $0.2500",
        "spent so far",
        "$0.1800",
        "not sent",
    ] {
        assert!(message.contains(part), "{part:?} missing: {message}");
    }
    let status = jobs.status(handle.id()).await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.attempts, 1, "a budget error is permanent");
    let spent = status
        .progress
        .as_ref()
        .and_then(|p| p["cost_usd"].as_f64())
        .unwrap();
    assert!(close(spent, 0.18), "the status shows the spend: {status:?}");
    let usage = total(&jobs, UsageFilter::new().job(handle.id())).await;
    assert_eq!(usage.calls, 2);
    assert!(close(usage.cost_usd, 0.18));
    let db = llmjobs::Inspector::open(&backend.url()).await.unwrap();
    let steps = db.steps(handle.id()).await.unwrap();
    assert_eq!(
        steps.len(),
        2,
        "the refusal is not journaled: a retry checks again"
    );
    jobs.shutdown().await;
}

pub(crate) async fn a_call_budget_refuses_a_call_that_cannot_fit_and_is_kept_with_the_job(
    backend: Backend,
) {
    let mock = MockLlmServer::start().await.unwrap();
    let url_jobs = backend
        .builder(client(&mock, &[("openai/*", answer_price())]))
        .run_jobs(false)
        .open()
        .await
        .unwrap();
    // Spawned by a runtime that runs no jobs: the budget must reach the worker through the
    // database.
    let request = ChatRequest::new("openai/gpt-4o-mini")
        .user("Write an essay.")
        .max_tokens(1000);
    let handle = url_jobs
        .spawn(llm_call(request).budget(Budget::tokens(500)))
        .await
        .unwrap();
    let worker = backend
        .builder(client(&mock, &[("openai/*", answer_price())]))
        .open()
        .await
        .unwrap();
    let err = worker.handle::<ChatResponse>(handle.id()).wait().await;
    let Err(Error::JobFailed { error: message, .. }) = err else {
        panic!("the call must be refused: {err:?}");
    };
    assert!(
        message.contains("the job's budget of 500 tokens"),
        "{message}"
    );
    assert_eq!(mock.request_count(), 0);
    worker.shutdown().await;
    url_jobs.shutdown().await;
}

pub(crate) async fn a_key_budget_over_a_window_holds_across_two_runtimes(backend: Backend) {
    let mock = MockLlmServer::start().await.unwrap();
    for _ in 0..3 {
        mock.push_reply(answer_of_90_tokens());
    }
    let budget = KeyBudget::new("openai", Budget::usd(0.25), Duration::from_secs(3600));
    let open = || async {
        backend
            .builder(client(&mock, &[("openai/*", answer_price())]))
            .budget_per_key(budget.clone())
            .open()
            .await
            .unwrap()
    };
    let (first, second) = (open().await, open().await);
    let call = |i: u32| {
        llm_call(
            ChatRequest::new("openai/gpt-4o-mini")
                .user(format!("Question {i}"))
                .max_tokens(100),
        )
    };
    first.run(call(1)).await.unwrap();
    second.run(call(2)).await.unwrap();
    let err = first.run(call(3)).await.unwrap_err().to_string();
    assert!(
        err.contains("the budget of provider `openai` ($0.2500 per 3600s)"),
        "{err}"
    );
    assert!(err.contains("$0.1800"), "{err}");
    assert_eq!(mock.request_count(), 2);
    // Other providers are not held by it.
    second
        .run(llm_call(
            ChatRequest::new("anthropic/c").user("Hi").max_tokens(100),
        ))
        .await
        .unwrap();
    first.shutdown().await;
    second.shutdown().await;
}

/// A call of at most 100 answer tokens: at [`answer_price`], it reserves $0.10.
fn call_of_100_tokens(i: u32) -> llmjobs::JobCall<ChatResponse> {
    llm_call(
        ChatRequest::new("openai/gpt-4o-mini")
            .user(format!("Question {i}"))
            .max_tokens(100),
    )
}

pub(crate) async fn concurrent_calls_from_two_runtimes_never_overshoot_a_key_budget(
    backend: Backend,
) {
    let mock = MockLlmServer::start().await.unwrap();
    for _ in 0..8 {
        mock.push_reply(answer_of_90_tokens());
    }
    // Every call is still in flight when the others start.
    mock.set_delay(Duration::from_millis(500));
    // Each call reserves $0.10 and costs $0.09: three fit in $0.35 whatever the timing (three
    // in flight hold $0.30; three answered spent $0.27), a fourth never does.
    let budget = KeyBudget::new("openai", Budget::usd(0.35), Duration::from_secs(3600));
    let open = || async {
        backend
            .builder(client(&mock, &[("openai/*", answer_price())]))
            .budget_per_key(budget.clone())
            .open()
            .await
            .unwrap()
    };
    let (first, second) = (open().await, open().await);
    let mut handles = Vec::new();
    for i in 0..8 {
        let jobs = if i % 2 == 0 { &first } else { &second };
        handles.push(jobs.spawn(call_of_100_tokens(i)).await.unwrap());
    }
    let mut refused = 0;
    for handle in handles {
        if let Err(e) = handle.wait().await {
            let message = e.to_string();
            assert!(
                message.contains("the budget of provider `openai`"),
                "{message}"
            );
            refused += 1;
        }
    }
    assert_eq!(
        mock.request_count(),
        3,
        "exactly the calls that fit were sent"
    );
    assert_eq!(refused, 5);
    let usage = total(&first, UsageFilter::new()).await;
    assert_eq!(usage.calls, 3, "{usage:?}");
    assert!(close(usage.cost_usd, 0.27), "{usage:?}");
    first.shutdown().await;
    second.shutdown().await;
}

pub(crate) async fn a_call_in_flight_holds_its_room_but_is_no_spend_in_usage(backend: Backend) {
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply(answer_of_90_tokens());
    mock.set_delay(Duration::from_millis(1500));
    let budget = KeyBudget::new("openai", Budget::usd(0.15), Duration::from_secs(3600));
    let jobs = backend
        .builder(client(&mock, &[("openai/*", answer_price())]))
        .budget_per_key(budget)
        .open()
        .await
        .unwrap();
    let in_flight = jobs.spawn(call_of_100_tokens(1)).await.unwrap();
    eventually("the first call to be sent", || mock.request_count() == 1).await;
    // Its $0.10 reservation leaves no room for a second call of $0.10.
    let err = jobs
        .run(call_of_100_tokens(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("(of which $0.1000, "), "{err}");
    assert!(err.contains("reserved by calls in flight"), "{err}");
    assert_eq!(mock.request_count(), 1);
    // The reservation is no spend: usage reports show nothing yet.
    assert!(jobs.usage(UsageFilter::new()).await.unwrap().is_empty());
    let db = llmjobs::Inspector::open(&backend.url()).await.unwrap();
    assert!(db.usage(UsageFilter::new()).await.unwrap().is_empty());
    in_flight.wait().await.unwrap();
    let usage = total(&jobs, UsageFilter::new()).await;
    assert_eq!(usage.calls, 1, "the answer replaced the reservation");
    assert!(close(usage.cost_usd, 0.09), "{usage:?}");
    jobs.shutdown().await;
}

/// A worker process reserves $0.10 of a $0.15 key budget (3-second leases) for a call the mock
/// holds for ten minutes, and is killed. Another runtime's calls of $0.10 are refused while the
/// dead worker's reservation holds, and sent once it has expired.
pub(crate) async fn a_dead_processes_reservation_expires_with_its_lease(backend: Backend) {
    let mock = MockLlmServer::start().await.unwrap();
    mock.push_reply_for(
        "held",
        MockReply::text("too late").delayed(Duration::from_secs(600)),
    );
    let budget = KeyBudget::new("openai", Budget::usd(0.15), Duration::from_secs(3600));
    let jobs = backend
        .builder(client(&mock, &[("openai/*", answer_price())]))
        .budget_per_key(budget)
        .open()
        .await
        .unwrap();
    let url = backend.url();
    let holder = WorkerProcess::start(WORKER, &["budget", &url, &mock.base_url()]);
    eventually("the held call to arrive", || mock.request_count() == 1).await;
    holder.kill();
    let killed_at = Instant::now();
    let err = jobs
        .run(call_of_100_tokens(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("reserved by calls in flight"), "{err}");
    let sent = loop {
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the dead worker's reservation never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        if jobs.run(call_of_100_tokens(2)).await.is_ok() {
            break killed_at.elapsed();
        }
    };
    // The lease was renewed at most a second before the kill, so it held two seconds more.
    assert!(
        sent >= Duration::from_millis(1_500),
        "the room was given back while the dead worker's lease held ({sent:?})"
    );
    assert_eq!(mock.request_count(), 2);
    jobs.shutdown().await;
}

pub(crate) async fn a_cache_hit_is_shared_across_runtimes_and_expires_after_its_ttl(
    backend: Backend,
) {
    let mock = MockLlmServer::start().await.unwrap();
    let cache = CompletionCache::new(Duration::from_millis(1500));
    let open = || async {
        backend
            .builder(client(&mock, &[("openai/*", answer_price())]))
            .llm_cache(cache)
            .open()
            .await
            .unwrap()
    };
    let (first, second) = (open().await, open().await);
    let request = ChatRequest::new("openai/gpt-4o-mini").user("What is 2 + 2?");
    let answer: ChatResponse = first.run(llm_call(request.clone())).await.unwrap();
    assert_eq!(mock.request_count(), 1);

    let hit: ChatResponse = second.run(llm_call(request.clone())).await.unwrap();
    assert_eq!(
        mock.request_count(),
        1,
        "the second runtime was answered by the cache"
    );
    assert_eq!(hit.text, answer.text);
    assert_eq!(hit.cost, Some(0.0));
    let usage = total(&second, UsageFilter::new()).await;
    assert_eq!((usage.calls, usage.cache_hits), (2, 1), "{usage:?}");
    assert!(close(usage.cost_usd, answer.cost.unwrap()));

    // A sampled request is not cached.
    let sampled = ChatRequest::new("openai/gpt-4o-mini")
        .user("What is 2 + 2?")
        .temperature(0.8);
    second.run(llm_call(sampled)).await.unwrap();
    assert_eq!(mock.request_count(), 2);

    // Once the answer expires, the request is sent again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while mock.request_count() == 2 {
        assert!(Instant::now() < deadline, "the cached answer never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _: ChatResponse = second.run(llm_call(request.clone())).await.unwrap();
    }
    assert_eq!(mock.request_count(), 3);
    first.shutdown().await;
    second.shutdown().await;
}
