//! A worker process for the crash tests: it spawns and runs jobs on a database file, and the
//! tests SIGKILL it at chosen points.
//!
//! Usage:
//!   llmjobs-test-worker spawn DB LOG COUNT SLEEP_MS   spawn COUNT jobs, log `spawned`, then run jobs forever
//!   llmjobs-test-worker steps DB LOG                    spawn one five-step job, then run jobs forever
//!   llmjobs-test-worker long DB LOG                     spawn one job that sleeps a minute, then run jobs forever
//!   llmjobs-test-worker llm3 DB LOG MOCK_URL            spawn one job of three LLM calls, then run jobs forever
//!   llmjobs-test-worker batch DB MOCK_URL COUNT         spawn one OpenAI batch of COUNT requests, then run jobs forever
//!   llmjobs-test-worker torture DB LOG COUNT            spawn COUNT two-step jobs, then run jobs forever
//!   llmjobs-test-worker run DB [MOCK_URL]               run jobs until none is left unfinished
//!   llmjobs-test-worker hold DB MOCK_URL                spawn one `llm_call` to `openai/held` under a
//!                                                       shared limit of one call at a time (3 s
//!                                                       leases), then run jobs forever
//!   llmjobs-test-worker budget DB MOCK_URL              spawn one call to `openai/held` under a key
//!                                                       budget of $0.15 for `openai` ($1 per
//!                                                       thousand answer tokens, 3 s budget leases;
//!                                                       the call reserves $0.10), then run jobs
//!                                                       forever

use std::time::Duration;

use llmjobs::llm::mock::MockLlmServer;
use llmjobs::llm::{
    BatchOptions, BatchRequest, ChatRequest, KeyBudget, Price, RateLimit, llm_batch_with, llm_call,
};
use llmjobs::{Budget, JobContext, JobError, JobFilter, JobState, Jobs, llm_job};
use llmjobs_testkit::append_line;

/// Logs its start and end to `log`, sleeping in between like a slow LLM call.
#[llm_job(max_concurrency = 4)]
async fn logged_sleep(
    ctx: JobContext,
    n: u32,
    sleep_ms: u64,
    log: String,
) -> Result<u32, JobError> {
    let log = std::path::Path::new(&log);
    append_line(
        log,
        &format!("start {} {n} attempt={}", ctx.id(), ctx.attempt()),
    );
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    append_line(log, &format!("done {} {n}", ctx.id()));
    Ok(n * 2)
}

