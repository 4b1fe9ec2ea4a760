//! The main demo, an acceptance run: the 31 call configs of the original system, run as durable
//! `llm_call` jobs against a local mock LLM server (no API key, no internet), each meeting the
//! situation its description names, each judged against the expected outcome written from that
//! description.
//!
//! The mock is scripted per case (`examples/data/seed_expectations.json`, beside the fixture):
//! empty answers the default validator must catch, a stubborn answer that escalates to human
//! review, a first answer that fails and is retried with the debug tool, a truncated answer
//! (`content: null`, `finish_reason: "length"`), images the Claude proxy route refuses, a 429,
//! a 500, a call slower than its caller's wait. Every case is spawned at once; a live status
//! line runs until all have ended; then, per case, the expected and actual outcome, the answers
//! produced, the last escalation stage and the tokens, and a final line `N as expected, M not`.
//! The program exits non-zero if any case is not as expected.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --example llm_call
//! ```
//!
//! The jobs are stored in a temporary database; set `LLMJOBS_DB=sqlite://demo.db` to keep it.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use llmjobs::Jobs;
use llmjobs::llm::mock::MockLlmServer;
use llmjobs_testkit::acceptance::{self, CaseResult, Outcome};

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let started = Instant::now();
    let mock = MockLlmServer::start().await?;
    // Slow enough to watch the status line move.
    mock.set_delay(Duration::from_millis(400));
    let client = acceptance::client(&mock)?;
    let dir = tempfile::tempdir()?;
    let url = std::env::var("LLMJOBS_DB")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("llm_demo.db").display()));
    let jobs = Jobs::builder().url(&url).llm(client.clone()).open().await?;
    println!("mock LLM server at {}; jobs in {url}", mock.base_url());
    println!(
        "watch them live from another terminal:\n  cargo run -p llmjobs --features cli -- --db {url} watch"
    );

    let cases = acceptance::load_cases(acceptance::SEEDS, acceptance::EXPECTATIONS)?;
    let count = cases.len();
    let run = acceptance::run_cases(&jobs, &mock, &client, cases).await?;
    println!(
        "spawned {count} calls ({} routed straight to the background, as the original did)",
        run.background
    );

    // A live status line until every call has ended. A call handed to human review ends in the
    // `failed` state (flagged `needs_review`), so it counts there until the table below.
    loop {
        let counts = jobs.counts().await?;
        print!(
            "\r  pending {:>3}  running {:>3}  completed {:>3}  failed or for review {:>3}  ({:.1}s) ",
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

    let results = run.finish(&mock, &client).await?;
    println!("\n{}", CaseResult::header());
    for result in &results {
        println!("{}", result.line());
    }
    let count_of = |outcomes: &[Outcome]| {
        results
            .iter()
            .filter(|r| outcomes.contains(&r.outcome))
            .count()
    };
    let tokens_in: u64 = results.iter().map(|r| r.tokens_in).sum();
    let tokens_out: u64 = results.iter().map(|r| r.tokens_out).sum();
    println!(
        "\ncompleted {} ({} after a retry), failed {}, needs review {}; tokens in {tokens_in}, \
         out {tokens_out}; {} requests to the mock; {:.2}s",
        count_of(&[Outcome::Completed, Outcome::Retried]),
        count_of(&[Outcome::Retried]),
        count_of(&[Outcome::Failed]),
        count_of(&[Outcome::NeedsReview]),
        mock.request_count(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", acceptance::verdict(&results));
    jobs.shutdown().await;
    Ok(if results.iter().all(CaseResult::as_expected) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
