//! Journaled steps: committed steps are never run again, even across a SIGKILL.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use llmjobs::{JobContext, JobError, JobFilter, JobState, Jobs, llm_job};
use llmjobs_testkit::{TempDb, WorkerProcess, read_lines, wait_until};

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");

#[tokio::test(flavor = "multi_thread")]
async fn steps_committed_before_a_kill_are_not_run_again() {
    let db = TempDb::new();
    let log = db.file("steps.log");
    let db_path = db.path();
    let first = WorkerProcess::start(
        WORKER,
        &["steps", db_path.to_str().unwrap(), log.to_str().unwrap()],
    );
    wait_until(Duration::from_secs(60), "step 3 to be committed", || {
        read_lines(&log).iter().any(|l| l == "committed 3")
    });
    first.kill();
    assert!(
        !read_lines(&log).iter().any(|l| l == "run 4"),
        "killed too late"
    );

    let second = WorkerProcess::start(WORKER, &["run", db_path.to_str().unwrap()]);
    assert!(second.wait(Duration::from_secs(60)).success());

    let lines = read_lines(&log);
    for i in 1..=5 {
        let runs = lines.iter().filter(|l| **l == format!("run {i}")).count();
        assert_eq!(runs, 1, "step {i} ran {runs} times: {lines:?}");
    }
    let jobs = db.watcher().await;
    let all = jobs.list(JobFilter::new().limit(10)).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, JobState::Completed);
    assert_eq!(all[0].attempts, 2, "one attempt killed, one resumed");
    let total: u64 = jobs.handle(all[0].id).wait().await.unwrap();
    assert_eq!(total, 1 + 4 + 9 + 16 + 25);
    jobs.shutdown().await;
}

static FLAKY_STEP_RUNS: AtomicU32 = AtomicU32::new(0);
static FLAKY_AFTER_RUNS: AtomicU32 = AtomicU32::new(0);

#[llm_job(name = "retry_replays_steps", retries = 2)]
async fn retry_replays_steps(ctx: JobContext) -> Result<u32, JobError> {
    let paid: u32 = ctx
        .step("paid call", async {
            Ok::<_, JobError>(FLAKY_STEP_RUNS.fetch_add(1, Ordering::SeqCst) + 100)
        })
        .await?;
    if FLAKY_AFTER_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(JobError::msg("the second call timed out"));
    }
    Ok(paid)
}

#[tokio::test]
async fn a_retried_attempt_replays_the_steps_of_the_failed_one() {
    let db = TempDb::new();
    let jobs = Jobs::builder()
        .url(db.url())
        .backoff(llmjobs::Backoff {
            base: Duration::from_millis(10),
            factor: 2.0,
            cap: Duration::from_millis(50),
        })
        .open()
        .await
        .unwrap();
    assert_eq!(jobs.run(retry_replays_steps()).await.unwrap(), 100);
    assert_eq!(
        FLAKY_STEP_RUNS.load(Ordering::SeqCst),
        1,
        "the paid step ran once"
    );
    assert_eq!(FLAKY_AFTER_RUNS.load(Ordering::SeqCst), 2, "two attempts");
    jobs.shutdown().await;
}

static LOOP_RUNS: AtomicU32 = AtomicU32::new(0);

#[llm_job]
async fn same_name_in_a_loop(ctx: JobContext) -> Result<Vec<u32>, JobError> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(
            ctx.step("chunk", async move {
                LOOP_RUNS.fetch_add(1, Ordering::SeqCst);
                Ok::<_, JobError>(i * 10)
            })
            .await?,
        );
    }
    Ok(out)
}

#[tokio::test]
async fn steps_with_one_name_in_a_loop_are_distinct() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    assert_eq!(
        jobs.run(same_name_in_a_loop()).await.unwrap(),
        vec![0, 10, 20]
    );
    assert_eq!(LOOP_RUNS.load(Ordering::SeqCst), 3);
    jobs.shutdown().await;
}

/// Attempt 1 journals step `outline` and fails; attempt 2 (as if the code had changed) calls
/// `draft` first.
#[llm_job(retries = 1)]
async fn changed_code(ctx: JobContext) -> Result<(), JobError> {
    let first = if ctx.attempt() == 1 {
        "outline"
    } else {
        "draft"
    };
    ctx.step(first, async { Ok::<_, JobError>(1) }).await?;
    Err(JobError::msg("fail the first attempt"))
}

#[tokio::test]
async fn a_journal_that_does_not_match_the_code_fails_the_job_clearly() {
    let db = TempDb::new();
    let jobs = Jobs::builder()
        .url(db.url())
        .backoff(llmjobs::Backoff {
            base: Duration::from_millis(10),
            factor: 2.0,
            cap: Duration::from_millis(10),
        })
        .open()
        .await
        .unwrap();
    let handle = jobs.spawn(changed_code()).await.unwrap();
    let err = handle.wait().await.unwrap_err().to_string();
    assert!(err.contains("journal mismatch"), "{err}");
    assert!(err.contains("outline") && err.contains("draft"), "{err}");
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.attempts, 2);
    jobs.shutdown().await;
}

#[llm_job]
async fn quick() -> Result<(), JobError> {
    Ok(())
}

#[tokio::test]
async fn prune_removes_only_finished_jobs() {
    let db = TempDb::new();
    let front = db.watcher().await;
    let waiting = front.spawn(quick()).await.unwrap();
    let worker = Jobs::open(&db.url()).await.unwrap();
    let done = worker.spawn(quick()).await.unwrap();
    done.wait().await.unwrap();
    waiting.wait().await.unwrap();
    worker.shutdown().await;
    let pending = front.spawn(quick()).await.unwrap();

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        front.prune(Duration::ZERO).await.unwrap(),
        2,
        "the two completed jobs"
    );
    assert!(matches!(
        front.status(done.id()).await,
        Err(llmjobs::Error::NotFound(_))
    ));
    // The handle's own runtime is shut down: it says so.
    assert!(matches!(done.status().await, Err(llmjobs::Error::Shutdown)));
    assert_eq!(pending.status().await.unwrap().state, JobState::Pending);
    // Nothing younger than an hour is pruned.
    assert_eq!(front.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    front.shutdown().await;
}
