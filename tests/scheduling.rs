//! Scheduling and job management: run-at, priority, idempotency keys, retry, batch spawn,
//! listings that page while jobs are spawned, typed reattach.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use llmjobs::{Error, JobCall, JobContext, JobError, JobFilter, JobId, JobState, Jobs, llm_job};
use llmjobs_testkit::{TempDb, wait_until};

fn builder(db: &TempDb) -> llmjobs::JobsBuilder {
    Jobs::builder()
        .url(db.url())
        .poll_interval(Duration::from_millis(20))
        .shutdown_grace(Duration::ZERO)
}

static DELAYED_START: Mutex<Option<Instant>> = Mutex::new(None);

#[llm_job]
async fn delayed() -> Result<(), JobError> {
    *DELAYED_START.lock().unwrap() = Some(Instant::now());
    Ok(())
}

#[llm_job]
async fn quick(n: u32) -> Result<u32, JobError> {
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_starts_no_earlier_than_its_time_and_holds_no_slot() {
    let db = TempDb::new();
    let jobs = builder(&db).concurrency(1).open().await.unwrap();
    let spawned = Instant::now();
    let handle = jobs
        .spawn(delayed().delay(Duration::from_millis(600)))
        .await
        .unwrap();
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Pending);
    assert!(status.run_at > SystemTime::now(), "run_at is in the future");
    // The only slot is free for other work meanwhile.
    let other = tokio::time::timeout(Duration::from_millis(400), jobs.run(quick(1)))
        .await
        .expect("a delayed job holds no slot");
    assert_eq!(other.unwrap(), 1);
    handle.wait().await.unwrap();
    let started = DELAYED_START.lock().unwrap().expect("it ran");
    assert!(started - spawned >= Duration::from_millis(600));
    // A time in the past means now.
    let past = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(jobs.run(quick(2).run_at(past)).await.unwrap(), 2);
    jobs.shutdown().await;
}

static ORDER: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static GATE_OPEN: AtomicBool = AtomicBool::new(false);

