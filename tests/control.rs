//! Execution control: timeouts, retries, cancellation, progress, per-key limits, long-running
//! routing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use llmjobs::{
    Backoff, CancelOutcome, JobContext, JobError, JobFilter, JobState, Jobs, Outcome, Progress,
    llm_job,
};
use llmjobs_testkit::{TempDb, WorkerProcess, peak_overlap, read_lines, wait_until};

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(100),
        factor: 2.0,
        cap: Duration::from_secs(1),
    }
}

async fn open(db: &TempDb) -> Jobs {
    Jobs::builder()
        .url(db.url())
        .backoff(fast_backoff())
        .poll_interval(Duration::from_millis(20))
        .open()
        .await
        .unwrap()
}

static TIMED_OUT_STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[llm_job(timeout = "100ms", retries = 2)]
async fn too_slow() -> Result<(), JobError> {
    TIMED_OUT_STARTS.lock().unwrap().push(Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_retried_then_fails_naming_the_timeout() {
    let db = TempDb::new();
    let jobs = open(&db).await;
    let handle = jobs.spawn(too_slow()).await.unwrap();
    let err = handle.wait().await.unwrap_err().to_string();
    assert!(err.contains("timed out after 100ms"), "{err}");
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.attempts, 3, "one attempt and two retries");
    let starts = TIMED_OUT_STARTS.lock().unwrap().clone();
    assert_eq!(starts.len(), 3);
    // Each attempt runs 100 ms, then waits its back-off: at least half of 100 ms, then of 200 ms.
    assert!(
        starts[1] - starts[0] >= Duration::from_millis(150),
        "{starts:?}"
    );
    assert!(
        starts[2] - starts[1] >= Duration::from_millis(200),
        "{starts:?}"
    );
    jobs.shutdown().await;
}

static PERMANENT_RUNS: AtomicU32 = AtomicU32::new(0);

#[llm_job(retries = 3)]
async fn bad_request() -> Result<(), JobError> {
    PERMANENT_RUNS.fetch_add(1, Ordering::SeqCst);
    Err(JobError::permanent(JobError::msg(
        "400: the prompt is too long",
    )))
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let db = TempDb::new();
    let jobs = open(&db).await;
    let handle = jobs.spawn(bad_request()).await.unwrap();
    let err = handle.wait().await.unwrap_err().to_string();
    assert!(err.contains("400: the prompt is too long"), "{err}");
    assert_eq!(handle.status().await.unwrap().attempts, 1);
    assert_eq!(PERMANENT_RUNS.load(Ordering::SeqCst), 1);
    jobs.shutdown().await;
}

static RATE_LIMITED_STARTS: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

#[llm_job(retries = 1)]
async fn rate_limited() -> Result<u32, JobError> {
    let attempt = {
        let mut starts = RATE_LIMITED_STARTS.lock().unwrap();
        starts.push(Instant::now());
        starts.len()
    };
    if attempt == 1 {
        return Err(JobError::retry_after(
            Duration::from_millis(700),
            JobError::msg("429: slow down"),
        ));
    }
    Ok(7)
}

#[tokio::test]
async fn retry_after_delays_the_next_attempt_by_at_least_that_long() {
    let db = TempDb::new();
    let jobs = open(&db).await;
    let handle = jobs.spawn(rate_limited()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = handle.status().await.unwrap();
    assert_eq!(waiting.state, JobState::Pending);
    assert_eq!(waiting.error.as_deref(), Some("429: slow down"));
    assert!(
        waiting.run_at > std::time::SystemTime::now(),
        "next try is due later"
    );
    assert_eq!(handle.wait().await.unwrap(), 7);
    let starts = RATE_LIMITED_STARTS.lock().unwrap().clone();
    assert!(
        starts[1] - starts[0] >= Duration::from_millis(700),
        "{starts:?}"
    );
    jobs.shutdown().await;
}

#[llm_job]
async fn never_runs_here() -> Result<(), JobError> {
    Ok(())
}

#[tokio::test]
async fn cancel_of_a_pending_job_is_immediate() {
    let db = TempDb::new();
    let front = db.watcher().await;
    let handle = front.spawn(never_runs_here()).await.unwrap();
    assert_eq!(handle.cancel().await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(handle.status().await.unwrap().state, JobState::Cancelled);
    // A worker opened later never runs it.
    let worker = open(&db).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Cancelled);
    assert_eq!(status.attempts, 0);
    worker.shutdown().await;
    front.shutdown().await;
}

static BODY_DROPPED: AtomicBool = AtomicBool::new(false);
static SAW_CANCELLED: AtomicBool = AtomicBool::new(false);

struct SetOnDrop(&'static AtomicBool);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[llm_job]
async fn cancellable(ctx: JobContext) -> Result<(), JobError> {
    let _guard = SetOnDrop(&BODY_DROPPED);
    let watcher = ctx.clone();
    tokio::spawn(async move {
        watcher.cancelled().await;
        SAW_CANCELLED.store(true, Ordering::SeqCst);
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

#[tokio::test]
async fn cancel_of_a_running_job_drops_its_future() {
    let db = TempDb::new();
    let jobs = open(&db).await;
    let handle = jobs.spawn(cancellable()).await.unwrap();
    wait_for(&jobs, handle.id(), JobState::Running).await;
    let asked = Instant::now();
    assert_eq!(handle.cancel().await.unwrap(), CancelOutcome::Requested);
    wait_for(&jobs, handle.id(), JobState::Cancelled).await;
    assert!(asked.elapsed() < Duration::from_secs(2));
    assert!(
        BODY_DROPPED.load(Ordering::SeqCst),
        "the body's future was dropped"
    );
    wait_until(Duration::from_secs(2), "ctx.cancelled() to fire", || {
        SAW_CANCELLED.load(Ordering::SeqCst)
    });
    assert!(matches!(
        handle.wait().await,
        Err(llmjobs::Error::JobCancelled { .. })
    ));
    // A second cancel says the job is already over.
    assert_eq!(
        handle.cancel().await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_from_another_process_drops_the_future_within_a_second() {
    let db = TempDb::new();
    let log = db.file("long.log");
    let worker = WorkerProcess::start(
        WORKER,
        &["long", db.path().to_str().unwrap(), log.to_str().unwrap()],
    );
    wait_until(Duration::from_secs(60), "the job to start", || {
        !read_lines(&log).is_empty()
    });
    let id: llmjobs::JobId = read_lines(&log)[0]
        .strip_prefix("start ")
        .unwrap()
        .parse()
        .unwrap();
    let here = db.watcher().await;
    let asked = Instant::now();
    assert_eq!(here.cancel(id).await.unwrap(), CancelOutcome::Requested);
    wait_for(&here, id, JobState::Cancelled).await;
    let took = asked.elapsed();
    assert!(
        read_lines(&log).contains(&format!("dropped {id}")),
        "the worker dropped the body's future"
    );
    eprintln!("cancelled across processes in {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    worker.kill();
    here.shutdown().await;
}

#[llm_job]
async fn finishes_at_once() -> Result<u8, JobError> {
    Ok(1)
}

#[tokio::test]
async fn cancelling_a_finished_job_changes_nothing_and_says_so() {
    let db = TempDb::new();
    let jobs = open(&db).await;
    let handle = jobs.spawn(finishes_at_once()).await.unwrap();
    assert_eq!(handle.clone().wait().await.unwrap(), 1);
    assert_eq!(
        handle.cancel().await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Completed)
    );
    assert_eq!(handle.wait().await.unwrap(), 1, "the result is still there");
    jobs.shutdown().await;
}

static PROGRESS_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[llm_job]
async fn chatty(ctx: JobContext, reports: u32) -> Result<(), JobError> {
    // Wait until the test has subscribed.
    PROGRESS_GATE.acquire().await.unwrap().forget();
    for i in 1..=reports {
        ctx.report(
            Progress::stage("writing")
                .with_fraction(f64::from(i) / f64::from(reports))
                .with_message(format!("report {i}"))
                .with_tokens(10, u64::from(i)),
        );
    }
    Ok(())
}

#[tokio::test]
async fn progress_subscribers_see_every_report_in_order_and_the_last_is_stored() {
    let db = TempDb::new();
    let seen_globally = std::sync::Arc::new(Mutex::new(Vec::new()));
    let sink = seen_globally.clone();
    let jobs = Jobs::builder()
        .url(db.url())
        .on_progress(move |event| {
            sink.lock()
                .unwrap()
                .push(event.progress.message.clone().unwrap());
        })
        .open()
        .await
        .unwrap();
    let handle = jobs.spawn(chatty(200)).await.unwrap();
    wait_for(&jobs, handle.id(), JobState::Running).await;
    let mut stream = handle.progress();
    let seen_by_callback = std::sync::Arc::new(Mutex::new(Vec::new()));
    let sink = seen_by_callback.clone();
    let callback = handle.on_progress(move |p| sink.lock().unwrap().push(p.output_tokens.unwrap()));
    PROGRESS_GATE.add_permits(1);

    let mut from_stream = Vec::new();
    while let Some(report) = stream.next().await {
        from_stream.push(report.message.unwrap());
    }
    callback.await.unwrap();
    let expected: Vec<String> = (1..=200).map(|i| format!("report {i}")).collect();
    assert_eq!(from_stream, expected);
    assert_eq!(*seen_globally.lock().unwrap(), expected);
    assert_eq!(
        *seen_by_callback.lock().unwrap(),
        (1..=200).collect::<Vec<u64>>()
    );

    // 200 reports in a burst were coalesced, but the last one is stored, for any reader.
    handle.clone().wait().await.unwrap();
    let other = db.watcher().await;
    let stored = other.status(handle.id()).await.unwrap().progress.unwrap();
    let stored: Progress = serde_json::from_value(stored).unwrap();
    assert_eq!(stored.message.as_deref(), Some("report 200"));
    assert_eq!(stored.fraction, Some(1.0));
    assert_eq!(stored.stage.as_deref(), Some("writing"));
    assert_eq!(stored.output_tokens, Some(200));
    other.shutdown().await;
    jobs.shutdown().await;
}

static LONG_RUNS: AtomicU32 = AtomicU32::new(0);

#[llm_job(long_running)]
async fn background_only() -> Result<u32, JobError> {
    LONG_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(5)
}

#[tokio::test]
async fn a_long_running_job_is_never_waited_on_inline() {
    let db = TempDb::new();
    let jobs = open(&db).await;
    let outcome = jobs
        .run_with_timeout(background_only(), Duration::from_secs(30))
        .await
        .unwrap();
    let Outcome::Pending(handle) = outcome else {
        panic!("a long-running job must come back as Pending");
    };
    assert_eq!(handle.wait().await.unwrap(), 5);
    assert_eq!(LONG_RUNS.load(Ordering::SeqCst), 1);

    // A call can also be routed to the background on its own.
    let outcome = jobs
        .run_with_timeout(
            finishes_at_once().long_running(true),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Pending(_)));
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_key_limit_holds_across_two_processes() {
    let db = TempDb::new();
    let log = db.file("keyed.log");
    let front = db.watcher().await;
    for _ in 0..8 {
        let call = keyed_sleep("model-a".into(), 300, log.display().to_string());
        assert_eq!(call.key(), Some("model-a"), "the job declares its key");
        front.spawn(call).await.unwrap();
    }
    // Another key is not held back by model-a's limit; a call can also set its own key.
    for _ in 0..2 {
        let call = keyed_sleep("ignored".into(), 300, log.display().to_string())
            .concurrency_key("model-b", 2);
        front.spawn(call).await.unwrap();
    }
    let db_path = db.path();
    let workers = [
        WorkerProcess::start(WORKER, &["run", db_path.to_str().unwrap()]),
        WorkerProcess::start(WORKER, &["run", db_path.to_str().unwrap()]),
    ];
    for worker in workers {
        assert!(worker.wait(Duration::from_secs(60)).success());
    }
    let lines = read_lines(&log);
    let model_a: Vec<String> = lines
        .iter()
        .filter(|l| l.ends_with("model-a"))
        .cloned()
        .collect();
    assert_eq!(model_a.len(), 16, "8 starts and 8 ends");
    assert_eq!(
        peak_overlap(&model_a),
        2,
        "model-a ran 2 at a time, never more"
    );
    let all = front.list(JobFilter::new().limit(100)).await.unwrap();
    assert!(all.iter().all(|s| s.state == JobState::Completed));
    assert!(all.iter().all(|s| s.concurrency_key.is_some()));
    front.shutdown().await;
}

/// The `keyed_sleep` job of the worker binary, declared here too so calls can be built.
#[llm_job(concurrency_key = model, key_limit = 2)]
async fn keyed_sleep(model: String, sleep_ms: u64, log: String) -> Result<(), JobError> {
    let _ = (model, sleep_ms, log);
    unreachable!("run by the worker processes only")
}

async fn wait_for(jobs: &Jobs, id: llmjobs::JobId, state: JobState) {
    for _ in 0..1000 {
        if jobs.status(id).await.unwrap().state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("job {id} never reached {state}");
}
