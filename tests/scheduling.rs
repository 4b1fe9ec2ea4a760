//! Scheduling and job management on SQLite beyond the conformance suite (which runs run-at,
//! priorities, idempotency keys, retry and batch spawn on every backend): an idempotency
//! window, a batch of 10,000, listings that page while jobs are spawned, typed reattach.

use std::collections::HashSet;
use std::time::Duration;

use llmjobs::{Error, JobCall, JobError, JobFilter, JobId, Jobs, llm_job};
use llmjobs_testkit::{TempDb, wait_until};

fn builder(db: &TempDb) -> llmjobs::JobsBuilder {
    Jobs::builder()
        .url(db.url())
        .poll_interval(Duration::from_millis(20))
        .shutdown_grace(Duration::ZERO)
}

#[llm_job]
async fn other() -> Result<(), JobError> {
    Ok(())
}

#[llm_job]
async fn quick(n: u32) -> Result<u32, JobError> {
    Ok(n)
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
    match jobs.handle_of::<other>(id).await {
        Err(Error::WrongJob {
            expected, found, ..
        }) => assert_eq!((expected, found.as_str()), ("other", "quick")),
        other => panic!("expected WrongJob, got {other:?}"),
    }
    jobs.shutdown().await;
}
