//! The `Store` contract: the behaviour every storage backend must show, written once and run
//! against each backend by a thin test binary (`tests/conformance_sqlite.rs`,
//! `tests/conformance_postgres.rs`):
//!
//! ```ignore
//! mod conformance;
//! conformance::conformance_tests!(conformance::Backend::sqlite());
//! ```
//!
//! Each behaviour is an `async fn` here taking a [`Backend`] (a fresh, empty database), and
//! [`conformance_tests!`] turns every one of them into a `#[tokio::test]` of the binary that
//! invokes it. A test that needs several runtimes on one database (as workers in several
//! processes would be) opens the backend's URL several times. A behaviour left out of the
//! macro's list is an unused function, which clippy's `-D warnings` refuses.
//!
//! Tests run concurrently in one binary, so no job keeps state in a plain static: a test makes
//! a [`Probe`] and passes its token to its jobs as an argument; the bodies find the probe's
//! [`Lab`] (counters, gates, logs) by that token.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use llmjobs::{
    AttemptError, Backoff, CancelOutcome, Error, JobCall, JobContext, JobCounts, JobError,
    JobFilter, JobId, JobState, JobStatus, Jobs, JobsBuilder, Outcome, Progress, Schedule, llm_job,
};
use llmjobs_testkit::TempDb;
use serde_json::json;

/// Expands to one `#[tokio::test]` per behaviour of the contract, each running it on a fresh
/// database from `$backend`: an expression of type `impl Future<Output = Option<Backend>>`,
/// `None` meaning that this backend cannot be had here (the test is then skipped; the backend
/// said why).
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::conformance::conformance_tests!(@each $backend;
            spawn_then_wait_returns_the_result,
            a_retried_job_succeeds_on_a_later_attempt,
            a_permanent_error_is_not_retried,
            cancel_of_a_pending_job_is_immediate,
            cancel_of_a_running_job_from_another_runtime_ends_cancelled,
            a_cancel_during_a_retry_ends_cancelled,
            max_concurrency_holds_across_two_runtimes,
            a_global_limit_holds_across_runtimes,
            a_saturated_key_does_not_block_other_keys,
            a_crashed_runtimes_job_resumes_elsewhere_without_rerunning_its_step,
            a_live_workers_jobs_are_never_taken_and_a_dead_owners_are_resumed,
            a_graceful_shutdown_hands_jobs_back_and_gives_the_attempt_back,
            a_delayed_job_starts_no_earlier_than_its_time_and_holds_no_slot,
            priorities_order_starts_under_a_full_worker,
            concurrent_spawns_of_one_idempotency_key_from_two_runtimes_make_one_job,
            an_idempotency_key_reused_with_other_arguments_is_a_conflict,
            retry_of_a_failed_job_keeps_its_earlier_runs_and_replays_paid_steps,
            each_attempts_error_is_kept_and_a_retry_files_them_under_its_run,
            spawn_many_is_all_or_none,
            counts_and_counts_by_name_match_the_jobs,
            list_filters_and_keyset_paging_visit_every_job_once,
            prune_deletes_finished_jobs_and_never_unfinished_ones,
            a_cron_schedule_run_by_three_runtimes_fires_each_tick_once,
            unschedule_stops_the_ticks,
            the_last_progress_report_is_in_the_row_after_the_job_ends,
            a_corrupt_row_fails_alone_and_the_others_run,
            an_inspector_reads_what_runtimes_wrote,
            an_inspector_refuses_a_database_from_a_newer_llmjobs,
        );
    };
    (@each $backend:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = $backend.await else {
                    return; // this backend cannot be had here: skipped (it said why)
                };
                $crate::conformance::$name(backend).await;
            }
        )+
    };
}
pub(crate) use conformance_tests;

mod inspect;
pub(crate) use inspect::*;

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// A fresh, empty job database on one backend.
pub(crate) struct Backend {
    kind: Kind,
}

enum Kind {
    /// A database file in a temporary folder.
    Sqlite(TempDb),
    /// A database of its own on the test kit's PostgreSQL.
    Postgres(String),
}

impl Backend {
    /// A SQLite database in a new temporary folder.
    #[allow(dead_code)] // each test binary uses one backend
    pub(crate) async fn sqlite() -> Option<Backend> {
        Some(Backend {
            kind: Kind::Sqlite(TempDb::new()),
        })
    }

    /// A new PostgreSQL database, or `None` (after saying why, once) when no PostgreSQL can be
    /// had here and `LLMJOBS_REQUIRE_PG` is not set.
    #[allow(dead_code)] // each test binary uses one backend
    pub(crate) async fn postgres() -> Option<Backend> {
        let url = llmjobs_testkit::pg::pg_url().await?;
        Some(Backend {
            kind: Kind::Postgres(url),
        })
    }

    /// The database's URL; every runtime of a test opens this one.
    pub(crate) fn url(&self) -> String {
        match &self.kind {
            Kind::Sqlite(db) => db.url(),
            Kind::Postgres(url) => url.clone(),
        }
    }

    /// Settings for the tests: quick polls and back-offs, no shutdown grace.
    pub(crate) fn builder(&self) -> JobsBuilder {
        Jobs::builder()
            .url(self.url())
            .poll_interval(Duration::from_millis(20))
            .backoff(Backoff {
                base: Duration::from_millis(10),
                factor: 2.0,
                cap: Duration::from_millis(50),
            })
            .shutdown_grace(Duration::ZERO)
    }

    /// A runtime that runs jobs.
    pub(crate) async fn open(&self) -> Jobs {
        self.builder().open().await.expect("open the job database")
    }

    /// A runtime that runs no jobs and fires no ticks: it spawns, watches and cancels, as a
    /// web front end or another process would.
    pub(crate) async fn watcher(&self) -> Jobs {
        self.builder()
            .run_jobs(false)
            .open()
            .await
            .expect("open the job database")
    }

