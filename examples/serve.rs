//! The HTTP job API and the web dashboard, over the demo's `llm_call` jobs answered by a local
//! mock LLM server: no API key, no internet.
//!
//! It runs the 31 calls of the main demo (`examples/llm_call.rs`: empty answers caught by the
//! validator, an answer escalated to human review, a 429, a 500, a call slower than its
//! caller's wait, ...), slowly enough to watch, and serves the dashboard while they run and
//! after. Run it with:
//!
//! ```sh
//! cargo run --example serve
//! ```
//!
//! and open the URL it prints (`LLMJOBS_ADDR=127.0.0.1:9000` to listen elsewhere on loopback,
//! `LLMJOBS_DB=sqlite://demo.db` to keep the jobs). More calls can be submitted with curl, as
//! the README's "HTTP and dashboard" section shows:
//!
//! ```sh
//! curl -si 'localhost:8787/jobs/llmjobs.llm_call?wait=5s' \
//!   -d '{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'
//! ```

use std::time::Duration;

use llmjobs::http::HttpApi;
use llmjobs::llm::mock::MockLlmServer;
use llmjobs::{Inspector, Jobs};
use llmjobs_testkit::acceptance;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let mock = MockLlmServer::start().await?;
    // Slow enough to watch the calls run on the page.
    mock.set_delay(Duration::from_millis(1500));
    let client = acceptance::client(&mock)?;
    let dir = tempfile::tempdir()?;
    let url = std::env::var("LLMJOBS_DB")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("serve_demo.db").display()));
    let jobs = Jobs::builder()
        .url(&url)
        .llm(client.clone())
        .concurrency(4)
        .open()
        .await?;
    let inspector = Inspector::open(&url).await?;
    let addr = std::env::var("LLMJOBS_ADDR").unwrap_or_else(|_| "127.0.0.1:8787".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("mock LLM server at {}; jobs in {url}", mock.base_url());
    println!(
        "dashboard and job API at http://{}/ (Ctrl-C to stop)",
        listener.local_addr()?
    );
    let server = tokio::spawn(
        // On loopback, for a demo: anyone on this machine may cancel and retry (a token in
        // LLMJOBS_HTTP_TOKEN would still be required).
        HttpApi::new(jobs.clone())
            .dashboard(inspector)
            .allow_unauthenticated_changes()
            .serve_on(listener),
    );

    let cases = acceptance::load_cases(acceptance::SEEDS, acceptance::EXPECTATIONS)?;
    let count = cases.len();
    let run = acceptance::run_cases(&jobs, &mock, &client, cases).await?;
    println!(
        "spawned the demo's {count} calls ({} routed straight to the background)",
        run.background
    );
    server.await??;
    Ok(())
}
