//! A multi-step job surviving a kill: finished steps are replayed from the journal, not run
//! (and paid for) again.
//!
//! Try it by hand:
//!
//! ```sh
//! cargo run --example resume      # kill it with Ctrl-C (or `kill -9`) during step 3 or 4
//! cargo run --example resume      # resumes: the finished steps say "replayed", the rest run
//! ```
//!
//! Ctrl-C shuts down gracefully (the job is handed back at once); `kill -9` is a crash, which
//! the next run notices at once through the dead process's lock file. The database is
//! `resume.db` in the current folder; delete it to start over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use llmjobs::{JobContext, JobError, JobFilter, JobState, Jobs, Outcome, llm_job};

const TOPICS: [&str; 5] = ["history", "physics", "markets", "poetry", "biology"];

/// Five slow "LLM calls", each a journaled step.
#[llm_job]
async fn research(ctx: JobContext, question: String) -> Result<Vec<String>, JobError> {
    let mut notes = Vec::new();
    for (i, topic) in TOPICS.iter().enumerate() {
        let ran = AtomicBool::new(false);
        let note: String = ctx
            .step(topic, async {
                ran.store(true, Ordering::SeqCst);
                println!("  step {}/5 ({topic}): calling the model...", i + 1);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok::<_, JobError>(format!("{question} / {topic}: {} words", 100 + 17 * i))
            })
            .await?;
        if !ran.load(Ordering::SeqCst) {
            println!("  step {}/5 ({topic}): replayed from the journal", i + 1);
        }
        ctx.progress((i + 1) as f64 / 5.0, *topic).await;
        notes.push(note);
    }
    Ok(notes)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs = Jobs::builder()
        .url("sqlite://resume.db")
        .shutdown_grace(Duration::from_millis(200))
        .open()
        .await?;
    // Resume the job left by an earlier run, or start one.
    let unfinished = jobs
        .list(JobFilter::new().state(JobState::Running).limit(1))
        .await?;
    let pending = jobs
        .list(JobFilter::new().state(JobState::Pending).limit(1))
        .await?;
    let handle = match unfinished.first().or(pending.first()) {
        Some(status) => {
            println!(
                "resuming job {} (attempt {} was interrupted)",
                status.id, status.attempts
            );
            jobs.handle::<Vec<String>>(status.id)
        }
        None => {
            let handle = jobs.spawn(research("what changed in 2025".into())).await?;
            println!(
                "started job {}; press Ctrl-C during a step to interrupt it",
                handle.id()
            );
            handle
        }
    };

    let waited = tokio::select! {
        outcome = handle.clone().wait_timeout(Duration::from_secs(600)) => Some(outcome?),
        _ = tokio::signal::ctrl_c() => None,
    };
    match waited {
        Some(Outcome::Ready(notes)) => {
            println!("done:");
            for note in notes {
                println!("  {note}");
            }
        }
        Some(Outcome::Pending(_)) => println!("still running after 10 minutes"),
        None => println!("\ninterrupted: handing the job back; run again to resume it"),
    }
    jobs.shutdown().await;
    Ok(())
}