#[llm_job]
async fn ordered(n: u32) -> Result<(), JobError> {
    ORDER.lock().unwrap().push(n);
    while n == 0 && !GATE_OPEN.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_starts_under_a_full_worker_fifo_within_one_priority() {
    let db = TempDb::new();
    let jobs = builder(&db).concurrency(1).open().await.unwrap();
    let gate = jobs.spawn(ordered(0)).await.unwrap();
    wait_until(Duration::from_secs(10), "the gate job to start", || {
        !ORDER.lock().unwrap().is_empty()
    });
    let mut handles = Vec::new();
    for (n, priority) in [(1, 0), (2, 10), (3, 5), (4, 10), (5, 0)] {
        handles.push(jobs.spawn(ordered(n).priority(priority)).await.unwrap());
    }
    GATE_OPEN.store(true, Ordering::SeqCst);
    gate.wait().await.unwrap();
    for handle in handles {
        handle.wait().await.unwrap();
    }
    assert_eq!(*ORDER.lock().unwrap(), [0, 2, 4, 3, 1, 5]);
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_spawners_in_two_runtimes_with_one_idempotency_key_get_one_job() {
    let db = TempDb::new();
    let first = builder(&db).open().await.unwrap();
    let second = builder(&db).open().await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let jobs = if i % 2 == 0 { &first } else { &second }.clone();
            tokio::spawn(async move {
                let handle = jobs
                    .spawn(quick(7).idempotency_key("order-42"))
                    .await
                    .unwrap();
                (handle.id(), handle.is_new())
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut new = 0;
    for task in tasks {
        let (id, is_new) = task.await.unwrap();
        ids.insert(id);
        new += usize::from(is_new);
    }
    assert_eq!(ids.len(), 1, "one job for one key");
    assert_eq!(new, 1, "exactly one spawn made it");
    assert_eq!(first.counts().await.unwrap().total(), 1);
    let id = *ids.iter().next().unwrap();
    let status = first.status(id).await.unwrap();
    assert_eq!(status.idempotency_key.as_deref(), Some("order-42"));
    let found = first
        .list(JobFilter::new().idempotency_key("order-42"))
        .await
        .unwrap();
    assert_eq!(found.iter().map(|s| s.id).collect::<Vec<_>>(), [id]);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_different_arguments_is_an_error_naming_it() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let held = jobs.spawn(quick(1).idempotency_key("k1")).await.unwrap();
    let err = jobs
        .spawn(quick(2).idempotency_key("k1"))
        .await
        .unwrap_err();
    match &err {
        Error::IdempotencyConflict { key, existing, .. } => {
            assert_eq!(key, "k1");
            assert_eq!(*existing, held.id());
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(err.to_string().contains("`k1`"), "{err}");
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holds_for_its_window_after_the_job_ends_then_makes_a_new_job() {
    let db = TempDb::new();
    let jobs = builder(&db)
        .idempotency_window(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    let first = jobs.spawn(quick(1).idempotency_key("w")).await.unwrap();
    assert_eq!(first.wait().await.unwrap(), 1);
    let again = jobs.spawn(quick(1).idempotency_key("w")).await.unwrap();
    assert_eq!((again.id(), again.is_new()), (first.id(), false));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = jobs.spawn(quick(1).idempotency_key("w")).await.unwrap();
    assert!(later.is_new());
    assert_ne!(later.id(), first.id());
    later.wait().await.unwrap();
    jobs.shutdown().await;
}

static RETRIED_STEP_RUNS: AtomicU32 = AtomicU32::new(0);
static FAIL_RETRIED: AtomicBool = AtomicBool::new(true);

#[llm_job]
async fn fails_until_fixed(ctx: JobContext) -> Result<u32, JobError> {
    let paid: u32 = ctx
        .step("paid", async {
            Ok::<_, JobError>(RETRIED_STEP_RUNS.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .await?;
    if FAIL_RETRIED.load(Ordering::SeqCst) {
        return Err(JobError::permanent(JobError::msg("the upstream was down")));
    }
    Ok(paid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_a_failed_job_again_keeping_its_history_and_its_journal() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let front = db.watcher().await;
    let handle = jobs.spawn(fails_until_fixed()).await.unwrap();
    assert!(handle.wait().await.is_err());
    // A pending or running job cannot be retried; nor a completed one.
    let pending = front.spawn(quick(1)).await.unwrap();
    assert!(matches!(
        front.retry(pending.id()).await,
        Err(Error::NotRetryable {
            state: JobState::Pending,
            ..
        })
    ));
    FAIL_RETRIED.store(false, Ordering::SeqCst);
    // From another runtime, as from another process.
    front.retry(handle.id()).await.unwrap();
    assert_eq!(
        handle.wait().await.unwrap(),
        1,
        "the paid step was replayed"
    );
    assert_eq!(RETRIED_STEP_RUNS.load(Ordering::SeqCst), 1);
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Completed);
    assert_eq!(status.attempts, 1, "a fresh attempt budget");
    assert_eq!(status.earlier_runs.len(), 1);
    assert_eq!(status.earlier_runs[0].state, JobState::Failed);
    assert_eq!(
        status.earlier_runs[0].error.as_deref(),
        Some("the upstream was down")
    );
    assert!(matches!(
        jobs.retry(handle.id()).await,
        Err(Error::NotRetryable {
            state: JobState::Completed,
            ..
        })
    ));
    jobs.shutdown().await;
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_many_commits_all_calls_together_or_none() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let calls: Vec<JobCall<u32>> = (0..10_000).map(quick).collect();
    let handles = jobs.spawn_many(calls).await.unwrap();
    assert_eq!(handles.len(), 10_000);
    assert!(handles.iter().all(|h| h.is_new()));
    wait_until(Duration::from_secs(60), "every job to complete", || {
        completed_count(&db) == 10_000
    });
    // A call in the middle that cannot go in (its key is held by different work) keeps every
    // other call of the batch out too.
    jobs.spawn(quick(1).idempotency_key("taken")).await.unwrap();
    let mut calls: Vec<JobCall<u32>> = (0..1000).map(quick).collect();
    calls.insert(500, quick(2).idempotency_key("taken"));
    let before = jobs.counts().await.unwrap().total();
    let err = jobs.spawn_many(calls).await.unwrap_err();
    assert!(matches!(err, Error::IdempotencyConflict { .. }), "{err:?}");
    assert_eq!(jobs.counts().await.unwrap().total(), before, "none went in");
    jobs.shutdown().await;
}

/// Completed jobs, straight from the table.
fn completed_count(db: &TempDb) -> i64 {
    rusqlite::Connection::open(db.path())
        .unwrap()
        .query_row(
            "SELECT count(*) FROM llmjobs_jobs WHERE status = 'completed'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_visits_every_job_once_while_jobs_are_spawned() {
    let db = TempDb::new();
    let front = db.watcher().await;
    let elsewhere = || JobCall::<()>::from_json("runs_elsewhere", serde_json::json!({}));
    let mut existing = HashSet::new();
    for _ in 0..300 {
        existing.insert(front.spawn(elsewhere()).await.unwrap().id());
    }
    let spawner = {
        let front = front.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                front.spawn(elsewhere()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    for oldest_first in [false, true] {
        let mut filter = JobFilter::new().limit(37);
        if oldest_first {
            filter = filter.oldest_first();
        }
        let mut seen: Vec<JobId> = Vec::new();
        loop {
            let page = front.list(filter.clone()).await.unwrap();
            seen.extend(page.iter().map(|s| s.id));
            match page.last() {
                Some(last) if page.len() == 37 => filter = filter.after(last.id),
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let unique: HashSet<JobId> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no job twice");
        assert!(
            existing.is_subset(&unique),
            "every job that existed was visited"
        );
    }
    spawner.await.unwrap();
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_handle_checks_the_jobs_name() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let id = jobs.spawn(quick(3)).await.unwrap().id();
    let typed = jobs.handle_of::<quick>(id).await.unwrap();
    assert_eq!(typed.wait().await.unwrap(), 3);
    match jobs.handle_of::<delayed>(id).await {
        Err(Error::WrongJob {
            expected, found, ..
        }) => assert_eq!((expected, found.as_str()), ("delayed", "quick")),
        other => panic!("expected WrongJob, got {other:?}"),
    }
    jobs.shutdown().await;
}
