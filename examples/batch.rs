//! A 1,000-request provider batch (`llm_batch`) that survives being killed half-way: the
//! restarted program resumes polling the batch it already submitted instead of submitting a
//! second one (and paying for it twice).
//!
//! Try it by hand:
//!
//! ```sh
//! cargo run --example batch    # Ctrl-C (or `kill -9`) it while it polls: "... 400 done ..."
//! cargo run --example batch    # prints "resumed batch batch_mock_1, ..." (the same id)
//! ```
//!
//! The batch goes to the mock LLM server's OpenAI batch API, which finishes a batch about 40 s
//! after it was created and fails one request (`item 13`) on purpose. The mock runs in a
//! process of its own (this program starts it in the background and reuses it on the next
//! run; it exits after two idle minutes), so it outlives the kill just as a real provider
//! would. Ctrl-C hands the job back at once; `kill -9` is a crash, which the next run notices
//! at once through the dead process's lock file. Either way, the mock's own count of batches
//! created is printed at the end: 1. State lives in `target/batch-demo/`; delete it to start
//! over.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use llmjobs::llm::mock::{MockBatchClock, MockLlmServer, MockReply};
use llmjobs::llm::{BatchOptions, BatchOutput, BatchRequest, ChatRequest, Price, llm_batch_with};
use llmjobs::{JobFilter, JobState, Jobs, Outcome};

const REQUESTS: usize = 1_000;
const MODEL: &str = "openai/gpt-4o-mini";
/// How long the mock keeps running without a poll before it exits.
const MOCK_IDLE_EXIT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("target/batch-demo");
    std::fs::create_dir_all(&dir)?;
    if std::env::args().nth(1).as_deref() == Some("serve-mock") {
        return serve_mock(&dir).await;
    }
    let mock_url = mock_server(&dir).await?;
    let client = MockLlmServer::client_builder_for(&mock_url)
        .price("openai/gpt-4o-mini", Price::per_million_tokens(0.15, 0.60))
        .build()?;
    let jobs = Jobs::builder()
        .url(format!("sqlite://{}", dir.join("jobs.db").display()))
        .llm(client)
        .shutdown_grace(Duration::from_millis(200))
        .on_progress(|event| {
            if let Some(message) = &event.progress.message {
                println!("  {message}");
            }
        })
        .open()
        .await?;

    // Resume the batch job an earlier run left, or start one.
    let mut unfinished = Vec::new();
    for state in [JobState::Running, JobState::Pending] {
        let filter = JobFilter::new()
            .name("llmjobs.llm_batch")
            .state(state)
            .limit(1);
        unfinished.extend(jobs.list(filter).await?);
    }
    let handle = match unfinished.first() {
        Some(status) => {
            println!(
                "found unfinished batch job {}: resuming it (nothing is submitted again)",
                status.id
            );
            jobs.handle::<BatchOutput>(status.id)
        }
        None => {
            let requests = (0..REQUESTS)
                .map(|n| {
                    let prompt = format!("Write one line about item {n}.");
                    BatchRequest::new(format!("item-{n}"), ChatRequest::new(MODEL).user(prompt))
                })
                .collect();
            let options =
                BatchOptions::new().poll_interval(Duration::from_secs(1), Duration::from_secs(2));
            // A batch is long-running: this returns its handle at once.
            let outcome = jobs
                .run_with_timeout(llm_batch_with(requests, options), Duration::from_secs(5))
                .await?;
            let Outcome::Pending(handle) = outcome else {
                unreachable!("a batch job always goes to the background");
            };
            println!(
                "started batch job {} with {REQUESTS} requests; press Ctrl-C while it polls",
                handle.id()
            );
            handle
        }
    };

    let waited = tokio::select! {
        output = handle.wait() => Some(output?),
        _ = tokio::signal::ctrl_c() => None,
    };
    match waited {
        Some(output) => {
            println!(
                "done: {} answered, {} failed; batches {:?}; {} tokens, ${:.4} at the batch price",
                output.succeeded,
                output.failed,
                output.batch_ids,
                output.usage.total(),
                output.cost_usd.unwrap_or_default()
            );
            if let Some(error) = output.error("item-13") {
                println!("item-13: {error}");
            }
            println!(
                "item-7: {}",
                output.answer("item-7").map_or("-", |a| &a.text)
            );
            let created = std::fs::read_to_string(dir.join("mock.created")).unwrap_or_default();
            println!(
                "batches created at the mock server since it started: {}",
                created.trim()
            );
        }
        None => println!("\ninterrupted: handing the job back; run again to resume it"),
    }
    jobs.shutdown().await;
    Ok(())
}

/// The URL of the mock server an earlier run started, if it still answers; otherwise starts
/// one in a process of its own, which Ctrl-C in this terminal does not reach.
async fn mock_server(dir: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let url_file = dir.join("mock.url");
    if let Ok(url) = std::fs::read_to_string(&url_file) {
        let addr = url.trim().trim_start_matches("http://").to_string();
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(url.trim().to_string());
        }
    }
    let _ = std::fs::remove_file(&url_file);
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command.arg("serve-mock");
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(url) = std::fs::read_to_string(&url_file)
            && !url.trim().is_empty()
        {
            return Ok(url.trim().to_string());
        }
        if Instant::now() > deadline {
            return Err("the mock server did not start within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The mock server's own process: batches finish 40 s after they are created; `item 13`
/// fails. Writes its URL, and how many batches were created, to files in `dir`.
async fn serve_mock(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockLlmServer::start().await?;
    mock.set_batch_clock(MockBatchClock::Elapsed(Duration::from_secs(40)));
    mock.always_reply_matching(
        "gpt-4o-mini",
        "item 13.",
        MockReply::status(400, "item 13 is refused on purpose"),
    );
    let url_file = dir.join("mock.url");
    std::fs::write(dir.join("mock.url.tmp"), mock.base_url())?;
    std::fs::rename(dir.join("mock.url.tmp"), &url_file)?;
    let mut last_activity = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let batches = mock.batches();
        std::fs::write(dir.join("mock.created"), batches.len().to_string())?;
        let polls: u32 = batches.iter().map(|b| b.polls).sum();
        if polls != last_activity.0 {
            last_activity = (polls, Instant::now());
        } else if last_activity.1.elapsed() > MOCK_IDLE_EXIT {
            let _ = std::fs::remove_file(&url_file);
            return Ok(());
        }
    }
}
