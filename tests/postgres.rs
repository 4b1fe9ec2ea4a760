//! The public API end to end on PostgreSQL: several runtimes on one database, as workers in
//! several processes would be. Each test has a fresh database from the test kit's harness
//! (`llmjobs_testkit::pg`), and is skipped, saying why, when no PostgreSQL can be had.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use llmjobs::{
    Backoff, CancelOutcome, Error, JobCall, JobContext, JobError, JobFilter, JobState, Jobs,
    llm_job,
};
use llmjobs_testkit::pg::{pg_url, psql};

/// A runtime on `url` with short back-offs, as the tests want them.
async fn open(url: &str) -> Jobs {
    Jobs::builder()
        .url(url)
        .poll_interval(Duration::from_millis(50))
        .backoff(Backoff {
            base: Duration::from_millis(10),
            factor: 2.0,
            cap: Duration::from_millis(50),
        })
        .open()
        .await
        .expect("open the PostgreSQL job database")
}

/// Waits for `condition`, checking every 20 ms; panics with `what` after `timeout`.
async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[llm_job]
async fn pg_add(a: i64, b: i64) -> Result<i64, JobError> {
    Ok(a + b)
}

#[tokio::test(flavor = "multi_thread")]
async fn spawn_then_wait_returns_the_result() {
    let Some(url) = pg_url().await else { return };
    let jobs = open(&url).await;
    let handle = jobs.spawn(pg_add(2, 40)).await.unwrap();
    assert_eq!(handle.wait().await.unwrap(), 42);
    assert_eq!(jobs.run(pg_add(1, 1)).await.unwrap(), 2);
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Completed);
    assert_eq!(status.attempts, 1);
    assert_eq!(status.name, "pg_add");
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tables_live_in_their_own_schema_named_by_the_url() {
    let Some(url) = pg_url().await else { return };
    let jobs = open(&format!("{url}?llmjobs_schema=queue")).await;
    assert_eq!(jobs.run(pg_add(3, 4)).await.unwrap(), 7);
    jobs.shutdown().await;
    let schemas = psql(
        &url,
        "SELECT string_agg(DISTINCT table_schema, ',') FROM information_schema.tables \
         WHERE table_name = 'llmjobs_jobs'",
    );
    assert_eq!(schemas, "queue");
    let public = psql(
        &url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(
        public, "0",
        "nothing is created in the application's schema"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_migrated_by_a_newer_build_is_refused() {
    let Some(url) = pg_url().await else { return };
    open(&url).await.shutdown().await;
    psql(
        &url,
        "INSERT INTO llmjobs.llmjobs_migrations (version, description, success, checksum, \
         execution_time) VALUES (99, 'future', true, '\\x00', 0)",
    );
    let err = Jobs::open(&url).await.unwrap_err();
    assert!(
        err.to_string().contains("version 99 by a newer llmjobs"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runtimes_opening_a_new_database_at_once_migrate_it_once() {
    let Some(url) = pg_url().await else { return };
    let opened = futures_join_all((0..4).map(|_| {
        let url = url.clone();
        async move { open(&url).await }
    }))
    .await;
    for jobs in &opened {
        assert_eq!(jobs.run(pg_add(1, 2)).await.unwrap(), 3);
    }
    for jobs in opened {
        jobs.shutdown().await;
    }
    assert_eq!(
        psql(&url, "SELECT count(*) FROM llmjobs.llmjobs_migrations"),
        "2"
    );
}

/// Runs the futures at once, each on a task of its own.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

static FLAKY_RUNS: AtomicU32 = AtomicU32::new(0);

#[llm_job(retries = 2)]
async fn pg_flaky(ctx: JobContext) -> Result<u32, JobError> {
    FLAKY_RUNS.fetch_add(1, Ordering::SeqCst);
    if ctx.attempt() == 1 {
        return Err(JobError::msg("503 from the provider"));
    }
    Ok(ctx.attempt())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_attempt_is_retried() {
    let Some(url) = pg_url().await else { return };
    let jobs = open(&url).await;
    let handle = jobs.spawn(pg_flaky()).await.unwrap();
    assert_eq!(handle.wait().await.unwrap(), 2);
    let status = handle.status().await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Completed, 2));
    jobs.shutdown().await;
}

static RETRY_OK: AtomicBool = AtomicBool::new(false);

#[llm_job]
async fn pg_fails_until_allowed() -> Result<String, JobError> {
    if RETRY_OK.load(Ordering::SeqCst) {
        Ok("fixed".into())
    } else {
        Err(JobError::permanent(JobError::msg("bad request")))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_puts_a_failed_job_back_and_keeps_its_history() {
    let Some(url) = pg_url().await else { return };
    let jobs = open(&url).await;
    let handle = jobs.spawn(pg_fails_until_allowed()).await.unwrap();
    assert!(handle.wait().await.is_err());
    assert_eq!(handle.status().await.unwrap().state, JobState::Failed);
    RETRY_OK.store(true, Ordering::SeqCst);
    jobs.retry(handle.id()).await.unwrap();
    assert_eq!(handle.wait().await.unwrap(), "fixed");
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Completed);
    assert_eq!(status.earlier_runs.len(), 1, "{status:?}");
    assert!(jobs.retry(handle.id()).await.is_err(), "a completed job");
    jobs.shutdown().await;
}

static CANCEL_STARTED: AtomicBool = AtomicBool::new(false);

#[llm_job]
async fn pg_sleeper() -> Result<(), JobError> {
    CANCEL_STARTED.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_of_a_pending_job_is_immediate() {
    let Some(url) = pg_url().await else { return };
    let jobs = open(&url).await;
    let later = jobs
        .spawn(pg_add(1, 1).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(later.cancel().await.unwrap(), CancelOutcome::Cancelled);
    assert_eq!(later.status().await.unwrap().state, JobState::Cancelled);
    assert_eq!(
        later.cancel().await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_of_a_running_job_from_another_runtime_stops_it() {
    let Some(url) = pg_url().await else { return };
    let worker = open(&url).await;
    let handle = worker.spawn(pg_sleeper()).await.unwrap();
    eventually(Duration::from_secs(10), "the job to start", || {
        CANCEL_STARTED.load(Ordering::SeqCst)
    })
    .await;
    let other = Jobs::builder()
        .url(&url)
        .run_jobs(false)
        .open()
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        other.cancel(handle.id()).await.unwrap(),
        CancelOutcome::Requested
    );
    let remote = other.handle::<()>(handle.id());
    match tokio::time::timeout(Duration::from_secs(5), remote.wait()).await {
        Ok(Err(Error::JobCancelled { .. })) => {}
        other => panic!("expected the job cancelled, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(remote.status().await.unwrap().state, JobState::Cancelled);
    other.shutdown().await;
    worker.shutdown().await;
}

static LIMITED_NOW: AtomicU32 = AtomicU32::new(0);
static LIMITED_MAX: AtomicU32 = AtomicU32::new(0);

#[llm_job(max_concurrency = 2)]
async fn pg_limited(n: u32) -> Result<u32, JobError> {
    let now = LIMITED_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    LIMITED_MAX.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(60)).await;
    LIMITED_NOW.fetch_sub(1, Ordering::SeqCst);
    Ok(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrency_holds_across_two_runtimes_on_one_database() {
    let Some(url) = pg_url().await else { return };
    let (a, b) = (open(&url).await, open(&url).await);
    let mut handles = Vec::new();
    for n in 0..16 {
        let jobs = if n % 2 == 0 { &a } else { &b };
        handles.push(jobs.spawn(pg_limited(n)).await.unwrap());
    }
    for (n, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.wait().await.unwrap(), n as u32);
    }
    assert_eq!(
        LIMITED_MAX.load(Ordering::SeqCst),
        2,
        "never more than 2 at once"
    );
    a.shutdown().await;
    b.shutdown().await;
}

static KEY_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[llm_job]
async fn pg_keyed(gated: bool) -> Result<bool, JobError> {
    if gated {
        KEY_GATE.acquire().await.expect("gate").forget();
    }
    Ok(gated)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saturated_key_does_not_block_another_key() {
    let Some(url) = pg_url().await else { return };
    let (a, b) = (open(&url).await, open(&url).await);
    let mut blocked = Vec::new();
    for i in 0..4 {
        let jobs = if i % 2 == 0 { &a } else { &b };
        let call = pg_keyed(true).concurrency_key("model-a", 1);
        blocked.push(jobs.spawn(call).await.unwrap());
    }
    // Behind the saturated key in claim order, a job of another key still runs at once.
    let free = b
        .spawn(pg_keyed(false).concurrency_key("model-b", 1))
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(5), free.wait())
        .await
        .expect("the other key's job ran while model-a is saturated");
    assert!(!out.unwrap());
    let mut running = 0;
    for handle in &blocked {
        if handle.status().await.unwrap().state == JobState::Running {
            running += 1;
        }
    }
    assert_eq!(
        running, 1,
        "model-a runs one job at a time, across both runtimes"
    );
    KEY_GATE.add_permits(4);
    for handle in blocked {
        assert!(handle.wait().await.unwrap());
    }
    a.shutdown().await;
    b.shutdown().await;
}

static RESUME_STEP_RUNS: AtomicU32 = AtomicU32::new(0);
static RESUME_STEP_DONE: AtomicBool = AtomicBool::new(false);

#[llm_job]
async fn pg_resumable(ctx: JobContext) -> Result<u32, JobError> {
    let paid: u32 = ctx
        .step("paid call", async {
            Ok::<_, JobError>(RESUME_STEP_RUNS.fetch_add(1, Ordering::SeqCst) + 100)
        })
        .await?;
    if ctx.attempt() == 1 {
        RESUME_STEP_DONE.store(true, Ordering::SeqCst);
        // Stuck until its runtime "crashes".
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    Ok(paid + ctx.attempt())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_runtimes_jobs_resume_elsewhere_at_once_with_their_steps_replayed() {
    let Some(url) = pg_url().await else { return };
    let first = open(&url).await;
    let id = first.spawn(pg_resumable()).await.unwrap().id();
    eventually(Duration::from_secs(10), "the step to be journaled", || {
        RESUME_STEP_DONE.load(Ordering::SeqCst)
    })
    .await;
    let second = open(&url).await;
    // A crash: dropped without shutdown, so the job stays `running` under the first owner,
    // whose liveness lock goes with its connection.
    drop(first);
    let started = Instant::now();
    let resumed: u32 = second.handle(id).wait().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resumed, 100 + 2, "the stored step output, on attempt 2");
    assert_eq!(
        RESUME_STEP_RUNS.load(Ordering::SeqCst),
        1,
        "the paid step ran once"
    );
    assert!(
        took < Duration::from_millis(2500),
        "resumed after {took:?}, not at once"
    );
    let status = second.status(id).await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Completed, 2));
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_gives_one_job_across_two_runtimes() {
    let Some(url) = pg_url().await else { return };
    let (a, b) = (open(&url).await, open(&url).await);
    let spawns = futures_join_all((0..8).map(|i| {
        let jobs = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            jobs.spawn(pg_add(5, 6).idempotency_key("order-17"))
                .await
                .unwrap()
        }
    }))
    .await;
    let id = spawns[0].id();
    assert!(spawns.iter().all(|h| h.id() == id), "one job for one key");
    assert_eq!(spawns.iter().filter(|h| h.is_new()).count(), 1);
    assert_eq!(spawns[3].wait().await.unwrap(), 11);
    let conflict = a
        .spawn(pg_add(0, 0).idempotency_key("order-17"))
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, Error::IdempotencyConflict { .. }),
        "{conflict}"
    );
    drop(spawns);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spawn_many_counts_list_and_prune() {
    let Some(url) = pg_url().await else { return };
    let (a, b) = (open(&url).await, open(&url).await);
    let calls: Vec<JobCall<i64>> = (0..200).map(|n| pg_add(n, 1)).collect();
    let handles = a.spawn_many(calls).await.unwrap();
    assert_eq!(handles.len(), 200);
    for (n, handle) in handles.iter().enumerate() {
        assert_eq!(handle.wait().await.unwrap(), n as i64 + 1);
    }
    let counts = b.counts().await.unwrap();
    assert_eq!((counts.completed, counts.unfinished()), (200, 0));
    let page = b
        .list(JobFilter::new().state(JobState::Completed).limit(50))
        .await
        .unwrap();
    assert_eq!(page.len(), 50);
    assert!(page.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let next = b
        .list(
            JobFilter::new()
                .state(JobState::Completed)
                .after(page[49].id)
                .limit(500),
        )
        .await
        .unwrap();
    assert_eq!(next.len(), 150);
    assert_eq!(b.prune(Duration::ZERO).await.unwrap(), 200);
    assert_eq!(b.counts().await.unwrap().completed, 0);
    assert!(b.list(JobFilter::new()).await.unwrap().is_empty());
    a.shutdown().await;
    b.shutdown().await;
}

static GLOBAL_NOW: AtomicU32 = AtomicU32::new(0);
static GLOBAL_MAX: AtomicU32 = AtomicU32::new(0);

#[llm_job]
async fn pg_counted(n: u32) -> Result<u32, JobError> {
    let now = GLOBAL_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    GLOBAL_MAX.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(40)).await;
    GLOBAL_NOW.fetch_sub(1, Ordering::SeqCst);
    Ok(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_global_limit_holds_across_three_runtimes() {
    let Some(url) = pg_url().await else { return };
    let mut runtimes = Vec::new();
    for _ in 0..3 {
        let jobs = Jobs::builder()
            .url(&url)
            .poll_interval(Duration::from_millis(20))
            .global_concurrency(3)
            .open()
            .await
            .unwrap();
        runtimes.push(jobs);
    }
    let calls: Vec<JobCall<u32>> = (0..30).map(pg_counted).collect();
    let handles = runtimes[0].spawn_many(calls).await.unwrap();
    for (n, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.wait().await.unwrap(), n as u32);
    }
    let max = GLOBAL_MAX.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&max),
        "at most 3 at once over all runtimes, saw {max}"
    );
    for jobs in runtimes {
        jobs.shutdown().await;
    }
}
