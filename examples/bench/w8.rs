//! W8: LLM rate-limit utilisation. 1,000 `llm_call` jobs run by 2 worker processes sharing one
//! SQLite database, against the mock server enforcing 6,000 requests/min and 600,000
//! tokens/min on the model (429 with `Retry-After` past them; a one-second burst, as OpenAI
//! enforces per-minute limits in slices) with 200 ms latency. Each call costs about 100 tokens,
//! so both budgets bind at once: the run cannot take less than about 10 s (`ideal_s`).
//!
//! The baseline runs the same calls as the original system did: each job posts the request
//! itself and, on a 429, sleeps a fixed second and tries again, with no limiter at all.

use std::time::{Duration, Instant};

use llmjobs::llm::mock::{MockLlmServer, MockRateLimit};
use llmjobs::llm::{ChatRequest, RateLimit, llm_call};
use llmjobs::{JobError, Jobs, llm_job};

use super::{start_workers, stop_workers};

const JOBS: usize = 1_000;
const PROCESSES: usize = 2;
const REQUESTS_PER_MIN: u64 = 6_000;
const TOKENS_PER_MIN: u64 = 600_000;
const MODEL: &str = "gpt-4o-mini";
const LATENCY: Duration = Duration::from_millis(200);
/// Jobs each worker runs at once: well above the ~20 calls in flight the limits allow.
const CONCURRENCY: u32 = 64;

/// A prompt of about 80 tokens; the mock's answer adds about 20.
fn prompt(n: usize) -> String {
    let mut text = format!("Request {n:04}: summarise this. ");
    while text.len() < 310 {
        text.push_str("The quick brown fox jumps over the lazy dog. ");
    }
    text.truncate(310);
    text
}

fn request(n: usize) -> ChatRequest {
    ChatRequest::new(format!("openai/{MODEL}"))
        .user(prompt(n))
        .max_tokens(20)
}

/// The baseline's job: one request, retried after a fixed second on every 429. Returns the
/// tokens it used and the 429s it met.
#[llm_job(name = "bench.naive_llm_call", retries = 0)]
async fn naive_llm_call(base_url: String, n: usize) -> Result<(u64, u64), JobError> {
    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt(n)}],
        "max_tokens": 20,
    });
    let mut refused = 0;
    loop {
        let response = http
            .post(format!("{base_url}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .map_err(JobError::msg)?;
        if response.status().as_u16() == 429 {
            refused += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let answer: serde_json::Value = response.json().await.map_err(JobError::msg)?;
        let tokens = answer["usage"]["total_tokens"].as_u64().unwrap_or(0);
        return Ok((tokens, refused));
    }
}

/// One W8 worker process: runs jobs until told to stop on stdin.
pub(crate) async fn child(url: &str, mock_url: &str, shared: bool) {
    let mut builder = Jobs::builder()
        .url(url)
        .concurrency(CONCURRENCY)
        .poll_interval(Duration::from_millis(50));
    if shared {
        let limit = RateLimit::new()
            .requests_per_minute(REQUESTS_PER_MIN as u32)
            .tokens_per_minute(TOKENS_PER_MIN);
        let client = MockLlmServer::client_builder_for(mock_url)
            .rate_limit("openai/*", limit)
            .shared_limits()
            .build()
            .expect("a client");
        builder = builder.llm(client);
    }
    let jobs = builder.open().await.expect("open the W8 database");
    println!("ready");
    let mut stop = String::new();
    let _ = std::io::stdin().read_line(&mut stop);
    jobs.shutdown().await;
}

/// Figures of one run.
struct Run {
    wall_s: f64,
    tokens: u64,
    rate_limited: u64,
}

impl Run {
    fn print(&self, label: &str) {
        let ideal_s = (JOBS as f64 / (REQUESTS_PER_MIN as f64 / 60.0))
            .max(self.tokens as f64 / (TOKENS_PER_MIN as f64 / 60.0));
        let per_min = self.tokens as f64 / self.wall_s * 60.0;
        println!(
            "{label} utilisation={:.3} rate_limited={} wall_s={:.2} ideal_s={ideal_s:.2}",
            per_min / TOKENS_PER_MIN as f64,
            self.rate_limited,
            self.wall_s,
        );
    }
}

async fn run(db_url: &str, shared: bool) -> Run {
    let mock = MockLlmServer::start().await.expect("start the mock");
    mock.set_delay(LATENCY);
    mock.set_rate_limit(
        MODEL,
        MockRateLimit::per_minute(REQUESTS_PER_MIN, TOKENS_PER_MIN),
    );
    let watcher = Jobs::builder()
        .url(db_url)
        .run_jobs(false)
        .open()
        .await
        .expect("open the W8 database");
    let mode = if shared { "shared" } else { "naive" };
    let children = start_workers(PROCESSES, &["w8", db_url, &mock.base_url(), mode]);
    let start = Instant::now();
    let tokens: u64 = if shared {
        let calls = (0..JOBS).map(|n| llm_call(request(n)));
        let mut tokens = 0;
        for handle in watcher.spawn_many(calls).await.expect("spawn") {
            tokens += handle.wait().await.expect("a W8 call").usage.total();
        }
        tokens
    } else {
        let calls = (0..JOBS).map(|n| naive_llm_call(mock.base_url(), n));
        let mut tokens = 0;
        for handle in watcher.spawn_many(calls).await.expect("spawn") {
            tokens += handle.wait().await.expect("a W8 baseline call").0;
        }
        tokens
    };
    let wall_s = start.elapsed().as_secs_f64();
    stop_workers(children);
    watcher.shutdown().await;
    Run {
        wall_s,
        tokens,
        rate_limited: mock.rate_limited_count(),
    }
}

/// Runs W8 with llmjobs' shared limits, then the naive baseline, each on a fresh database.
pub(crate) async fn w8(shared_db: &str, naive_db: &str) {
    run(shared_db, true).await.print("W8");
    run(naive_db, false).await.print("W8 baseline");
}
