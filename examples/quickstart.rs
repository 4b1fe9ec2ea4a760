//! Quick start: a durable job that simulates a slow LLM call.
//!
//! It spawns a few `summarize` jobs into `quickstart.db` (created in the current folder), waits
//! on one with a timeout shorter than the job (getting a handle back while the same attempt
//! keeps running), prints statuses, and then waits for the results.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! Kill it half-way (Ctrl-C) and run it again: the jobs left unfinished are resumed, and each
//! job's finished `draft` step is replayed from the journal instead of being "paid for" again.

use std::time::{Duration, Instant};

use llmjobs::{JobContext, JobError, JobFilter, JobState, Jobs, Outcome, llm_job};

/// Stands in for a paid LLM call: slow, and the reason to journal its result.
async fn call_model(text: &str, words: u32, millis: u64) -> Result<String, JobError> {
    tokio::time::sleep(Duration::from_millis(millis)).await;
    let summary: Vec<&str> = text.split_whitespace().take(words as usize).collect();
    Ok(format!("  {}…  ", summary.join(" ")))
}

/// Summarizes `text` in about `words` words.
#[llm_job(max_concurrency = 4)]
async fn summarize(
    ctx: JobContext,
    text: String,
    words: u32,
    model_millis: u64,
) -> Result<String, JobError> {
    ctx.progress(0.1, "drafting").await;
    // Journaled: after a crash, a resumed job gets the stored draft back.
    let draft: String = ctx
        .step("draft", call_model(&text, words, model_millis))
        .await?;
    ctx.progress(0.9, "polishing").await;
    Ok(draft.trim().to_string())
}

const TEXT: &str = "Durable jobs survive crashes: every job is recorded in the database \
                    before it runs, and finished steps are never paid for twice.";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("LLMJOBS_DB").unwrap_or_else(|_| "sqlite://quickstart.db".into());
    let started = Instant::now();
    let jobs = Jobs::open(&url).await?;
    println!("opened {url} as worker {}", jobs.owner());

    // Three quick jobs and one slow one.
    let mut quick = Vec::new();
    for words in [3, 5, 8] {
        quick.push(jobs.spawn(summarize(TEXT.into(), words, 300)).await?);
    }
    let slow = jobs.spawn(summarize(TEXT.into(), 12, 1500)).await?;
    let slow_id = slow.id();
    println!("spawned 4 jobs; the slow one is {slow_id}");

    // Waiting less than the job takes gives a handle back; the attempt keeps running.
    let slow = match slow.wait_timeout(Duration::from_millis(500)).await? {
        Outcome::Ready(summary) => {
            println!("slow job already done: {summary}");
            None
        }
        Outcome::Pending(handle) => {
            let status = handle.status().await?;
            println!(
                "after 500 ms the slow job is {} (attempt {}, progress {})",
                status.state,
                status.attempts,
                status
                    .progress
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "none".into())
            );
            Some(handle)
        }
    };

    for handle in &quick {
        println!("{}: {}", handle.id(), handle.wait().await?);
    }
    if let Some(handle) = slow {
        println!("{}: {}", handle.id(), handle.wait().await?);
    }

    // Reattach by id, as another process would.
    let status = jobs.handle::<String>(slow_id).status().await?;
    assert_eq!(status.state, JobState::Completed);
    println!(
        "status of {slow_id}: {} after {} attempt(s), owner {}",
        status.state,
        status.attempts,
        status.owner.as_deref().unwrap_or("-")
    );

    let recent = jobs.list(JobFilter::new().limit(10)).await?;
    let completed = recent
        .iter()
        .filter(|s| s.state == JobState::Completed)
        .count();
    println!(
        "{completed} of the {} most recent jobs in {url} are completed; took {:.2?}",
        recent.len(),
        started.elapsed()
    );
    jobs.shutdown().await;
    Ok(())
}
