//! The main demo: the LLM calls of the original system, run as durable `llm_call` jobs against a
//! local mock LLM server (no API key, no internet).
//!
//! It starts the mock server in-process, spawns every call config of
//! `examples/data/seed_prompts.json` at once (OpenAI-compatible and Claude-proxy models,
//! validators, agent checks), shows a live status line while they run, and prints a summary:
//! completed, failed, needing review, tokens and time. The mock answers slowly and fails a few
//! calls on purpose (a 429 with `Retry-After`, a 500), which the jobs retry.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --example llm_call
//! ```
//!
//! The jobs are stored in a temporary database; set `LLMJOBS_DB=sqlite://demo.db` to keep it.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use llmjobs::llm::mock::{MockLlmServer, MockReply};
use llmjobs::llm::{ChatRequest, ChatResponse, RetryPolicy, llm_call};
use llmjobs::{JobHandle, JobState, Jobs};

const SEEDS: &str = include_str!("data/seed_prompts.json");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mock = MockLlmServer::start().await?;
    mock.set_delay(Duration::from_millis(400));
    // A few failures the jobs must ride out.
    mock.push_reply_for("gpt-4o-mini", MockReply::rate_limited(1));
    mock.push_reply_for("gemini-1.5-flash-001", MockReply::server_error());

    let client = mock
        .client_builder()
        // The seeds also name Vertex AI models, which the original reached through LiteLLM.
        .route_keeping_prefix("vertex_ai/", "openai")
        .retry(RetryPolicy::new().base_delay(Duration::from_millis(200)))
        .build()?;
    let dir = tempfile::tempdir()?;
    let url = std::env::var("LLMJOBS_DB")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("llm_demo.db").display()));
    let jobs = Jobs::builder().url(&url).llm(client).open().await?;
    println!("mock LLM server at {}; jobs in {url}", mock.base_url());
    println!(
        "watch them live from another terminal:\n  cargo run -p llmjobs --features cli -- --db {url} watch"
    );

    let seeds: Vec<serde_json::Value> = serde_json::from_str(SEEDS)?;
    let mut handles: Vec<(String, String, JobHandle<ChatResponse>)> = Vec::new();
    let mut background = 0;
    for seed in &seeds {
        let id = seed["test_case_id"].as_str().unwrap_or("?").to_string();
        let request = ChatRequest::from_value(seed["llm_config"].clone())?;
        let model = request.model.clone();
        let call = llm_call(request);
        if call.is_long_running() {
            background += 1;
        }
        handles.push((id, model, jobs.spawn(call).await?));
    }
    println!(
        "spawned {} calls ({background} routed straight to the background, as the original did)",
        handles.len()
    );

    // A live status line until every call has ended.
    loop {
        let counts = jobs.counts().await?;
        print!(
            "\r  pending {:>3}  running {:>3}  completed {:>3}  failed {:>3}  ({:.1}s) ",
            counts.pending,
            counts.running,
            counts.completed,
            counts.failed,
            started.elapsed().as_secs_f64()
        );
        std::io::stdout().flush()?;
        if counts.unfinished() == 0 {
            println!();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!(
        "\n{:<56} {:<50} {:>9} {:>8} {:>7}",
        "call", "model", "outcome", "attempts", "tokens"
    );
    let mut totals: HashMap<&str, usize> = HashMap::new();
    let (mut tokens_in, mut tokens_out) = (0, 0);
    for (id, model, handle) in &handles {
        let status = handle.status().await?;
        let (outcome, tokens) = match handle.wait().await {
            Ok(response) => {
                tokens_in += response.total_usage.input_tokens;
                tokens_out += response.total_usage.output_tokens;
                ("completed", response.total_usage.total().to_string())
            }
            Err(_) if status.needs_review => ("review", "-".to_string()),
            Err(_) if status.state == JobState::Failed => ("failed", "-".to_string()),
            Err(_) => ("cancelled", "-".to_string()),
        };
        *totals.entry(outcome).or_default() += 1;
        println!(
            "{id:<56} {model:<50} {outcome:>9} {:>8} {tokens:>7}",
            status.attempts
        );
    }
    println!(
        "\ncompleted {}, failed {}, needs review {}; tokens in {tokens_in}, out {tokens_out}; \
         {} requests to the mock; {:.2}s",
        totals.get("completed").unwrap_or(&0),
        totals.get("failed").unwrap_or(&0),
        totals.get("review").unwrap_or(&0),
        mock.request_count(),
        started.elapsed().as_secs_f64()
    );
    jobs.shutdown().await;
    Ok(())
}
