//! When the dispatcher claims: jobs handed off to this process need no claim, and a job left
//! pending is claimed as soon as it can run, not at the next poll. A test binary of its own: it
//! counts the dispatcher's log lines, which a thread-local subscriber sees only for runtimes on
//! its own thread.

use std::time::Duration;

use llmjobs::{JobError, Jobs, llm_job};
use llmjobs_testkit::TempDb;
use llmjobs_testkit::logs::CapturedLogs;

/// Captures the dispatcher's debug lines.
fn capture() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
    CapturedLogs::start(tracing::Level::DEBUG)
}

/// How many claims the captured lines record.
fn claims(logs: &CapturedLogs) -> usize {
    logs.text().matches("claimed jobs").count()
}

/// A poll far longer than any test: a claim the tests see was woken by something.
const POLL: Duration = Duration::from_secs(60);

/// A runtime of 4 slots on `db` that polls only every [`POLL`].
async fn open(db: &TempDb) -> Jobs {
    Jobs::builder()
        .url(db.url())
        .concurrency(4)
        .poll_interval(POLL)
        .open()
        .await
        .unwrap()
}

#[llm_job]
async fn add(a: i64, b: i64) -> Result<i64, JobError> {
    Ok(a + b)
}

#[tokio::test]
async fn jobs_handed_off_to_this_process_need_no_claims() {
    let (captured, _guard) = capture();
    let db = TempDb::new();
    let jobs = open(&db).await;
    for i in 0..40 {
        let handle = jobs.spawn(add(i, 1)).await.unwrap();
        assert_eq!(handle.wait().await.unwrap(), i + 1);
    }
    // The claim at start found nothing; each job freed its slot, which wakes the dispatcher,
    // but nothing was left to claim.
    let claims = claims(&captured);
    assert!(
        claims <= 2,
        "{claims} claims for 40 jobs handed off locally"
    );
    jobs.shutdown().await;
}

static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[llm_job(max_concurrency = 1)]
async fn one_at_a_time(n: u32) -> Result<u32, JobError> {
    GATE.acquire().await.expect("gate open").forget();
    Ok(n)
}

#[tokio::test]
async fn a_job_its_limit_left_pending_starts_once_the_limit_has_room() {
    let (captured, _guard) = capture();
    let db = TempDb::new();
    let jobs = open(&db).await;
    let first = jobs.spawn(one_at_a_time(1)).await.unwrap();
    // Handed off but over its name's limit: inserted pending, for a claim.
    let second = jobs.spawn(one_at_a_time(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    GATE.add_permits(2);
    assert_eq!(first.wait().await.unwrap(), 1);
    let started = tokio::time::timeout(Duration::from_secs(10), second.wait()).await;
    assert_eq!(
        started
            .expect("the pending job waited for the poll instead of the freed limit")
            .unwrap(),
        2
    );
    assert!(claims(&captured) >= 2, "the pending job was claimed");
    jobs.shutdown().await;
}
