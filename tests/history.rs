//! Reads, limits and retention whose cost stays flat as the history grows: maintained counters,
//! indexed listings with keyset paging, chunked pruning that gives the space back, and automatic
//! retention.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use llmjobs::{Backoff, JobCall, JobContext, JobError, JobFilter, JobId, JobState, Jobs, llm_job};
use llmjobs_testkit::{TempDb, wait_until};

fn builder(db: &TempDb) -> llmjobs::JobsBuilder {
    Jobs::builder()
        .url(db.url())
        .poll_interval(Duration::from_millis(20))
        .backoff(Backoff {
            base: Duration::from_millis(10),
            factor: 2.0,
            cap: Duration::from_millis(50),
        })
        .shutdown_grace(Duration::ZERO)
}

/// Counts of every state, straight from the table.
fn counted(db: &TempDb) -> [u64; 5] {
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let states = ["pending", "running", "completed", "failed", "cancelled"];
    states.map(|state| {
        conn.query_row(
            "SELECT count(*) FROM llmjobs_jobs WHERE status = ?",
            [state],
            |row| row.get::<_, i64>(0),
        )
        .unwrap()
        .unsigned_abs()
    })
}

fn as_array(c: llmjobs::JobCounts) -> [u64; 5] {
    [c.pending, c.running, c.completed, c.failed, c.cancelled]
}

#[llm_job]
async fn double(n: u32) -> Result<u32, JobError> {
    Ok(n * 2)
}

#[llm_job(retries = 1)]
async fn fails_once(ctx: JobContext) -> Result<u32, JobError> {
    if ctx.attempt() == 1 {
        return Err(JobError::msg("first attempt fails"));
    }
    Ok(ctx.attempt())
}

#[llm_job]
async fn refuses() -> Result<(), JobError> {
    Err(JobError::permanent(JobError::msg("no")))
}

static PARKED_RELEASE: AtomicBool = AtomicBool::new(false);

