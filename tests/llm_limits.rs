//! Rate limits hold over bursts, measured where the requests arrive: at the mock server.

use std::time::{Duration, Instant};

use llmjobs::llm::mock::MockLlmServer;
use llmjobs::llm::{ChatRequest, LlmClient, RateLimit};

/// The most requests that arrived within any span of `window`.
fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Opens pooled connections first (with a model outside the measured budget), so that
/// connection set-up does not skew the arrival times of the measured burst.
async fn warm_up(mock: &MockLlmServer, client: &LlmClient) {
    burst(client, "openai/warm-up", 10, 10).await;
    mock.clear_requests();
}

async fn burst(client: &LlmClient, model: &str, calls: usize, max_tokens: u32) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let client = client.clone();
        let req = ChatRequest::new(model)
            .user(format!("call {i}"))
            .max_tokens(max_tokens);
        tasks.spawn(async move { client.call(&req).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().expect("every call succeeds");
    }
}

#[tokio::test]
async fn requests_per_window_hold_over_a_burst_of_50() {
    let mock = MockLlmServer::start().await.unwrap();
    let window = Duration::from_millis(500);
    let client = mock
        .client_builder()
        .rate_limit(
            "openai/gpt-*",
            RateLimit::new().requests_per_minute(10).window(window),
        )
        .build()
        .unwrap();
    warm_up(&mock, &client).await;
    let start = Instant::now();
    burst(&client, "openai/gpt-4o-mini", 50, 50).await;

    let times: Vec<Instant> = mock.requests().iter().map(|r| r.received_at).collect();
    assert_eq!(times.len(), 50);
    // Arrival times lag the limiter's clock by a little loopback jitter; allow for it.
    assert!(max_in_window(&times, window - Duration::from_millis(100)) <= 10);
    // Five windows' worth of requests need at least four full windows.
    assert!(start.elapsed() >= window * 4, "{:?}", start.elapsed());
}

#[tokio::test]
async fn tokens_per_window_hold_over_a_burst_of_50() {
    let mock = MockLlmServer::start().await.unwrap();
    let window = Duration::from_millis(500);
    let budget = 300;
    let client = mock
        .client_builder()
        .provider_rate_limit(
            "openai",
            RateLimit::new().tokens_per_minute(budget).window(window),
        )
        .build()
        .unwrap();
    warm_up(&mock, &client).await;
    tokio::time::sleep(window).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = client.clone();
        let req = ChatRequest::new("openai/gpt-4o-mini")
            .user(format!("call {i}"))
            .max_tokens(20);
        tasks.spawn(async move {
            (
                format!("call {i}"),
                client.call(&req).await.unwrap().usage.total(),
            )
        });
    }
    let mut usage = std::collections::HashMap::new();
    while let Some(done) = tasks.join_next().await {
        let (prompt, tokens) = done.unwrap();
        usage.insert(prompt, tokens);
    }
    let total: u64 = usage.values().sum();
    assert!(
        total > budget,
        "the burst needs more than one window's budget: {total}"
    );

    // Pair each arrival with the tokens that call really used; no window may hold more than
    // the budget.
    let mut arrivals: Vec<(Instant, u64)> = mock
        .requests()
        .iter()
        .map(|r| {
            let prompt = r.body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string();
            (r.received_at, usage[&prompt])
        })
        .collect();
    arrivals.sort();
    let span = window - Duration::from_millis(100);
    for (i, (start, _)) in arrivals.iter().enumerate() {
        let in_window: u64 = arrivals[i..]
            .iter()
            .take_while(|(t, _)| *t - *start < span)
            .map(|(_, tokens)| tokens)
            .sum();
        assert!(in_window <= budget, "{in_window} tokens within {span:?}");
    }
}

#[tokio::test]
async fn the_concurrency_cap_holds_for_a_model() {
    let mock = MockLlmServer::start().await.unwrap();
    mock.set_delay(Duration::from_millis(50));
    let client = mock
        .client_builder()
        .rate_limit("anthropic/*", RateLimit::new().max_concurrency(3))
        .build()
        .unwrap();
    let start = Instant::now();
    burst(&client, "anthropic/claude-haiku", 12, 10).await;
    // 12 calls of >= 50 ms, 3 at a time: at least 4 rounds.
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    let times: Vec<Instant> = mock.requests().iter().map(|r| r.received_at).collect();
    assert!(max_in_window(&times, Duration::from_millis(45)) <= 3);
}

#[tokio::test]
async fn limits_are_per_model_unless_set_per_provider() {
    let mock = MockLlmServer::start().await.unwrap();
    let window = Duration::from_millis(500);
    let client = mock
        .client_builder()
        .rate_limit(
            "openai/*",
            RateLimit::new().requests_per_minute(5).window(window),
        )
        .build()
        .unwrap();
    let start = Instant::now();
    tokio::join!(
        burst(&client, "openai/gpt-4o-mini", 5, 10),
        burst(&client, "openai/gpt-4o", 5, 10),
    );
    assert!(
        start.elapsed() < window,
        "two models, two budgets: {:?}",
        start.elapsed()
    );
}