/// Five journaled steps; each step logs when its body runs and when it has been committed, and
/// pauses after committing so a test can kill the process between steps.
#[llm_job]
async fn five_steps(ctx: JobContext, log: String) -> Result<u64, JobError> {
    let log = std::path::Path::new(&log);
    let mut total = 0;
    for i in 1..=5u64 {
        let value: u64 = ctx
            .step("square", async {
                append_line(log, &format!("run {i}"));
                Ok::<_, JobError>(i * i)
            })
            .await?;
        append_line(log, &format!("committed {i}"));
        total += value;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(total)
}

/// Logs when its future is dropped, so a test can see a cancellation reach the body.
struct DropLog {
    log: std::path::PathBuf,
    line: String,
}

impl Drop for DropLog {
    fn drop(&mut self) {
        append_line(&self.log, &self.line);
    }
}

/// Sleeps a minute; logs `start ID` when it starts and `dropped ID` when its future is dropped.
#[llm_job]
pub async fn guarded_sleep(ctx: JobContext, log: String) -> Result<(), JobError> {
    let log = std::path::PathBuf::from(log);
    append_line(&log, &format!("start {}", ctx.id()));
    let _guard = DropLog {
        line: format!("dropped {}", ctx.id()),
        log,
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

/// Logs its start and end times (microseconds since the Unix epoch) to `log`; at most two
/// with the same model run at once.
#[llm_job(concurrency_key = model, key_limit = 2)]
pub async fn keyed_sleep(model: String, sleep_ms: u64, log: String) -> Result<(), JobError> {
    let log = std::path::Path::new(&log);
    append_line(
        log,
        &format!("start {} {model}", llmjobs_testkit::micros_now()),
    );
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    append_line(
        log,
        &format!("end {} {model}", llmjobs_testkit::micros_now()),
    );
    Ok(())
}

/// Logs `start PID ID MICROS` and `done PID ID MICROS` around a sleep; at most three run at
/// once over every process sharing the database.
#[llm_job(max_concurrency = 3)]
pub async fn limited_sleep(ctx: JobContext, sleep_ms: u64, log: String) -> Result<(), JobError> {
    let log = std::path::Path::new(&log);
    let pid = std::process::id();
    append_line(
        log,
        &format!("start {pid} {} {}", ctx.id(), llmjobs_testkit::micros_now()),
    );
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    append_line(
        log,
        &format!("done {pid} {} {}", ctx.id(), llmjobs_testkit::micros_now()),
    );
    Ok(())
}

/// Three LLM calls in a row; logs `answered N` after each is journaled, and pauses after each
/// so a test can kill the process between calls.
#[llm_job]
async fn three_calls(ctx: JobContext, log: String) -> Result<Vec<String>, JobError> {
    let log = std::path::Path::new(&log);
    let mut answers = Vec::new();
    for i in 1..=3 {
        let request = ChatRequest::new("openai/gpt-4o-mini").user(format!("question {i}"));
        let response = ctx.llm().call(&request).await?;
        append_line(log, &format!("answered {i}"));
        answers.push(response.text);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(answers)
}

/// One call of at most 100 answer tokens to `openai/held`, under the worker's key budget; a job
/// only this binary runs, so no test runtime takes it over once the worker is killed.
#[llm_job]
async fn budgeted_call(ctx: JobContext) -> Result<String, JobError> {
    let request = ChatRequest::new("openai/held").user("held").max_tokens(100);
    Ok(ctx.llm().call(&request).await?.text)
}

/// Two journaled steps, each logged as `run ID STEP` inside the step and `committed ID STEP`
/// after it returns (so after its journal entry is durable).
#[llm_job]
async fn two_steps(ctx: JobContext, log: String) -> Result<u32, JobError> {
    let log = std::path::Path::new(&log);
    let id = ctx.id();
    let mut total = 0;
    for step in 1..=2u32 {
        total += ctx
            .step("work", async {
                append_line(log, &format!("run {id} {step}"));
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<_, JobError>(step)
            })
            .await?;
        append_line(log, &format!("committed {id} {step}"));
    }
    Ok(total)
}

/// Logs `self_destruct ID ATTEMPT`, then aborts the whole process: a body that overflows its
/// stack or is OOM-killed does the same to its worker.
#[llm_job(retries = 0)]
async fn self_destruct(ctx: JobContext, log: String) -> Result<(), JobError> {
    append_line(
        std::path::Path::new(&log),
        &format!("self_destruct {} {}", ctx.id(), ctx.attempt()),
    );
    std::process::abort()
}

/// As `self_destruct`, with one retry.
#[llm_job(retries = 1)]
async fn self_destruct_twice(ctx: JobContext, log: String) -> Result<(), JobError> {
    append_line(
        std::path::Path::new(&log),
        &format!("self_destruct_twice {} {}", ctx.id(), ctx.attempt()),
    );
    std::process::abort()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: llmjobs-test-worker (spawn DB LOG COUNT SLEEP_MS | steps DB LOG | long DB LOG | llm3 DB LOG MOCK_URL | batch DB MOCK_URL COUNT | torture DB LOG COUNT | run DB [MOCK_URL] | hold DB MOCK_URL | budget DB MOCK_URL)";
    let mode = args.get(1).ok_or(usage)?;
    let db = args.get(2).ok_or(usage)?;
    let mut builder = Jobs::builder().url(db.as_str()).concurrency(8);
    let mock_url = match mode.as_str() {
        "llm3" => args.get(4),
        "batch" => args.get(3),
        "run" => args.get(3),
        _ => None,
    };
    if let Some(url) = mock_url {
        builder = builder.llm(MockLlmServer::client_builder_for(url).build()?);
    }
    if mode == "hold" {
        let url = args.get(3).ok_or(usage)?;
        let client = MockLlmServer::client_builder_for(url)
            .rate_limit("openai/held", RateLimit::new().max_concurrency(1))
            .shared_limits()
            .shared_limits_lease(Duration::from_secs(3))
            .build()?;
        builder = builder.llm(client);
    }
    if mode == "budget" {
        let url = args.get(3).ok_or(usage)?;
        let client = MockLlmServer::client_builder_for(url)
            .price("openai/*", Price::per_million_tokens(0.0, 1000.0))
            .build()?;
        let budget = KeyBudget::new("openai", Budget::usd(0.15), Duration::from_secs(3600));
        builder = builder
            .llm(client)
            .budget_per_key(budget)
            .budget_lease(Duration::from_secs(3));
    }
    let jobs = builder.open().await?;
    match mode.as_str() {
        "spawn" => {
            let log = args.get(3).ok_or(usage)?;
            let count: u32 = args.get(4).ok_or(usage)?.parse()?;
            let sleep_ms: u64 = args.get(5).ok_or(usage)?.parse()?;
            for n in 0..count {
                jobs.spawn(logged_sleep(n, sleep_ms, log.clone())).await?;
            }
            append_line(std::path::Path::new(log), "spawned");
            println!("spawned {count}");
            std::future::pending::<()>().await;
        }
        "steps" => {
            let log = args.get(3).ok_or(usage)?;
            jobs.spawn(five_steps(log.clone())).await?;
            std::future::pending::<()>().await;
        }
        "long" => {
            let log = args.get(3).ok_or(usage)?;
            jobs.spawn(guarded_sleep(log.clone())).await?;
            std::future::pending::<()>().await;
        }
        "llm3" => {
            let log = args.get(3).ok_or(usage)?;
            jobs.spawn(three_calls(log.clone())).await?;
            std::future::pending::<()>().await;
        }
        "batch" => {
            let count: u32 = args.get(4).ok_or(usage)?.parse()?;
            let requests = (0..count)
                .map(|n| {
                    let request = ChatRequest::new("openai/gpt-4o-mini").user(format!("item {n}"));
                    BatchRequest::new(format!("item-{n}"), request)
                })
                .collect();
            let fast = Duration::from_millis(50);
            jobs.spawn(llm_batch_with(
                requests,
                BatchOptions::new().poll_interval(fast, fast),
            ))
            .await?;
            std::future::pending::<()>().await;
        }
        "hold" => {
            jobs.spawn(llm_call(ChatRequest::new("openai/held").user("held")))
                .await?;
            std::future::pending::<()>().await;
        }
        "budget" => {
            jobs.spawn(budgeted_call()).await?;
            std::future::pending::<()>().await;
        }
        "torture" => {
            let log = args.get(3).ok_or(usage)?;
            let count: u32 = args.get(4).ok_or(usage)?.parse()?;
            for _ in 0..count {
                jobs.spawn(two_steps(log.clone())).await?;
            }
            append_line(std::path::Path::new(log), "spawned");
            std::future::pending::<()>().await;
        }
        "run" => loop {
            let pending = jobs
                .list(JobFilter::new().state(JobState::Pending).limit(1))
                .await?
                .len();
            let running = jobs
                .list(JobFilter::new().state(JobState::Running).limit(1))
                .await?
                .len();
            if pending + running == 0 {
                jobs.shutdown().await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        },
        other => return Err(format!("unknown mode `{other}`; {usage}").into()),
    }
    Ok(())
}
