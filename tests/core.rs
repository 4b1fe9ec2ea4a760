//! The core contract: spawn, wait, status, the per-process limit, and what bad input gets (limits
//! across runtimes are in the conformance suite, on every backend).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use llmjobs::{Error, JobCall, JobContext, JobError, JobState, Jobs, Outcome, llm_job};
use llmjobs_testkit::TempDb;
use serde_json::json;

#[llm_job]
async fn add(a: i64, b: i64) -> Result<i64, JobError> {
    Ok(a + b)
}

#[tokio::test]
async fn spawn_then_wait_returns_the_result() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    let handle = jobs.spawn(add(2, 40)).await.unwrap();
    assert_eq!(handle.wait().await.unwrap(), 42);
    assert_eq!(jobs.run(add(1, 1)).await.unwrap(), 2);
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Completed);
    assert_eq!(status.attempts, 1);
    assert_eq!(status.name, "add");
    jobs.shutdown().await;
}

static SLOW_RUNS: AtomicU32 = AtomicU32::new(0);

#[llm_job]
async fn slow_once(ctx: JobContext, millis: u64) -> Result<String, JobError> {
    SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(format!("done after attempt {}", ctx.attempt()))
}

#[tokio::test]
async fn wait_timeout_shorter_than_the_job_returns_pending_and_the_same_attempt_finishes() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    let handle = jobs.spawn(slow_once(600)).await.unwrap();
    let handle = match handle
        .wait_timeout(Duration::from_millis(100))
        .await
        .unwrap()
    {
        Outcome::Pending(handle) => handle,
        Outcome::Ready(out) => panic!("a 600 ms job finished within 100 ms: {out}"),
    };
    assert_eq!(handle.status().await.unwrap().state, JobState::Running);
    assert_eq!(handle.wait().await.unwrap(), "done after attempt 1");
    assert_eq!(SLOW_RUNS.load(Ordering::SeqCst), 1, "the body ran once");
    let status = handle.status().await.unwrap();
    assert_eq!(status.attempts, 1);

    // run_with_timeout: the same, from the spawn.
    match jobs
        .run_with_timeout(slow_once(300), Duration::from_millis(50))
        .await
        .unwrap()
    {
        Outcome::Pending(handle) => {
            assert_eq!(handle.wait().await.unwrap(), "done after attempt 1")
        }
        Outcome::Ready(out) => panic!("too fast: {out}"),
    }
    assert_eq!(SLOW_RUNS.load(Ordering::SeqCst), 2);
    jobs.shutdown().await;
}

static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[llm_job]
async fn gated() -> Result<(), JobError> {
    GATE.acquire().await.expect("gate open").forget();
    Ok(())
}

#[llm_job]
async fn always_fails() -> Result<(), JobError> {
    Err(JobError::msg("the model said no"))
}

#[tokio::test]
async fn status_reports_each_state() {
    let db = TempDb::new();
    // A process that only spawns: the job stays pending.
    let front = db.watcher().await;
    let handle = front.spawn(gated()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Pending);
    assert_eq!(status.attempts, 0);
    assert!(status.started_at.is_none());

    // A worker picks it up; the gate holds it running.
    let worker = Jobs::open(&db.url()).await.unwrap();
    let running = wait_for_state(&front, handle.id(), JobState::Running).await;
    assert_eq!(running.owner.as_deref(), Some(worker.owner()));
    assert!(running.started_at.is_some());
    GATE.add_permits(1);
    handle.wait().await.unwrap();
    let done = handle.status().await.unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert!(done.completed_at.is_some());

    let failed = front.spawn(always_fails()).await.unwrap();
    let err = failed.wait().await.unwrap_err();
    assert!(
        matches!(&err, Error::JobFailed { error, .. } if error == "the model said no"),
        "{err}"
    );
    let status = failed.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.error.as_deref(), Some("the model said no"));

    worker.shutdown().await;
    let cancelled = front.spawn(gated()).await.unwrap();
    cancelled.cancel().await.unwrap();
    assert_eq!(cancelled.status().await.unwrap().state, JobState::Cancelled);
    assert!(matches!(
        cancelled.wait().await.unwrap_err(),
        Error::JobCancelled { .. }
    ));
    front.shutdown().await;
}