#[llm_job]
async fn parked() -> Result<(), JobError> {
    while !PARKED_RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A job of a name no process here registered: it stays pending.
fn nobody_runs_this() -> JobCall<()> {
    JobCall::from_json("runs_elsewhere", serde_json::json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_match_the_table_through_every_change_of_state() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let front = db.watcher().await;
    for n in 0..20 {
        jobs.spawn(double(n)).await.unwrap();
    }
    let retried = jobs.spawn(fails_once()).await.unwrap();
    let failed = jobs.spawn(refuses()).await.unwrap();
    let running = jobs.spawn(parked()).await.unwrap();
    // Pending for ever (nobody runs it), then cancelled while pending.
    let waiting = front.spawn(nobody_runs_this()).await.unwrap();
    let cancelled = front.spawn(nobody_runs_this()).await.unwrap();
    front.cancel(cancelled.id()).await.unwrap();
    assert_eq!(retried.wait().await.unwrap(), 2);
    assert!(failed.wait().await.is_err());
    wait_until(Duration::from_secs(10), "every quick job to end", || {
        counted(&db) == [1, 1, 21, 1, 1]
    });
    assert_eq!(as_array(jobs.counts().await.unwrap()), counted(&db));

    // By name, too.
    let by_name = jobs.counts_by_name().await.unwrap();
    assert_eq!(by_name["double"].completed, 20);
    assert_eq!(by_name["runs_elsewhere"].pending, 1);
    assert_eq!(by_name["runs_elsewhere"].cancelled, 1);
    assert_eq!(by_name["parked"].running, 1);

    // A running job that is cancelled, a pending one that is cancelled, and a prune.
    jobs.cancel(running.id()).await.unwrap();
    front.cancel(waiting.id()).await.unwrap();
    wait_until(Duration::from_secs(10), "the cancels to land", || {
        counted(&db) == [0, 0, 21, 1, 3]
    });
    assert_eq!(as_array(jobs.counts().await.unwrap()), counted(&db));
    assert_eq!(jobs.prune(Duration::ZERO).await.unwrap(), 25);
    assert_eq!(as_array(jobs.counts().await.unwrap()), [0; 5]);
    PARKED_RELEASE.store(true, Ordering::SeqCst);
    jobs.shutdown().await;
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_filter_by_state_and_name_newest_first_and_page_without_gaps() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let front = db.watcher().await;
    let mut doubled = Vec::new();
    for n in 0..25 {
        doubled.push(jobs.spawn(double(n)).await.unwrap().id());
    }
    let mut pending = Vec::new();
    for _ in 0..7 {
        pending.push(front.spawn(nobody_runs_this()).await.unwrap().id());
    }
    wait_until(Duration::from_secs(10), "the jobs to complete", || {
        counted(&db)[2] == 25
    });

    let all = jobs.list(JobFilter::new().limit(1000)).await.unwrap();
    assert_eq!(all.len(), 32);
    let ids: Vec<JobId> = all.iter().map(|s| s.id).collect();
    let mut newest_first = ids.clone();
    newest_first.sort_by_key(|id| std::cmp::Reverse(id.to_string()));
    assert_eq!(ids, newest_first, "newest first");

    let by_state = jobs.list(JobState::Pending).await.unwrap();
    let mut expected = pending.clone();
    expected.reverse();
    assert_eq!(by_state.iter().map(|s| s.id).collect::<Vec<_>>(), expected);
    let by_name = jobs.list(JobFilter::new().name("double")).await.unwrap();
    assert_eq!(by_name.len(), 25);
    assert!(by_name.iter().all(|s| s.name == "double"));
    let none = jobs
        .list(JobFilter::new().name("double").state(JobState::Failed))
        .await
        .unwrap();
    assert!(none.is_empty());

    // Pages of 10 by name, then of 3 by state: every job once, in order.
    for filter in [
        JobFilter::new().name("double").limit(10),
        JobFilter::new().state(JobState::Pending).limit(3),
        JobFilter::new().limit(10),
    ] {
        let mut seen = Vec::new();
        let mut page_filter = filter.clone();
        loop {
            let page = jobs.list(page_filter.clone()).await.unwrap();
            seen.extend(page.iter().map(|s| s.id));
            match page.last() {
                Some(last) if page.len() == filter.limit as usize => {
                    page_filter = page_filter.after(last.id)
                }
                _ => break,
            }
        }
        let everything = jobs.list(filter.clone().limit(1000)).await.unwrap();
        assert_eq!(
            seen,
            everything.iter().map(|s| s.id).collect::<Vec<_>>(),
            "{filter:?}"
        );
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    }
    jobs.shutdown().await;
    front.shutdown().await;
}

#[llm_job]
async fn padded(ctx: JobContext, pad: String) -> Result<usize, JobError> {
    let echoed: String = ctx
        .step("echo", async { Ok::<_, JobError>(pad.clone()) })
        .await?;
    Ok(echoed.len())
}

fn file_bytes(db: &TempDb) -> u64 {
    let size = |path: std::path::PathBuf| std::fs::metadata(path).map_or(0, |m| m.len());
    let wal = db.path().with_extension("db-wal");
    size(db.path()) + size(wal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_in_chunks_and_gives_the_space_back() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let pad = "x".repeat(4000);
    let mut handles = Vec::new();
    for _ in 0..1200 {
        handles.push(jobs.spawn(padded(pad.clone())).await.unwrap());
    }
    for handle in handles {
        handle.wait().await.unwrap();
    }
    let kept = jobs.spawn(nobody_runs_this()).await.unwrap();
    let before = file_bytes(&db);
    // More jobs than one chunk holds.
    assert_eq!(jobs.prune(Duration::ZERO).await.unwrap(), 1200);
    let after = file_bytes(&db);
    assert!(
        after * 4 < before,
        "the file shrank: {before} bytes before, {after} after"
    );
    let counts = jobs.counts().await.unwrap();
    assert_eq!((counts.completed, counts.pending), (0, 1));
    assert_eq!(
        jobs.status(kept.id()).await.unwrap().state,
        JobState::Pending
    );
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    let steps: i64 = conn
        .query_row("SELECT count(*) FROM llmjobs_steps", [], |r| r.get(0))
        .unwrap();
    assert_eq!(steps, 0, "the journals went with their jobs");
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_finished_jobs_in_the_background() {
    let db = TempDb::new();
    let jobs = builder(&db)
        .retention(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    let done = jobs.spawn(double(1)).await.unwrap();
    assert_eq!(done.wait().await.unwrap(), 2);
    let waiting = jobs.spawn(nobody_runs_this()).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        "the finished job to be pruned",
        || counted(&db)[2] == 0,
    );
    assert!(matches!(
        jobs.status(done.id()).await,
        Err(llmjobs::Error::NotFound(_))
    ));
    assert_eq!(
        jobs.status(waiting.id()).await.unwrap().state,
        JobState::Pending,
        "unfinished jobs are never pruned"
    );
    jobs.shutdown().await;
}

static ONE_AT_A_TIME_ORDER: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
static ONE_AT_A_TIME_GATE: AtomicU32 = AtomicU32::new(0);

#[llm_job(max_concurrency = 1)]
async fn one_at_a_time(n: u32) -> Result<u32, JobError> {
    ONE_AT_A_TIME_ORDER.lock().unwrap().push(n);
    // The first job holds the only slot until the test opens the gate.
    while n == 0 && ONE_AT_A_TIME_GATE.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_limit_new_spawns_run_here_but_never_overtake_queued_jobs() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let first = jobs.spawn(one_at_a_time(0)).await.unwrap();
    wait_until(Duration::from_secs(10), "the first job to start", || {
        !ONE_AT_A_TIME_ORDER.lock().unwrap().is_empty()
    });
    // Inserted running here, with no claim: the limit had room.
    let status = first.status().await.unwrap();
    assert_eq!(status.owner.as_deref(), Some(jobs.owner()));
    let mut queued = Vec::new();
    for n in 1..=5 {
        queued.push(jobs.spawn(one_at_a_time(n)).await.unwrap());
    }
    for handle in &queued {
        assert_eq!(handle.status().await.unwrap().state, JobState::Pending);
    }
    ONE_AT_A_TIME_GATE.store(1, Ordering::SeqCst);
    first.wait().await.unwrap();
    // A spawn made while the queue drains waits its turn behind the queue.
    let late = jobs.spawn(one_at_a_time(6)).await.unwrap();
    for handle in queued.iter().chain([&late]) {
        handle.wait().await.unwrap();
    }
    assert_eq!(*ONE_AT_A_TIME_ORDER.lock().unwrap(), [0, 1, 2, 3, 4, 5, 6]);
    jobs.shutdown().await;
}
