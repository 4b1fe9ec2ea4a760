//! Progress callbacks and cancellation.
//!
//! Three "writer" jobs stream text in chunks and report progress (stage, fraction, partial
//! output, token counts). A global callback on the builder sees every report; one job is
//! watched through its progress stream, another through `on_progress`; the third is cancelled
//! half-way, and its body sees `ctx.cancelled()` before its future is dropped.
//!
//! Run it with:
//!
//! ```sh
//! cargo run --example progress
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llmjobs::{CancelOutcome, JobContext, JobError, JobState, Jobs, Progress, llm_job};

/// Writes `chunks` chunks of text, 150 ms apart, reporting after each.
#[llm_job]
async fn write_story(ctx: JobContext, title: String, chunks: u32) -> Result<String, JobError> {
    let watcher = ctx.clone();
    let title2 = title.clone();
    tokio::spawn(async move {
        watcher.cancelled().await;
        println!("    [{title2}] saw the cancellation; cleaning up");
    });
    let mut text = String::new();
    for i in 1..=chunks {
        tokio::time::sleep(Duration::from_millis(150)).await;
        text.push_str(&format!("chunk {i}. "));
        ctx.report(
            Progress::stage("writing")
                .with_fraction(f64::from(i) / f64::from(chunks))
                .with_message(format!("{title}: chunk {i} of {chunks}"))
                .with_partial_output(text.clone())
                .with_tokens(12, u64::from(i) * 3),
        );
    }
    Ok(text)
}

fn bar(fraction: f64) -> String {
    let filled = (fraction * 20.0).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reports = Arc::new(AtomicUsize::new(0));
    let counter = reports.clone();
    let dir = tempfile::tempdir()?;
    let jobs = Jobs::builder()
        .url(format!(
            "sqlite://{}",
            dir.path().join("progress.db").display()
        ))
        .on_progress(move |_event| {
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .open()
        .await?;

    let streamed = jobs.spawn(write_story("streamed".into(), 8)).await?;
    let called_back = jobs.spawn(write_story("called back".into(), 6)).await?;
    let doomed = jobs.spawn(write_story("doomed".into(), 20)).await?;

    called_back.on_progress(|p| {
        println!(
            "  on_progress  {} {}",
            bar(p.fraction.unwrap_or(0.0)),
            p.message.unwrap_or_default()
        );
    });
    let cancel_later = {
        let doomed = doomed.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let outcome = doomed.cancel().await?;
            assert_eq!(outcome, CancelOutcome::Requested);
            println!("  cancelled 'doomed' while it ran");
            Ok::<_, llmjobs::Error>(())
        })
    };

    let mut stream = streamed.progress();
    while let Some(p) = stream.next().await {
        println!(
            "  stream       {} {} ({} tokens out)",
            bar(p.fraction.unwrap_or(0.0)),
            p.message.unwrap_or_default(),
            p.output_tokens.unwrap_or(0)
        );
    }
    cancel_later.await??;

    println!("streamed:    {}", streamed.wait().await?);
    println!("called back: {}", called_back.wait().await?);
    let status = doomed.status().await?;
    assert_eq!(status.state, JobState::Cancelled);
    let last: Option<Progress> = status.progress.and_then(|p| serde_json::from_value(p).ok());
    println!(
        "doomed:      {} at {:.0}% ({} progress reports seen by the global callback)",
        status.state,
        last.and_then(|p| p.fraction).unwrap_or(0.0) * 100.0,
        reports.load(Ordering::Relaxed)
    );
    jobs.shutdown().await;
    Ok(())
}