async fn wait_for_state(jobs: &Jobs, id: llmjobs::JobId, state: JobState) -> llmjobs::JobStatus {
    for _ in 0..500 {
        let status = jobs.status(id).await.unwrap();
        if status.state == state {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never reached {state}");
}

/// Counts bodies running at once and remembers the peak.
struct Gauge {
    now: AtomicU32,
    peak: AtomicU32,
}

impl Gauge {
    const fn new() -> Gauge {
        Gauge {
            now: AtomicU32::new(0),
            peak: AtomicU32::new(0),
        }
    }

    async fn hold(&self, limit: u32, millis: u64) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        // Until the limit has been reached once, a body keeps its slot (for at most 10 s), so
        // a slow machine cannot start the bodies one after another and leave the limit
        // untested; a runtime that never reaches it shows as a peak under the limit.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.peak.load(Ordering::SeqCst) < limit && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(millis)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    fn peak(&self) -> u32 {
        self.peak.load(Ordering::SeqCst)
    }
}

static PER_PROCESS: Gauge = Gauge::new();

#[llm_job]
async fn per_process() -> Result<(), JobError> {
    PER_PROCESS.hold(3, 50).await;
    Ok(())
}

#[tokio::test]
async fn process_concurrency_is_never_exceeded() {
    let db = TempDb::new();
    let jobs = Jobs::builder()
        .url(db.url())
        .concurrency(3)
        .open()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..12 {
        handles.push(jobs.spawn(per_process()).await.unwrap());
    }
    for handle in handles {
        handle.wait().await.unwrap();
    }
    assert_eq!(PER_PROCESS.peak(), 3);
    jobs.shutdown().await;
}

static RACED: Gauge = Gauge::new();

#[llm_job]
async fn raced() -> Result<(), JobError> {
    RACED.hold(2, 2).await;
    Ok(())
}

/// A slot that frees while jobs wait is wanted twice at once: by the dispatcher's claim of a
/// waiting job and by a new spawn's local hand-off. Only one of them may have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spawns_racing_the_dispatchers_claims_never_exceed_the_process_limit() {
    let db = TempDb::new();
    let jobs = Jobs::builder()
        .url(db.url())
        .concurrency(2)
        .open()
        .await
        .unwrap();
    let spawners: Vec<_> = (0..8)
        .map(|_| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let mut handles = Vec::new();
                for _ in 0..40 {
                    handles.push(jobs.spawn(raced()).await.unwrap());
                }
                handles
            })
        })
        .collect();
    for spawner in spawners {
        for handle in spawner.await.unwrap() {
            handle.wait().await.unwrap();
        }
    }
    assert_eq!(RACED.peak(), 2, "bodies running at once, with a limit of 2");
    jobs.shutdown().await;
}

#[llm_job]
async fn count_words(text: String, words: u32) -> Result<u32, JobError> {
    Ok(text.split_whitespace().count() as u32 + words)
}

#[tokio::test]
async fn stored_arguments_that_no_longer_deserialize_fail_the_job_naming_the_field() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    // As if an older version had stored `words` as a string.
    let call: JobCall<u32> =
        JobCall::from_json("count_words", json!({"text": "a b c", "words": "many"}));
    let handle = jobs.spawn(call).await.unwrap();
    let err = handle.wait().await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("count_words"), "{message}");
    assert!(message.contains("words"), "{message}");
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert!(status.error.unwrap().contains("field `words`"));

    // Other jobs are unaffected.
    assert_eq!(jobs.run(count_words("a b".into(), 1)).await.unwrap(), 3);
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_job_name_nobody_registered_stays_pending_and_visible() {
    let db = TempDb::new();
    let jobs = Jobs::builder()
        .url(db.url())
        .poll_interval(Duration::from_millis(20))
        .open()
        .await
        .unwrap();
    let call: JobCall<()> = JobCall::from_json("renamed_long_ago", json!({}));
    let handle = jobs.spawn(call).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Pending);
    assert_eq!(status.name, "renamed_long_ago");
    assert_eq!(status.attempts, 0, "never claimed");
    match handle
        .wait_timeout(Duration::from_millis(50))
        .await
        .unwrap()
    {
        Outcome::Pending(_) => {}
        Outcome::Ready(()) => panic!("an unknown job cannot complete"),
    }
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_handle_of_the_wrong_type_is_a_clear_error() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    let id = jobs.spawn(add(1, 2)).await.unwrap().id();
    let wrong = jobs.handle::<Vec<String>>(id);
    let err = wrong.wait().await.unwrap_err();
    assert!(
        matches!(&err, Error::ResultType { expected, .. } if expected.contains("Vec")),
        "{err}"
    );
    assert!(err.to_string().contains(&id.to_string()));
    // The right type still works, from a handle made from the id's text.
    let right = jobs.handle::<i64>(id.to_string().parse().unwrap());
    assert_eq!(right.wait().await.unwrap(), 3);
    jobs.shutdown().await;
}

#[tokio::test]
async fn a_database_path_that_cannot_be_opened_is_an_error_naming_it() {
    let err = Jobs::open("sqlite:///no/such/folder/jobs.db")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("/no/such/folder"), "{err}");

    let err = Jobs::open("postgres-ish://x").await.unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn an_unknown_job_id_is_not_found() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    let id: llmjobs::JobId = "0192f3c4-5b6a-7c8d-9e0f-1a2b3c4d5e6f".parse().unwrap();
    assert!(matches!(jobs.status(id).await, Err(Error::NotFound(_))));
    assert!(matches!(
        jobs.handle::<()>(id).wait().await,
        Err(Error::NotFound(_))
    ));
    jobs.shutdown().await;
}

#[llm_job]
async fn panics() -> Result<(), JobError> {
    panic!("a bug in the job");
}

#[tokio::test]
async fn a_panicking_body_fails_its_job_and_nothing_else() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    let err = jobs.run(panics()).await.unwrap_err();
    assert!(
        err.to_string().contains("panicked: a bug in the job"),
        "{err}"
    );
    assert_eq!(jobs.run(add(2, 2)).await.unwrap(), 4);
    jobs.shutdown().await;
}

#[tokio::test]
async fn spawn_after_shutdown_is_refused() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    jobs.shutdown().await;
    assert!(matches!(jobs.spawn(add(1, 1)).await, Err(Error::Shutdown)));
}
