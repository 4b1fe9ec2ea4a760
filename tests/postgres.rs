//! What only the PostgreSQL backend has: its schema named by the URL, its migrations (refusing a
//! newer build's, safe when several processes migrate at once), and owner liveness by session
//! advisory locks. The behaviour both backends share (spawn, claim, limits, cancel, retry,
//! steps, leases, release, prune, bad rows) is the conformance suite's
//! (`tests/conformance/mod.rs`, run here by `tests/conformance_postgres.rs`).
//!
//! Each test has a fresh database from the test kit's harness (`llmjobs_testkit::pg`), and is
//! skipped, saying why, when no PostgreSQL can be had.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use llmjobs::{Backoff, CancelOutcome, Error, JobError, JobId, JobState, Jobs, Outcome, llm_job};
use llmjobs_testkit::pg::{PsqlSession, pg_url, psql};

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
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { open(&url).await })
        })
        .collect();
    let mut opened = Vec::new();
    for task in tasks {
        opened.push(task.await.expect("task"));
    }
    for jobs in &opened {
        assert_eq!(jobs.run(pg_add(1, 2)).await.unwrap(), 3);
    }
    for jobs in opened {
        jobs.shutdown().await;
    }
    // One record per migration file, each applied once (versions may have gaps).
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/llmjobs/migrations/postgres"
    ))
    .expect("the PostgreSQL migrations")
    .count();
    assert_eq!(
        psql(&url, "SELECT count(*) FROM llmjobs.llmjobs_migrations"),
        files.to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_whose_search_path_lacks_the_schema_can_write_jobs() {
    let Some(url) = pg_url().await else { return };
    let jobs = open(&format!("{url}?llmjobs_schema=queue")).await;
    assert_eq!(jobs.run(pg_add(1, 1)).await.unwrap(), 2);
    // psql's session has the server's default search_path ("$user", public): the counters'
    // trigger, which runs in the writing session, must find its tables by itself.
    let path = psql(&url, "SHOW search_path");
    assert!(!path.contains("queue"), "{path}");
    psql(
        &url,
        "INSERT INTO queue.llmjobs_jobs (id, name, status, args, run_at, created_at) VALUES \
         ('01930000-0000-7000-8000-00000000d001', 'pg_add', 'pending', '{\"a\":2,\"b\":3}', 0, 0); \
         UPDATE queue.llmjobs_jobs SET status = 'cancelled', completed_at = 0 \
         WHERE id = '01930000-0000-7000-8000-00000000d001'",
    );
    let counts = jobs.counts().await.unwrap();
    assert_eq!((counts.completed, counts.cancelled), (1, 1), "{counts:?}");
    psql(
        &url,
        "DELETE FROM queue.llmjobs_jobs WHERE id = '01930000-0000-7000-8000-00000000d001'",
    );
    assert_eq!(jobs.counts().await.unwrap().cancelled, 0);
    jobs.shutdown().await;
}

/// Session advisory locks held in the database at `url` (the liveness locks of its workers).
fn advisory_locks(url: &str) -> u32 {
    psql(
        url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .parse()
    .expect("a count")
}

static HANGS_STARTS: AtomicU32 = AtomicU32::new(0);

#[llm_job]
async fn pg_hangs_first() -> Result<u32, JobError> {
    let start = HANGS_STARTS.fetch_add(1, Ordering::SeqCst);
    if start == 0 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    Ok(start)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_workers_liveness_lock_goes_with_it_and_its_jobs_resume_at_once() {
    let Some(url) = pg_url().await else { return };
    let first = open(&url).await;
    let id = first.spawn(pg_hangs_first()).await.unwrap().id();
    eventually(Duration::from_secs(10), "the job to start", || {
        HANGS_STARTS.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = open(&url).await;
    let held = advisory_locks(&url);
    assert!(held >= 2, "each worker holds its liveness lock: {held}");
    // A crash: dropped without shutdown. The job stays `running` under the first owner; its
    // liveness lock goes with its session.
    drop(first);
    let started = Instant::now();
    let resumed: u32 = second.handle(id).wait().await.unwrap();
    let took = started.elapsed();
    assert_eq!(resumed, 1, "run again by the second worker");
    assert!(
        took < Duration::from_millis(2500),
        "resumed after {took:?}, not at once"
    );
    assert!(
        advisory_locks(&url) < held,
        "the dead worker's lock is gone"
    );
    let status = second.status(id).await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Completed, 2));
    second.shutdown().await;
}

#[llm_job(retries = 1)]
async fn pg_ghost_work() -> Result<u32, JobError> {
    Ok(5)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_whose_liveness_lock_is_free_is_dead_at_once_whatever_its_lease_says() {
    let Some(url) = pg_url().await else { return };
    let jobs = open(&url).await;
    // A worker of another machine died with a job running, its lease an hour from now. SQLite
    // would wait for that lease (it cannot see another machine's lock file); here, nobody
    // holds the owner's advisory lock, so the owner is dead now.
    let ghost: JobId = "01930000-0000-7000-8000-00000000c001".parse().unwrap();
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000;
    psql(
        &url,
        &format!(
            "SET search_path TO llmjobs; INSERT INTO llmjobs_jobs (id, name, status, args, attempts, max_attempts, \
             owner, lease_until, run_at, created_at, started_at) VALUES ('{ghost}', \
             'pg_ghost_work', 'running', '{{}}', 1, 2, 'pid1-0a0b0c0d0e0f', {in_an_hour}, 0, 0, 0)"
        ),
    );
    match jobs
        .handle::<u32>(ghost)
        .wait_timeout(Duration::from_secs(5))
        .await
        .unwrap()
    {
        Outcome::Ready(n) => assert_eq!(n, 5),
        Outcome::Pending(_) => panic!("the dead owner's job waited for its lease"),
    }
    let status = jobs.status(ghost).await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Completed, 2));
    jobs.shutdown().await;
}

/// A runtime on `url` that polls only every 30 s: anything faster is a wake-up.
/// Spawns from 16 tasks into a runtime of 8 slots: most jobs go in running (handed off here),
/// some pending for a claim, and the batches that write them also carry earlier jobs'
/// outcomes, in one statement when nothing needs a decision between statements.
#[tokio::test(flavor = "multi_thread")]
async fn counters_stay_exact_when_spawns_and_outcomes_are_written_together() {
    let Some(url) = pg_url().await else { return };
    let jobs = Jobs::builder()
        .url(&url)
        .concurrency(8)
        .poll_interval(Duration::from_millis(50))
        .open()
        .await
        .expect("open the PostgreSQL job database");
    let mut spawners = Vec::new();
    for _ in 0..16 {
        let jobs = jobs.clone();
        spawners.push(tokio::spawn(async move {
            let mut handles = Vec::new();
            for i in 0..50 {
                handles.push(jobs.spawn(pg_add(i, 1)).await.unwrap());
            }
            for (i, handle) in (0..).zip(handles) {
                assert_eq!(handle.wait().await.unwrap(), i + 1);
            }
        }));
    }
    for spawner in spawners {
        spawner.await.unwrap();
    }
    let counts = jobs.counts().await.unwrap();
    assert_eq!(
        (counts.completed, counts.unfinished()),
        (800, 0),
        "{counts:?}"
    );
    // The counters, summed over their slots, agree with the rows.
    assert_eq!(
        psql(
            &url,
            "SELECT (SELECT count(*) FROM llmjobs.llmjobs_jobs WHERE status = 'completed') \
             || ' ' || (SELECT coalesce(sum(n), 0) FROM llmjobs.llmjobs_counts \
                 WHERE status = 'completed') \
             || ' ' || (SELECT coalesce(sum(n), 0) FROM llmjobs.llmjobs_counts \
                 WHERE status <> 'completed')"
        ),
        "800 800 0"
    );
    jobs.shutdown().await;
}

async fn open_slow_polling(url: &str, run_jobs: bool) -> Jobs {
    Jobs::builder()
        .url(url)
        .poll_interval(Duration::from_secs(30))
        .run_jobs(run_jobs)
        .open()
        .await
        .expect("open the PostgreSQL job database")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_starts_a_job_spawned_by_another_process_at_once() {
    let Some(url) = pg_url().await else { return };
    let worker = open_slow_polling(&url, true).await;
    let spawner = open_slow_polling(&url, false).await;
    // The worker has claimed (nothing) and sleeps until its next poll, 30 s away.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let handle = spawner.spawn(pg_add(20, 22)).await.unwrap();
    let sum = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("the job ran long before the worker's next poll")
        .unwrap();
    assert_eq!(sum, 42);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "ran after {took:?}");
    let status = spawner.status(handle.id()).await.unwrap();
    assert_eq!(status.owner.as_deref(), Some(worker.owner()));
    spawner.shutdown().await;
    worker.shutdown().await;
}

static SLOW_ENDED_AT: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

#[llm_job]
async fn pg_three_seconds() -> Result<u32, JobError> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    *SLOW_ENDED_AT.lock().unwrap() = Some(Instant::now());
    Ok(3)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_in_another_process_is_woken_by_the_end_not_its_next_poll() {
    let Some(url) = pg_url().await else { return };
    let worker = open_slow_polling(&url, true).await;
    let spawner = open_slow_polling(&url, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handle = spawner.spawn(pg_three_seconds()).await.unwrap();
    // By the job's end, 3 s in, the waiter's back-off reads the row every few seconds.
    assert_eq!(handle.wait().await.unwrap(), 3);
    let woken = Instant::now();
    let ended = SLOW_ENDED_AT.lock().unwrap().expect("the body ended");
    let late = woken - ended;
    assert!(
        // The waiter's next poll of the row is about 2 s after the end; 1 s leaves a loaded
        // machine room while still telling a wake-up from a poll.
        late < Duration::from_millis(1000),
        "the waiter saw the end {late:?} after it"
    );
    spawner.shutdown().await;
    worker.shutdown().await;
}

static UNPROVEN_STARTS: AtomicU32 = AtomicU32::new(0);
static UNPROVEN_DROPPED: AtomicU32 = AtomicU32::new(0);

/// Counts its body's futures dropped before they ended.
struct DropProbe;

impl Drop for DropProbe {
    fn drop(&mut self) {
        UNPROVEN_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

#[llm_job]
async fn pg_hangs_until_restarted() -> Result<u32, JobError> {
    let start = UNPROVEN_STARTS.fetch_add(1, Ordering::SeqCst);
    if start == 0 {
        let probe = DropProbe;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        std::mem::forget(probe);
    }
    Ok(start)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_loses_its_liveness_connection_stops_its_jobs_and_takes_the_lock_again() {
    let Some(url) = pg_url().await else { return };
    let jobs = open(&url).await;
    let id = jobs.spawn(pg_hangs_until_restarted()).await.unwrap().id();
    eventually(Duration::from_secs(10), "the job to start", || {
        UNPROVEN_STARTS.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        advisory_locks(&url),
        1,
        "the worker holds its liveness lock"
    );
    // The session holding it ends, as when a network cut or a server restart ends it: another
    // worker could now find the lock free, judge this one dead and take its job.
    let killed = psql(
        &url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' \
         AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    assert_eq!(killed, "1");
    eventually(
        Duration::from_secs(5),
        "the job's future to be dropped",
        || UNPROVEN_DROPPED.load(Ordering::SeqCst) == 1,
    )
    .await;
    // The attempt went back to the queue, and ran again here once the lock was held again.
    let attempt: u32 = tokio::time::timeout(Duration::from_secs(10), jobs.handle(id).wait())
        .await
        .expect("the job ran again")
        .unwrap();
    assert_eq!(attempt, 1, "the second start");
    let status = jobs.status(id).await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Completed, 2));
    assert!(
        status.earlier_runs.is_empty(),
        "an interrupted attempt is no run of its own"
    );
    eventually(Duration::from_secs(5), "the lock to be held again", || {
        advisory_locks(&url) == 1
    })
    .await;
    jobs.shutdown().await;
}

#[llm_job]
async fn pg_always_fails() -> Result<u32, JobError> {
    Err(JobError::permanent(JobError::msg("the upstream refused")))
}

/// Sessions of the database at `url` (other than the one asking) waiting for a lock.
fn lock_waiters(url: &str) -> u32 {
    psql(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND datname = current_database()",
    )
    .parse()
    .expect("a count")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runtimes_retrying_one_failed_job_at_once_retry_it_once() {
    let Some(url) = pg_url().await else { return };
    let jobs = open(&url).await;
    let handle = jobs.spawn(pg_always_fails()).await.unwrap();
    let id = handle.id();
    assert!(handle.wait().await.is_err(), "the job fails");
    jobs.shutdown().await;
    // Two processes' runtimes that run nothing, so the retried job stays pending.
    let passive = || Jobs::builder().url(&url).run_jobs(false).open();
    let (a, b) = (passive().await.unwrap(), passive().await.unwrap());

    // Another session holds the job's row while both retries start, so that both are under way
    // before either can change it: each reads the job as failed unless the read waits too.
    let mut holder = PsqlSession::open(&url);
    holder.send(&format!(
        "BEGIN; SELECT 1 FROM llmjobs.llmjobs_jobs WHERE id = '{id}' FOR UPDATE;"
    ));
    eventually(Duration::from_secs(10), "the row to be held", || {
        psql(
            &url,
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'llmjobs_jobs' AND l.mode = 'RowShareLock' AND l.granted",
        ) == "1"
    })
    .await;
    let (first, second) = (a.clone(), b.clone());
    let retries = tokio::spawn(async move { tokio::join!(first.retry(id), second.retry(id)) });
    eventually(
        Duration::from_secs(10),
        "both retries to wait for the row",
        || lock_waiters(&url) == 2,
    )
    .await;
    holder.send("COMMIT;");
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(10), retries)
        .await
        .expect("both retries answer")
        .unwrap();
    drop(holder);

    let (retried, refused): (Vec<_>, Vec<_>) = [ra, rb].into_iter().partition(Result::is_ok);
    assert_eq!(retried.len(), 1, "exactly one retry happens: {refused:?}");
    match refused.into_iter().next().map(Result::unwrap_err) {
        Some(llmjobs::Error::NotRetryable {
            id: refused_id,
            state,
        }) => {
            assert_eq!(refused_id, id);
            assert_eq!(state, JobState::Pending, "the other finds it retried");
        }
        other => panic!("the other retry is refused as not retryable, not {other:?}"),
    }
    let status = a.status(id).await.unwrap();
    assert_eq!(status.state, JobState::Pending);
    assert_eq!(status.earlier_runs.len(), 1, "one run was put back");
    assert_eq!(status.earlier_runs[0].state, JobState::Failed);
    a.shutdown().await;
    b.shutdown().await;
}

static UNTIL_CANCELLED_STARTED: AtomicBool = AtomicBool::new(false);
static UNTIL_CANCELLED_DROPPED: AtomicBool = AtomicBool::new(false);

/// Says when the body that holds it is dropped: how a job observes its cancellation.
struct DroppedFlag(&'static AtomicBool);

impl Drop for DroppedFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[llm_job]
async fn pg_runs_until_cancelled() -> Result<(), JobError> {
    let _dropped = DroppedFlag(&UNTIL_CANCELLED_DROPPED);
    UNTIL_CANCELLED_STARTED.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_from_another_process_stops_a_running_job_before_its_owners_next_poll() {
    let Some(url) = pg_url().await else { return };
    // The owner's safety net reads cancel requests at its poll interval: every minute here.
    // Only the cancel's NOTIFY can reach it before that.
    let owner = Jobs::builder()
        .url(&url)
        .poll_interval(Duration::from_secs(60))
        .shutdown_grace(Duration::ZERO)
        .open()
        .await
        .unwrap();
    let other = Jobs::builder()
        .url(&url)
        .run_jobs(false)
        .open()
        .await
        .unwrap();
    let handle = owner.spawn(pg_runs_until_cancelled()).await.unwrap();
    eventually(Duration::from_secs(10), "the job to start", || {
        UNTIL_CANCELLED_STARTED.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(
        other.cancel(handle.id()).await.unwrap(),
        CancelOutcome::Requested
    );
    eventually(
        Duration::from_secs(5),
        "the owner to drop the job's future, woken by the cancel",
        || UNTIL_CANCELLED_DROPPED.load(Ordering::SeqCst),
    )
    .await;
    let waited = tokio::time::timeout(
        Duration::from_secs(5),
        other.handle::<()>(handle.id()).wait(),
    )
    .await
    .expect("the job ended");
    assert!(
        matches!(waited, Err(Error::JobCancelled { .. })),
        "{waited:?}"
    );
    let status = owner.status(handle.id()).await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Cancelled, 1));
    other.shutdown().await;
    owner.shutdown().await;
}