    /// Runs `sql` on the database with a connection of the test's own, for what no API does
    /// (rows written by hand, as another tool or a bit flip would leave them). Tables are named
    /// unqualified, as the backends name them.
    pub(crate) fn execute(&self, sql: &str) {
        match &self.kind {
            Kind::Sqlite(db) => {
                let conn = rusqlite::Connection::open(db.path()).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                conn.execute_batch(sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            Kind::Postgres(url) => {
                llmjobs_testkit::pg::psql(url, &format!("SET search_path TO llmjobs; {sql}"));
            }
        }
    }

    /// The number `sql` (a `SELECT count(*) ...`) returns.
    pub(crate) fn count(&self, sql: &str) -> i64 {
        match &self.kind {
            Kind::Sqlite(db) => {
                let conn = rusqlite::Connection::open(db.path()).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                conn.query_row(sql, [], |row| row.get(0))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
            Kind::Postgres(url) => {
                llmjobs_testkit::pg::psql(url, &format!("SET search_path TO llmjobs; {sql}"))
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// Values for the `attempts` column of hand-written rows that no job may hold. SQLite lets
    /// any column hold any type, so it gets text as well as a negative count; PostgreSQL's
    /// `attempts` is an `INTEGER`, which cannot hold text (the insert itself fails), so it gets
    /// the corruption its schema allows: a negative count.
    fn corrupt_attempts(&self) -> &'static [&'static str] {
        match &self.kind {
            Kind::Sqlite(_) => &["'many'", "-1"],
            Kind::Postgres(_) => &["-1"],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Probes: state shared by a test and its jobs' bodies
// ---------------------------------------------------------------------------------------------

/// What the bodies of one test's jobs record and wait on.
pub(crate) struct Lab {
    /// Bodies (or paid steps) run.
    runs: AtomicU32,
    /// Bodies running now, and the most at once.
    now: AtomicU32,
    peak: AtomicU32,
    /// Set by a body to tell the test it got somewhere.
    reached: AtomicBool,
    /// Set by the test to let bodies go on.
    release: AtomicBool,
    /// Set when a body's future is dropped.
    dropped: AtomicBool,
    /// Permits for gated bodies.
    gate: tokio::sync::Semaphore,
    /// Numbers the bodies log, in the order they logged them.
    log: Mutex<Vec<u32>>,
    /// When bodies started.
    starts: Mutex<Vec<Instant>>,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            runs: AtomicU32::new(0),
            now: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            reached: AtomicBool::new(false),
            release: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            gate: tokio::sync::Semaphore::new(0),
            log: Mutex::new(Vec::new()),
            starts: Mutex::new(Vec::new()),
        }
    }

    /// Counts a body running for `millis` once `limit` bodies have run at once, keeping the peak.
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

    fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }

    fn peak(&self) -> u32 {
        self.peak.load(Ordering::SeqCst)
    }

    fn reached(&self) -> bool {
        self.reached.load(Ordering::SeqCst)
    }

    fn released(&self) -> bool {
        self.release.load(Ordering::SeqCst)
    }
}

static LABS: Mutex<BTreeMap<String, Arc<Lab>>> = Mutex::new(BTreeMap::new());

/// A test's [`Lab`], registered under a token unique in this process until dropped.
pub(crate) struct Probe {
    token: String,
    lab: Arc<Lab>,
}

impl Probe {
    fn new() -> Probe {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let token = format!("lab-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let lab = Arc::new(Lab::new());
        LABS.lock().unwrap().insert(token.clone(), lab.clone());
        Probe { token, lab }
    }

    /// The token a job takes to find this lab.
    fn token(&self) -> String {
        self.token.clone()
    }
}

impl std::ops::Deref for Probe {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        LABS.lock().unwrap().remove(&self.token);
    }
}

/// The lab of the test whose token a body was given.
fn lab(token: &str) -> Arc<Lab> {
    LABS.lock()
        .unwrap()
        .get(token)
        .cloned()
        .unwrap_or_else(|| panic!("no lab `{token}`: its test has ended"))
}

/// Sets a lab's `dropped` flag when dropped: put in a body to see its future dropped.
struct SetOnDrop(Arc<Lab>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Polls `condition` every 10 ms until it holds; panics after `timeout` naming `what`.
async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls an async `condition` every 10 ms until it holds; panics after `timeout`.
async fn eventually_async<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the status of `id` until it is in `state`; panics after `timeout`.
async fn wait_for_state(jobs: &Jobs, id: JobId, state: JobState, timeout: Duration) -> JobStatus {
    let start = Instant::now();
    loop {
        let status = jobs.status(id).await.unwrap();
        if status.state == state {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "job {id} still {} after {timeout:?}, never {state}",
            status.state
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the status of `id` until it is terminal; panics after `timeout`.
async fn wait_terminal(jobs: &Jobs, id: JobId, timeout: Duration) -> JobStatus {
    let start = Instant::now();
    loop {
        let status = jobs.status(id).await.unwrap();
        if status.state.is_terminal() {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "job {id} still {} after {timeout:?}",
            status.state
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every job in the database, newest first.
async fn everything(jobs: &Jobs) -> Vec<JobStatus> {
    jobs.list(JobFilter::new().limit(100_000)).await.unwrap()
}

/// A job of a name no runtime here registered: it stays pending.
fn runs_elsewhere(n: u32) -> JobCall<()> {
    JobCall::from_json("cf_runs_elsewhere", json!({ "n": n }))
}

async fn shutdown_all(runtimes: &[&Jobs]) {
    for jobs in runtimes {
        jobs.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs (every name unique in this module; state reached through the lab token)
// ---------------------------------------------------------------------------------------------

#[llm_job]
async fn cf_add(a: i64, b: i64) -> Result<i64, JobError> {
    Ok(a + b)
}

#[llm_job]
async fn cf_quick(n: u32) -> Result<u32, JobError> {
    Ok(n)
}

/// Fails its first two attempts, retryably.
#[llm_job(retries = 3)]
async fn cf_flaky(ctx: JobContext, lab: String) -> Result<u32, JobError> {
    self::lab(&lab).runs.fetch_add(1, Ordering::SeqCst);
    if ctx.attempt() < 3 {
        return Err(JobError::msg("503 from the provider"));
    }
    Ok(ctx.attempt())
}

#[llm_job(retries = 3)]
async fn cf_bad_request(lab: String) -> Result<(), JobError> {
    self::lab(&lab).runs.fetch_add(1, Ordering::SeqCst);
    Err(JobError::permanent(JobError::msg(
        "400: the prompt is too long",
    )))
}

#[llm_job]
async fn cf_counts_runs(lab: String) -> Result<(), JobError> {
    self::lab(&lab).runs.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Runs for an hour, unless dropped (which it records).
#[llm_job]
async fn cf_sleeper(lab: String) -> Result<(), JobError> {
    let lab = self::lab(&lab);
    let _guard = SetOnDrop(lab.clone());
    lab.reached.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

/// Fails, retryably, once the test releases it.
#[llm_job(retries = 3)]
async fn cf_fails_when_released(lab: String) -> Result<(), JobError> {
    let lab = self::lab(&lab);
    lab.runs.fetch_add(1, Ordering::SeqCst);
    lab.reached.store(true, Ordering::SeqCst);
    while !lab.released() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(JobError::msg("503: overloaded"))
}

#[llm_job(max_concurrency = 2)]
async fn cf_limited(lab: String, n: u32) -> Result<u32, JobError> {
    self::lab(&lab).hold(2, 60).await;
    Ok(n)
}

/// Holds its slot until three bodies run at once: the global limit of the test that spawns it.
#[llm_job]
async fn cf_counted(lab: String, n: u32) -> Result<u32, JobError> {
    self::lab(&lab).hold(3, 50).await;
    Ok(n)
}

/// One at a time per `model`; a gated body waits for a permit of the lab's gate.
#[llm_job(concurrency_key = model, key_limit = 1)]
async fn cf_per_model(lab: String, model: String, gated: bool) -> Result<String, JobError> {
    if gated {
        let lab = self::lab(&lab);
        lab.gate.acquire().await.expect("the gate").forget();
    }
    Ok(model)
}

/// A paid step, then, on its first attempt, stuck until its runtime goes away.
#[llm_job]
async fn cf_resumable(ctx: JobContext, lab: String) -> Result<u32, JobError> {
    let lab = self::lab(&lab);
    let paid: u32 = ctx
        .step("paid call", async {
            Ok::<_, JobError>(lab.runs.fetch_add(1, Ordering::SeqCst) + 100)
        })
        .await?;
    if ctx.attempt() == 1 {
        lab.reached.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    Ok(paid + ctx.attempt())
}

/// Sleeps for an hour on its first run; returns the attempt number on later runs.
#[llm_job]
async fn cf_first_run_hangs(ctx: JobContext, lab: String) -> Result<u32, JobError> {
    let run = self::lab(&lab).runs.fetch_add(1, Ordering::SeqCst) + 1;
    if run == 1 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    Ok(ctx.attempt())
}

/// Stands in for a job of a worker on another machine that died.
#[llm_job(retries = 1)]
async fn cf_ghost_work() -> Result<u32, JobError> {
    Ok(5)
}

#[llm_job]
async fn cf_delayed(lab: String) -> Result<(), JobError> {
    self::lab(&lab).starts.lock().unwrap().push(Instant::now());
    Ok(())
}

/// Logs `n` when it starts; number 0 holds its slot until the lab is released.
#[llm_job]
async fn cf_ordered(lab: String, n: u32) -> Result<(), JobError> {
    let lab = self::lab(&lab);
    lab.log.lock().unwrap().push(n);
    while n == 0 && !lab.released() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A paid step, then a permanent failure until the lab is released.
#[llm_job]
async fn cf_fails_until_fixed(ctx: JobContext, lab: String) -> Result<u32, JobError> {
    let lab = self::lab(&lab);
    let paid: u32 = ctx
        .step("paid", async {
            Ok::<_, JobError>(lab.runs.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .await?;
    if !lab.released() {
        return Err(JobError::permanent(JobError::msg("the upstream was down")));
    }
    Ok(paid)
}

/// Fails each attempt, retryably, with an error naming the attempt, until the lab is released;
/// the last error is long.
#[llm_job(retries = 2)]
async fn cf_fails_each_attempt(ctx: JobContext, lab: String) -> Result<u32, JobError> {
    if self::lab(&lab).released() {
        return Ok(ctx.attempt());
    }
    match ctx.attempt() {
        3 => Err(JobError::msg(format!("attempt 3: {}", "x".repeat(5000)))),
        n => Err(JobError::msg(format!("attempt {n}: 503 from the provider"))),
    }
}

/// Runs until the lab is released.
#[llm_job]
async fn cf_parked(lab: String) -> Result<(), JobError> {
    let lab = self::lab(&lab);
    lab.reached.store(true, Ordering::SeqCst);
    while !lab.released() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[llm_job]
async fn cf_refuses() -> Result<(), JobError> {
    Err(JobError::permanent(JobError::msg("no")))
}

/// A journaled step, so that the job has a journal.
#[llm_job]
async fn cf_journaled(ctx: JobContext, n: u32) -> Result<u32, JobError> {
    ctx.step("echo", async { Ok::<_, JobError>(n) }).await
}

#[llm_job]
async fn cf_beat() -> Result<(), JobError> {
    Ok(())
}

#[llm_job]
async fn cf_reports_then_ends(ctx: JobContext, n: u32) -> Result<(), JobError> {
    ctx.progress(0.5, "half way").await;
    // The first report is written and the progress writer goes idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctx.report(Progress::new(1.0, format!("done {n}")));
    tokio::task::yield_now().await;
    Ok(())
}

#[llm_job(max_concurrency = 8)]
async fn cf_plain(n: u32) -> Result<u32, JobError> {
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Spawn, wait, retries
// ---------------------------------------------------------------------------------------------

pub(crate) async fn spawn_then_wait_returns_the_result(backend: Backend) {
    let jobs = backend.open().await;
    let handle = jobs.spawn(cf_add(2, 40)).await.unwrap();
    assert_eq!(handle.wait().await.unwrap(), 42);
    assert_eq!(jobs.run(cf_add(1, 1)).await.unwrap(), 2);
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Completed);
    assert_eq!(status.attempts, 1);
    assert_eq!(status.name, "cf_add");
    assert!(status.started_at.is_some() && status.completed_at.is_some());
    // Another runtime reattaches by id and reads the same result.
    let other = backend.watcher().await;
    assert_eq!(other.handle::<i64>(handle.id()).wait().await.unwrap(), 42);
    // A job spawned by a runtime that runs nothing is run by one that does.
    let remote = other.spawn(cf_add(20, 3)).await.unwrap();
    assert_eq!(remote.wait().await.unwrap(), 23);
    shutdown_all(&[&other, &jobs]).await;
}

pub(crate) async fn a_retried_job_succeeds_on_a_later_attempt(backend: Backend) {
    let probe = Probe::new();
    let jobs = backend.open().await;
    let handle = jobs.spawn(cf_flaky(probe.token())).await.unwrap();
    assert_eq!(handle.wait().await.unwrap(), 3, "it succeeded on attempt 3");
    let status = handle.status().await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Completed, 3));
    assert_eq!(status.max_attempts, 4, "retries = 3");
    assert_eq!(probe.runs(), 3);
    jobs.shutdown().await;
}

pub(crate) async fn a_permanent_error_is_not_retried(backend: Backend) {
    let probe = Probe::new();
    let jobs = backend.open().await;
    let handle = jobs.spawn(cf_bad_request(probe.token())).await.unwrap();
    let err = handle.wait().await.unwrap_err();
    assert!(
        matches!(&err, Error::JobFailed { error, .. } if error.contains("400: the prompt")),
        "{err}"
    );
    let status = handle.status().await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Failed, 1));
    assert_eq!(status.error.as_deref(), Some("400: the prompt is too long"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(probe.runs(), 1, "never run again");
    jobs.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------------

pub(crate) async fn cancel_of_a_pending_job_is_immediate(backend: Backend) {
    let probe = Probe::new();
    let front = backend.watcher().await;
    let handle = front.spawn(cf_counts_runs(probe.token())).await.unwrap();
    assert_eq!(handle.cancel().await.unwrap(), CancelOutcome::Cancelled);
    let status = handle.status().await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Cancelled, 0));
    assert!(matches!(
        handle.wait().await,
        Err(Error::JobCancelled { .. })
    ));
    // A delayed job too.
    let later = front
        .spawn(cf_counts_runs(probe.token()).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(later.cancel().await.unwrap(), CancelOutcome::Cancelled);
    // A worker opened afterwards never runs them.
    let worker = backend.open().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in [handle.id(), later.id()] {
        let status = worker.status(id).await.unwrap();
        assert_eq!((status.state, status.attempts), (JobState::Cancelled, 0));
    }
    assert_eq!(probe.runs(), 0);
    assert_eq!(
        worker.cancel(handle.id()).await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
    shutdown_all(&[&worker, &front]).await;
}

pub(crate) async fn cancel_of_a_running_job_from_another_runtime_ends_cancelled(backend: Backend) {
    let probe = Probe::new();
    let worker = backend.open().await;
    let handle = worker.spawn(cf_sleeper(probe.token())).await.unwrap();
    eventually(Duration::from_secs(10), "the job to start", || {
        probe.reached()
    })
    .await;
    let other = backend.watcher().await;
    let asked = Instant::now();
    assert_eq!(
        other.cancel(handle.id()).await.unwrap(),
        CancelOutcome::Requested
    );
    let remote = other.handle::<()>(handle.id());
    match tokio::time::timeout(Duration::from_secs(5), remote.wait()).await {
        Ok(Err(Error::JobCancelled { .. })) => {}
        other => panic!("expected the job cancelled, got {other:?}"),
    }
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "cancelled after {took:?}");
    assert_eq!(remote.status().await.unwrap().state, JobState::Cancelled);
    eventually(
        Duration::from_secs(2),
        "the body's future to be dropped",
        || probe.dropped.load(Ordering::SeqCst),
    )
    .await;
    assert!(matches!(
        handle.wait().await,
        Err(Error::JobCancelled { .. })
    ));
    assert_eq!(
        handle.cancel().await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
    shutdown_all(&[&other, &worker]).await;
}

pub(crate) async fn a_cancel_during_a_retry_ends_cancelled(backend: Backend) {
    let probe = Probe::new();
    let worker = backend.open().await;
    // Cancelled from a runtime that does not run the job, as another process would.
    let front = backend.watcher().await;
    let handle = worker
        .spawn(cf_fails_when_released(probe.token()))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the attempt to start", || {
        probe.reached()
    })
    .await;
    assert_eq!(
        front.cancel(handle.id()).await.unwrap(),
        CancelOutcome::Requested
    );
    // The attempt fails (retryably) right after the cancel was requested.
    probe.release.store(true, Ordering::SeqCst);
    let status = wait_terminal(&worker, handle.id(), Duration::from_secs(10)).await;
    assert_eq!(status.state, JobState::Cancelled, "{status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(probe.runs(), 1, "the body never ran again");
    assert!(matches!(
        handle.wait().await,
        Err(Error::JobCancelled { .. })
    ));
    shutdown_all(&[&worker, &front]).await;
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

pub(crate) async fn max_concurrency_holds_across_two_runtimes(backend: Backend) {
    let probe = Probe::new();
    let (a, b) = (backend.open().await, backend.open().await);
    let mut handles = Vec::new();
    for n in 0..16 {
        let jobs = if n % 2 == 0 { &a } else { &b };
        handles.push(jobs.spawn(cf_limited(probe.token(), n)).await.unwrap());
    }
    for (n, handle) in (0..).zip(handles) {
        assert_eq!(handle.wait().await.unwrap(), n);
    }
    assert_eq!(
        probe.peak(),
        2,
        "max_concurrency = 2: reached, never exceeded"
    );
    shutdown_all(&[&a, &b]).await;
}

pub(crate) async fn a_global_limit_holds_across_runtimes(backend: Backend) {
    let probe = Probe::new();
    let mut runtimes = Vec::new();
    for _ in 0..3 {
        let jobs = backend
            .builder()
            .concurrency(5)
            .global_concurrency(3)
            .open()
            .await
            .unwrap();
        runtimes.push(jobs);
    }
    let mut handles = Vec::new();
    for n in 0..24u32 {
        let jobs = &runtimes[n as usize % 3];
        handles.push(jobs.spawn(cf_counted(probe.token(), n)).await.unwrap());
    }
    for (n, handle) in (0..).zip(handles) {
        assert_eq!(handle.wait().await.unwrap(), n);
    }
    assert_eq!(
        probe.peak(),
        3,
        "the global limit of 3 was reached but never exceeded"
    );
    for jobs in &runtimes {
        jobs.shutdown().await;
    }
}

pub(crate) async fn a_saturated_key_does_not_block_other_keys(backend: Backend) {
    let probe = Probe::new();
    let a = backend.builder().concurrency(8).open().await.unwrap();
    let b = backend.builder().concurrency(8).open().await.unwrap();
    // More jobs of the busy key than a claim reads in one page, all ahead in claim order.
    let busy: Vec<JobCall<String>> = (0..150)
        .map(|_| cf_per_model(probe.token(), "busy".into(), true))
        .collect();
    a.spawn_many(busy).await.unwrap();
    let free = b
        .spawn(cf_per_model(probe.token(), "free".into(), false))
        .await
        .unwrap();
    match free.wait_timeout(Duration::from_secs(10)).await.unwrap() {
        Outcome::Ready(model) => assert_eq!(model, "free"),
        Outcome::Pending(_) => panic!("a job of another key waited behind the saturated one"),
    }
    // A call can set its own key too, and it is not held back either.
    let own_key = a
        .spawn(cf_quick(9).concurrency_key("another", 1))
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), own_key.wait())
        .await
        .expect("a job of its own key ran while `busy` is saturated");
    assert_eq!(out.unwrap(), 9);
    let running = a
        .list(JobFilter::new().state(JobState::Running).limit(1000))
        .await
        .unwrap();
    assert_eq!(running.len(), 1, "the busy key stays at its limit of 1");
    assert_eq!(running[0].concurrency_key.as_deref(), Some("busy"));
    // Let two of them through: the key runs them one after the other.
    probe.gate.add_permits(2);
    eventually(Duration::from_secs(10), "two busy jobs to end", || {
        probe.gate.available_permits() == 0
    })
    .await;
    let counts = a.counts().await.unwrap();
    assert!(counts.running <= 1, "{counts:?}");
    shutdown_all(&[&a, &b]).await;
}

// ---------------------------------------------------------------------------------------------
// Leases, crashes and release
// ---------------------------------------------------------------------------------------------

pub(crate) async fn a_crashed_runtimes_job_resumes_elsewhere_without_rerunning_its_step(
    backend: Backend,
) {
    let probe = Probe::new();
    let first = backend.open().await;
    let id = first.spawn(cf_resumable(probe.token())).await.unwrap().id();
    eventually(Duration::from_secs(10), "the step to be journaled", || {
        probe.reached()
    })
    .await;
    let second = backend.open().await;
    // A crash: dropped without shutdown, so the job stays `running` under the first owner,
    // whose liveness lock goes with it.
    drop(first);
    let started = Instant::now();
    let resumed: u32 = tokio::time::timeout(Duration::from_secs(10), second.handle(id).wait())
        .await
        .expect("the job of the crashed runtime resumed")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resumed, 100 + 2, "the stored step output, on attempt 2");
    assert_eq!(probe.runs(), 1, "the paid step ran once");
    assert!(
        took < Duration::from_secs(5),
        "resumed after {took:?}, not within a few seconds"
    );
    let status = second.status(id).await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Completed, 2));
    assert_eq!(status.owner.as_deref(), Some(second.owner()));
    second.shutdown().await;
}

pub(crate) async fn a_live_workers_jobs_are_never_taken_and_a_dead_owners_are_resumed(
    backend: Backend,
) {
    let probe = Probe::new();
    let worker = backend.open().await;
    let mine = worker.spawn(cf_sleeper(probe.token())).await.unwrap();
    eventually(Duration::from_secs(10), "the job to start", || {
        probe.reached()
    })
    .await;
    // The live worker's lease looks expired (its heartbeat was late, say), and a worker of
    // another machine died with a job running.
    backend.execute(&format!(
        "UPDATE llmjobs_jobs SET lease_until = 0 WHERE id = '{}'",
        mine.id()
    ));
    let ghost: JobId = "01930000-0000-7000-8000-00000000a001".parse().unwrap();
    backend.execute(&format!(
        "INSERT INTO llmjobs_jobs (id, name, status, args, attempts, max_attempts, owner, \
         lease_until, run_at, created_at, started_at) VALUES ('{ghost}', 'cf_ghost_work', \
         'running', '{{}}', 1, 2, 'pid1-0a0b0c0d0e0f', 0, 0, 0, 0)"
    ));
    // Another live runtime looks at both.
    let other = backend.open().await;
    match other
        .handle::<u32>(ghost)
        .wait_timeout(Duration::from_secs(10))
        .await
        .unwrap()
    {
        Outcome::Ready(n) => assert_eq!(n, 5),
        Outcome::Pending(_) => panic!("the dead worker's job was not resumed"),
    }
    let ghost_status = other.status(ghost).await.unwrap();
    assert_eq!(ghost_status.attempts, 2, "the interrupted attempt counts");
    let interrupted = &ghost_status.attempt_errors;
    assert_eq!(interrupted.len(), 1, "{ghost_status:?}");
    assert_eq!(interrupted[0].attempt, 1);
    assert_eq!(
        interrupted[0].error,
        "interrupted: its worker pid1-0a0b0c0d0e0f died or lost its lease"
    );
    // Several recovery rounds later, the live worker still runs its own job, once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = mine.status().await.unwrap();
    assert_eq!(status.state, JobState::Running);
    assert_eq!(status.owner.as_deref(), Some(worker.owner()));
    assert_eq!(status.attempts, 1, "{status:?}");
    assert!(!probe.dropped.load(Ordering::SeqCst), "the job was stopped");
    shutdown_all(&[&other, &worker]).await;
}

pub(crate) async fn a_graceful_shutdown_hands_jobs_back_and_gives_the_attempt_back(
    backend: Backend,
) {
    let probe = Probe::new();
    let first = backend.open().await;
    let id = first
        .spawn(cf_first_run_hangs(probe.token()))
        .await
        .unwrap()
        .id();
    eventually(Duration::from_secs(10), "the job to start", || {
        probe.runs() == 1
    })
    .await;
    // No grace: the running job is handed back at once.
    first.shutdown().await;
    let front = backend.watcher().await;
    let status = front.status(id).await.unwrap();
    assert_eq!(status.state, JobState::Pending, "{status:?}");
    assert_eq!(status.attempts, 0, "the interrupted attempt was given back");
    assert!(status.owner.is_none(), "{status:?}");
    // The next runtime resumes it at once, as its first attempt.
    let second = backend.open().await;
    let started = Instant::now();
    let attempt: u32 = tokio::time::timeout(Duration::from_secs(5), second.handle(id).wait())
        .await
        .expect("the handed-back job resumed at once")
        .unwrap();
    assert_eq!(attempt, 1);
    assert!(started.elapsed() < Duration::from_secs(3));
    let status = second.status(id).await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Completed, 1));
    assert_eq!(probe.runs(), 2);
    shutdown_all(&[&second, &front]).await;
}

// ---------------------------------------------------------------------------------------------
// Scheduling: run later, priority
// ---------------------------------------------------------------------------------------------

pub(crate) async fn a_delayed_job_starts_no_earlier_than_its_time_and_holds_no_slot(
    backend: Backend,
) {
    let probe = Probe::new();
    let jobs = backend.builder().concurrency(1).open().await.unwrap();
    let spawned = Instant::now();
    let handle = jobs
        .spawn(cf_delayed(probe.token()).delay(Duration::from_millis(700)))
        .await
        .unwrap();
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Pending);
    assert!(status.run_at > SystemTime::now(), "run_at is in the future");
    // The only slot is free for other work meanwhile.
    let other = tokio::time::timeout(Duration::from_millis(500), jobs.run(cf_quick(1)))
        .await
        .expect("a delayed job holds no slot");
    assert_eq!(other.unwrap(), 1);
    handle.wait().await.unwrap();
    let started = probe.starts.lock().unwrap()[0];
    assert!(
        started - spawned >= Duration::from_millis(700),
        "started {:?} after the spawn",
        started - spawned
    );
    // A time in the past means now.
    let past = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(jobs.run(cf_quick(2).run_at(past)).await.unwrap(), 2);
    jobs.shutdown().await;
}

pub(crate) async fn priorities_order_starts_under_a_full_worker(backend: Backend) {
    let probe = Probe::new();
    let jobs = backend.builder().concurrency(1).open().await.unwrap();
    let gate = jobs.spawn(cf_ordered(probe.token(), 0)).await.unwrap();
    eventually(Duration::from_secs(10), "the gate job to start", || {
        !probe.log.lock().unwrap().is_empty()
    })
    .await;
    let mut handles = Vec::new();
    for (n, priority) in [(1, 0), (2, 10), (3, 5), (4, 10), (5, 0), (6, -3)] {
        let call = cf_ordered(probe.token(), n).priority(priority);
        handles.push(jobs.spawn(call).await.unwrap());
    }
    assert_eq!(handles[1].status().await.unwrap().priority, 10);
    probe.release.store(true, Ordering::SeqCst);
    gate.wait().await.unwrap();
    for handle in handles {
        handle.wait().await.unwrap();
    }
    assert_eq!(
        *probe.log.lock().unwrap(),
        [0, 2, 4, 3, 1, 5, 6],
        "higher first, FIFO within a priority"
    );
    jobs.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Managing jobs: idempotency keys, retry, batches, counts, listings, prune
// ---------------------------------------------------------------------------------------------

pub(crate) async fn concurrent_spawns_of_one_idempotency_key_from_two_runtimes_make_one_job(
    backend: Backend,
) {
    let (first, second) = (backend.open().await, backend.open().await);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let jobs = if i % 2 == 0 { &first } else { &second }.clone();
            tokio::spawn(async move {
                let handle = jobs
                    .spawn(cf_add(5, 6).idempotency_key("order-42"))
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
    let id = *ids.iter().next().unwrap();
    assert_eq!(first.handle::<i64>(id).wait().await.unwrap(), 11);
    assert_eq!(first.counts().await.unwrap().total(), 1);
    let status = second.status(id).await.unwrap();
    assert_eq!(status.idempotency_key.as_deref(), Some("order-42"));
    let found = second
        .list(JobFilter::new().idempotency_key("order-42"))
        .await
        .unwrap();
    assert_eq!(found.iter().map(|s| s.id).collect::<Vec<_>>(), [id]);
    // After the job ended, the key still holds (no window set): the same job again.
    let again = second
        .spawn(cf_add(5, 6).idempotency_key("order-42"))
        .await
        .unwrap();
    assert_eq!((again.id(), again.is_new()), (id, false));
    shutdown_all(&[&first, &second]).await;
}

pub(crate) async fn an_idempotency_key_reused_with_other_arguments_is_a_conflict(backend: Backend) {
    let jobs = backend.open().await;
    let other = backend.watcher().await;
    let held = jobs.spawn(cf_quick(1).idempotency_key("k1")).await.unwrap();
    for runtime in [&jobs, &other] {
        let err = runtime
            .spawn(cf_quick(2).idempotency_key("k1"))
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
    }
    assert_eq!(held.wait().await.unwrap(), 1);
    assert_eq!(jobs.counts().await.unwrap().total(), 1, "no second job");
    shutdown_all(&[&jobs, &other]).await;
}

pub(crate) async fn retry_of_a_failed_job_keeps_its_earlier_runs_and_replays_paid_steps(
    backend: Backend,
) {
    let probe = Probe::new();
    let jobs = backend.open().await;
    let front = backend.watcher().await;
    let handle = jobs
        .spawn(cf_fails_until_fixed(probe.token()))
        .await
        .unwrap();
    assert!(handle.wait().await.is_err());
    assert_eq!(handle.status().await.unwrap().state, JobState::Failed);
    // A pending job cannot be retried.
    let pending = front.spawn(runs_elsewhere(1)).await.unwrap();
    assert!(matches!(
        front.retry(pending.id()).await,
        Err(Error::NotRetryable {
            state: JobState::Pending,
            ..
        })
    ));
    probe.release.store(true, Ordering::SeqCst);
    // From another runtime, as from another process.
    front.retry(handle.id()).await.unwrap();
    assert_eq!(
        handle.wait().await.unwrap(),
        1,
        "the paid step was replayed"
    );
    assert_eq!(probe.runs(), 1, "the paid step ran once");
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Completed);
    assert_eq!(status.attempts, 1, "a fresh attempt budget");
    assert_eq!(status.earlier_runs.len(), 1, "{status:?}");
    assert_eq!(status.earlier_runs[0].state, JobState::Failed);
    assert_eq!(status.earlier_runs[0].attempts, 1);
    assert_eq!(
        status.earlier_runs[0].error.as_deref(),
        Some("the upstream was down")
    );
    // A completed job cannot be retried either.
    assert!(matches!(
        jobs.retry(handle.id()).await,
        Err(Error::NotRetryable {
            state: JobState::Completed,
            ..
        })
    ));
    // A cancelled job can; from scratch, its journal is cleared and the step runs again.
    // Due later, so that no worker (woken at once by a spawn elsewhere, on PostgreSQL) runs
    // its step before the cancel lands: it is cancelled while pending.
    let cancelled = front
        .spawn(cf_fails_until_fixed(probe.token()).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    front.cancel(cancelled.id()).await.unwrap();
    assert_eq!(cancelled.status().await.unwrap().state, JobState::Cancelled);
    jobs.retry_from_scratch(cancelled.id()).await.unwrap();
    assert_eq!(cancelled.wait().await.unwrap(), 2, "the step ran afresh");
    let status = cancelled.status().await.unwrap();
    assert_eq!(status.earlier_runs.len(), 1);
    assert_eq!(status.earlier_runs[0].state, JobState::Cancelled);
    shutdown_all(&[&jobs, &front]).await;
}

pub(crate) async fn each_attempts_error_is_kept_and_a_retry_files_them_under_its_run(
    backend: Backend,
) {
    let probe = Probe::new();
    let jobs = backend.open().await;
    let spawned = SystemTime::now();
    let handle = jobs
        .spawn(cf_fails_each_attempt(probe.token()))
        .await
        .unwrap();
    assert!(handle.wait().await.is_err());
    let status = handle.status().await.unwrap();
    assert_eq!(status.state, JobState::Failed, "{status:?}");
    let errors = &status.attempt_errors;
    let attempts: Vec<u32> = errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(errors[0].error, "attempt 1: 503 from the provider");
    assert_eq!(errors[1].error, "attempt 2: 503 from the provider");
    // The history keeps a bounded text; the job's error keeps it whole.
    assert_eq!(errors[2].error.chars().count(), AttemptError::MAX_CHARS);
    assert!(
        status
            .error
            .as_deref()
            .unwrap()
            .starts_with(&errors[2].error)
    );
    assert_eq!(
        status.error.as_deref().unwrap().len(),
        "attempt 3: ".len() + 5000
    );
    let spawned_ms = spawned.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(errors[0].ended_at_ms >= spawned_ms - 1000, "{errors:?}");
    assert!(
        errors
            .windows(2)
            .all(|w| w[0].ended_at_ms <= w[1].ended_at_ms),
        "oldest first: {errors:?}"
    );
    // A retry starts a run with no errors, and files the old ones under the run it records.
    probe.release.store(true, Ordering::SeqCst);
    jobs.retry(handle.id()).await.unwrap();
    assert_eq!(handle.wait().await.unwrap(), 1);
    let status = handle.status().await.unwrap();
    assert!(status.attempt_errors.is_empty(), "{status:?}");
    assert_eq!(status.earlier_runs.len(), 1);
    assert_eq!(&status.earlier_runs[0].attempt_errors, errors);
    shutdown_all(&[&jobs]).await;
}

pub(crate) async fn spawn_many_is_all_or_none(backend: Backend) {
    let jobs = backend.open().await;
    let calls: Vec<JobCall<u32>> = (0..500).map(cf_quick).collect();
    let handles = jobs.spawn_many(calls).await.unwrap();
    assert_eq!(handles.len(), 500);
    assert!(handles.iter().all(|h| h.is_new()));
    for (n, handle) in (0..).zip(&handles) {
        assert_eq!(handle.wait().await.unwrap(), n);
    }
    // A call in the middle that cannot go in (its key is held by different work) keeps every
    // other call of the batch out too.
    jobs.spawn(cf_quick(1).idempotency_key("taken"))
        .await
        .unwrap();
    let mut calls: Vec<JobCall<u32>> = (1000..1300).map(cf_quick).collect();
    calls.insert(150, cf_quick(2).idempotency_key("taken"));
    let before = jobs.counts().await.unwrap().total();
    let err = jobs.spawn_many(calls).await.unwrap_err();
    assert!(matches!(err, Error::IdempotencyConflict { .. }), "{err:?}");
    assert_eq!(jobs.counts().await.unwrap().total(), before, "none went in");
    assert_eq!(everything(&jobs).await.len() as u64, before);
    // A batch from a runtime that runs nothing goes in whole, in order.
    let front = backend.watcher().await;
    let handles = front
        .spawn_many((0..50).map(runs_elsewhere).collect::<Vec<_>>())
        .await
        .unwrap();
    let pending = front
        .list(
            JobFilter::new()
                .state(JobState::Pending)
                .limit(1000)
                .oldest_first(),
        )
        .await
        .unwrap();
    assert_eq!(
        pending.iter().map(|s| s.id).collect::<Vec<_>>(),
        handles.iter().map(|h| h.id()).collect::<Vec<_>>()
    );
    shutdown_all(&[&jobs, &front]).await;
}

/// Counts per state tallied from the listing, overall and per name.
fn tally(all: &[JobStatus]) -> (JobCounts, BTreeMap<String, JobCounts>) {
    let mut total = JobCounts::default();
    let mut by_name: BTreeMap<String, JobCounts> = BTreeMap::new();
    for status in all {
        for counts in [&mut total, by_name.entry(status.name.clone()).or_default()] {
            match status.state {
                JobState::Pending => counts.pending += 1,
                JobState::Running => counts.running += 1,
                JobState::Completed => counts.completed += 1,
                JobState::Failed => counts.failed += 1,
                JobState::Cancelled => counts.cancelled += 1,
            }
        }
    }
    (total, by_name)
}

/// `counts` and `counts_by_name` agree with the listing.
async fn assert_counts_match(jobs: &Jobs) {
    let (total, by_name) = tally(&everything(jobs).await);
    assert_eq!(jobs.counts().await.unwrap(), total);
    let counted: BTreeMap<String, JobCounts> = jobs
        .counts_by_name()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, counts)| counts.total() > 0)
        .collect();
    assert_eq!(counted, by_name);
}

pub(crate) async fn counts_and_counts_by_name_match_the_jobs(backend: Backend) {
    let probe = Probe::new();
    let jobs = backend.open().await;
    let front = backend.watcher().await;
    assert_eq!(jobs.counts().await.unwrap(), JobCounts::default());
    for n in 0..20 {
        jobs.spawn(cf_quick(n)).await.unwrap();
    }
    let retried = jobs.spawn(cf_flaky(probe.token())).await.unwrap();
    let failed = jobs.spawn(cf_refuses()).await.unwrap();
    let running = jobs.spawn(cf_parked(probe.token())).await.unwrap();
    // Pending for ever (nobody runs it), and one cancelled while pending.
    let waiting = front.spawn(runs_elsewhere(1)).await.unwrap();
    let cancelled = front.spawn(runs_elsewhere(2)).await.unwrap();
    front.cancel(cancelled.id()).await.unwrap();
    assert_eq!(retried.wait().await.unwrap(), 3);
    assert!(failed.wait().await.is_err());
    eventually(Duration::from_secs(10), "the parked job to start", || {
        probe.reached()
    })
    .await;
    let expected = |c: JobCounts| [c.pending, c.running, c.completed, c.failed, c.cancelled];
    eventually_async(
        Duration::from_secs(10),
        "every quick job to end",
        || async { expected(jobs.counts().await.unwrap()) == [1, 1, 21, 1, 1] },
    )
    .await;
    assert_counts_match(&jobs).await;
    let by_name = front.counts_by_name().await.unwrap();
    assert_eq!(by_name["cf_quick"].completed, 20);
    assert_eq!(by_name["cf_runs_elsewhere"].pending, 1);
    assert_eq!(by_name["cf_runs_elsewhere"].cancelled, 1);
    assert_eq!(by_name["cf_parked"].running, 1);
    assert_eq!(by_name["cf_flaky"].completed, 1);

    // A running job cancelled, a pending one cancelled, a failed one retried, then a prune.
    jobs.cancel(running.id()).await.unwrap();
    front.cancel(waiting.id()).await.unwrap();
    wait_for_state(
        &jobs,
        running.id(),
        JobState::Cancelled,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(expected(jobs.counts().await.unwrap()), [0, 0, 21, 1, 3]);
    assert_counts_match(&front).await;
    jobs.retry(failed.id()).await.unwrap();
    wait_terminal(&jobs, failed.id(), Duration::from_secs(10)).await;
    assert_counts_match(&jobs).await;
    assert_eq!(jobs.prune(Duration::ZERO).await.unwrap(), 25);
    assert_eq!(jobs.counts().await.unwrap(), JobCounts::default());
    assert_counts_match(&jobs).await;
    probe.release.store(true, Ordering::SeqCst);
    shutdown_all(&[&jobs, &front]).await;
}

/// Pages through `filter` `page` jobs at a time; the ids seen, in order.
async fn page_through(jobs: &Jobs, filter: JobFilter, page: u32) -> Vec<JobId> {
    let mut seen = Vec::new();
    let mut filter = filter.limit(page);
    loop {
        let rows = jobs.list(filter.clone()).await.unwrap();
        seen.extend(rows.iter().map(|s| s.id));
        match rows.last() {
            Some(last) if rows.len() == page as usize => filter = filter.after(last.id),
            _ => return seen,
        }
    }
}

pub(crate) async fn list_filters_and_keyset_paging_visit_every_job_once(backend: Backend) {
    let jobs = backend.open().await;
    let front = backend.watcher().await;
    let mut done = Vec::new();
    for n in 0..25 {
        done.push(jobs.spawn(cf_quick(n)).await.unwrap().id());
    }
    let mut waiting = Vec::new();
    for n in 0..12 {
        let mut call = runs_elsewhere(n);
        if n % 3 == 0 {
            call = call.concurrency_key("model-a", 1);
        }
        waiting.push(front.spawn(call).await.unwrap().id());
    }
    let keyed = front
        .spawn(runs_elsewhere(99).idempotency_key("invoice-7"))
        .await
        .unwrap()
        .id();
    for id in &done {
        jobs.handle::<u32>(*id).wait().await.unwrap();
    }

    // Newest first (ids are time-ordered), or oldest first.
    let all = everything(&jobs).await;
    assert_eq!(all.len(), 38);
    let ids: Vec<JobId> = all.iter().map(|s| s.id).collect();
    let mut newest_first = ids.clone();
    newest_first.sort_by_key(|id| std::cmp::Reverse(id.to_string()));
    assert_eq!(ids, newest_first, "newest first");
    let oldest: Vec<JobId> = jobs
        .list(JobFilter::new().limit(1000).oldest_first())
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(oldest, ids.iter().rev().copied().collect::<Vec<_>>());

    // Filters.
    let ids_of = |rows: Vec<JobStatus>| rows.iter().map(|s| s.id).collect::<Vec<_>>();
    let mut pending_newest: Vec<JobId> = waiting.iter().copied().chain([keyed]).collect();
    pending_newest.reverse();
    let by_state = jobs.list(JobState::Pending).await.unwrap();
    assert_eq!(ids_of(by_state), pending_newest);
    let by_name = jobs.list(JobFilter::new().name("cf_quick")).await.unwrap();
    assert_eq!(by_name.len(), 25);
    assert!(by_name.iter().all(|s| s.name == "cf_quick"));
    assert!(
        jobs.list(JobFilter::new().name("cf_quick").state(JobState::Failed))
            .await
            .unwrap()
            .is_empty()
    );
    let by_key = jobs
        .list(JobFilter::new().concurrency_key("model-a"))
        .await
        .unwrap();
    assert_eq!(by_key.len(), 4);
    assert!(
        by_key
            .iter()
            .all(|s| s.concurrency_key.as_deref() == Some("model-a"))
    );
    let by_idempotency = jobs
        .list(JobFilter::new().idempotency_key("invoice-7"))
        .await
        .unwrap();
    assert_eq!(ids_of(by_idempotency), [keyed]);
    let since = jobs
        .list(JobFilter::new().created_after(SystemTime::now() + Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(since.is_empty(), "nothing was spawned in the future");
    assert!(
        jobs.list(JobFilter::new().needs_review(true))
            .await
            .unwrap()
            .is_empty()
    );

    // Pages: every job once, in order, by each index.
    for (filter, page) in [
        (JobFilter::new().name("cf_quick"), 10),
        (JobFilter::new().state(JobState::Pending), 3),
        (
            JobFilter::new().state(JobState::Completed).name("cf_quick"),
            7,
        ),
        (JobFilter::new(), 10),
        (JobFilter::new().oldest_first(), 9),
    ] {
        let seen = page_through(&jobs, filter.clone(), page).await;
        let whole = ids_of(jobs.list(filter.clone().limit(1000)).await.unwrap());
        assert_eq!(seen, whole, "{filter:?}");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
    }

    // While jobs are spawned: every job that existed is visited, none twice.
    let existing: HashSet<JobId> = ids.iter().copied().collect();
    let spawner = {
        let front = front.clone();
        tokio::spawn(async move {
            for n in 0..100 {
                front.spawn(runs_elsewhere(1000 + n)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    for filter in [JobFilter::new(), JobFilter::new().oldest_first()] {
        let seen = page_through(&front, filter, 7).await;
        let unique: HashSet<JobId> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no job twice");
        assert!(
            existing.is_subset(&unique),
            "every job that existed was visited"
        );
    }
    spawner.await.unwrap();
    shutdown_all(&[&jobs, &front]).await;
}

pub(crate) async fn prune_deletes_finished_jobs_and_never_unfinished_ones(backend: Backend) {
    let probe = Probe::new();
    let jobs = backend.open().await;
    let front = backend.watcher().await;
    let calls: Vec<JobCall<u32>> = (0..600).map(cf_journaled).collect();
    let handles = jobs.spawn_many(calls).await.unwrap();
    for handle in &handles {
        handle.wait().await.unwrap();
    }
    let failed = jobs.spawn(cf_refuses()).await.unwrap();
    assert!(failed.wait().await.is_err());
    let cancelled = front.spawn(runs_elsewhere(1)).await.unwrap();
    front.cancel(cancelled.id()).await.unwrap();
    let pending = front.spawn(runs_elsewhere(2)).await.unwrap();
    let delayed = front
        .spawn(cf_quick(3).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let running = jobs.spawn(cf_parked(probe.token())).await.unwrap();
    eventually(Duration::from_secs(10), "the parked job to start", || {
        probe.reached()
    })
    .await;
    assert_eq!(
        backend.count("SELECT count(*) FROM llmjobs_steps"),
        600,
        "one journaled step per job"
    );

    // Nothing is old enough yet.
    assert_eq!(jobs.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    // More finished jobs than one chunk holds.
    assert_eq!(front.prune(Duration::ZERO).await.unwrap(), 602);
    assert!(matches!(
        jobs.status(handles[0].id()).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        jobs.status(cancelled.id()).await,
        Err(Error::NotFound(_))
    ));
    for (handle, state) in [
        (pending.id(), JobState::Pending),
        (delayed.id(), JobState::Pending),
        (running.id(), JobState::Running),
    ] {
        assert_eq!(jobs.status(handle).await.unwrap().state, state);
    }
    let counts = jobs.counts().await.unwrap();
    assert_eq!(
        [
            counts.pending,
            counts.running,
            counts.completed + counts.failed + counts.cancelled
        ],
        [2, 1, 0]
    );
    assert_eq!(
        backend.count("SELECT count(*) FROM llmjobs_steps"),
        0,
        "the journals went with their jobs"
    );
    // The running job finishes after the prune, and is pruned next time.
    probe.release.store(true, Ordering::SeqCst);
    running.wait().await.unwrap();
    assert_eq!(jobs.prune(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(everything(&jobs).await.len(), 2);
    shutdown_all(&[&jobs, &front]).await;
}

// ---------------------------------------------------------------------------------------------
// Cron schedules
// ---------------------------------------------------------------------------------------------

const EVERY_SECOND: &str = "* * * * * *";

fn ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn jobs_named(jobs: &Jobs, name: &str) -> Vec<JobStatus> {
    jobs.list(JobFilter::new().name(name).limit(10_000))
        .await
        .unwrap()
}

pub(crate) async fn a_cron_schedule_run_by_three_runtimes_fires_each_tick_once(backend: Backend) {
    let runtimes = [
        backend.open().await,
        backend.open().await,
        backend.open().await,
    ];
    let schedule = Schedule::cron("beat", EVERY_SECOND).unwrap();
    runtimes[1].schedule(schedule, cf_beat()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3600)).await;
    for jobs in &runtimes {
        jobs.shutdown().await;
    }

    let observer = backend.watcher().await;
    let fired = jobs_named(&observer, "cf_beat").await;
    // A tick's job runs as one spawned at the tick: its `run_at` is the tick.
    let ticks: BTreeSet<u64> = fired.iter().map(|job| ms(job.run_at)).collect();
    assert_eq!(fired.len(), ticks.len(), "one job per tick: {ticks:?}");
    assert!(ticks.len() >= 3, "about three ticks fired: {ticks:?}");
    let ticks: Vec<u64> = ticks.into_iter().collect();
    assert!(
        ticks.windows(2).all(|pair| pair[1] - pair[0] == 1000),
        "no tick skipped: {ticks:?}"
    );
    let listed = observer.schedules().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "beat");
    assert_eq!(listed[0].job, "cf_beat");
    assert_eq!(
        listed[0].last_tick.map(ms),
        ticks.last().copied(),
        "the last tick fired is recorded"
    );
    observer.shutdown().await;
}

pub(crate) async fn unschedule_stops_the_ticks(backend: Backend) {
    let jobs = backend.open().await;
    let other = backend.open().await;
    let schedule = Schedule::cron("beat", EVERY_SECOND).unwrap();
    jobs.schedule(schedule, cf_beat()).await.unwrap();
    eventually_async(Duration::from_secs(3), "a first tick", || async {
        !jobs_named(&jobs, "cf_beat").await.is_empty()
    })
    .await;
    // From another runtime than the one that scheduled it.
    assert!(other.unschedule("beat").await.unwrap());
    let fired = jobs_named(&jobs, "cf_beat").await.len();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(jobs_named(&jobs, "cf_beat").await.len(), fired);
    assert!(jobs.schedules().await.unwrap().is_empty());
    assert!(!jobs.unschedule("beat").await.unwrap(), "nothing to remove");
    shutdown_all(&[&jobs, &other]).await;
}

// ---------------------------------------------------------------------------------------------
// Progress, bad rows
// ---------------------------------------------------------------------------------------------

pub(crate) async fn the_last_progress_report_is_in_the_row_after_the_job_ends(backend: Backend) {
    let jobs = backend.open().await;
    let other = backend.watcher().await;
    let mut handles = Vec::new();
    for n in 0..30 {
        handles.push((n, jobs.spawn(cf_reports_then_ends(n)).await.unwrap()));
    }
    for (n, handle) in handles {
        handle.wait().await.unwrap();
        // Read from another runtime, as another process would.
        let progress = other
            .status(handle.id())
            .await
            .unwrap()
            .progress
            .expect("a report");
        assert_eq!(progress["message"], format!("done {n}"), "job {n}");
        assert_eq!(progress["fraction"], 1.0, "job {n}");
    }
    shutdown_all(&[&jobs, &other]).await;
}

pub(crate) async fn a_corrupt_row_fails_alone_and_the_others_run(backend: Backend) {
    let front = backend.watcher().await;
    let mut bad: Vec<JobId> = Vec::new();
    for (n, value) in (1..).zip(backend.corrupt_attempts()) {
        let id: JobId = format!("01930000-0000-7000-8000-00000000b00{n}")
            .parse()
            .unwrap();
        backend.execute(&format!(
            "INSERT INTO llmjobs_jobs (id, name, status, args, attempts, max_attempts, run_at, \
             created_at) VALUES ('{id}', 'cf_plain', 'pending', '{{\"n\": 0}}', {value}, 1, 0, 0)"
        ));
        bad.push(id);
    }
    let mut good = Vec::new();
    for n in 1..=5 {
        good.push(front.spawn(cf_plain(n)).await.unwrap());
    }
    // Reads work with the bad rows in them.
    let listed = everything(&front).await;
    assert_eq!(listed.len(), 5 + bad.len());
    for id in &bad {
        assert!(listed.iter().any(|s| s.id == *id));
        front.status(*id).await.unwrap();
    }
    front.counts().await.unwrap();

    let worker = backend.open().await;
    for (n, handle) in (1..=5).zip(&good) {
        let out = tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .expect("good jobs run beside a corrupt row")
            .unwrap();
        assert_eq!(out, n);
    }
    for id in bad {
        let status = wait_terminal(&front, id, Duration::from_secs(10)).await;
        assert_eq!(status.state, JobState::Failed);
        let error = status.error.unwrap_or_default();
        assert!(
            error.contains("corrupt row") && error.contains("attempts"),
            "{error}"
        );
    }
    // And the worker goes on.
    assert_eq!(worker.run(cf_plain(6)).await.unwrap(), 6);
    shutdown_all(&[&worker, &front]).await;
}
