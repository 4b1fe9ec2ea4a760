//! Work is never lost, run twice or stuck: one test per way it once was.
//!
//! Each test names the guarantee it checks. Tests that need a process to die use the worker
//! binary and SIGKILL or `abort()`, as the crash tests do; tests that need the database to fail
//! use the hidden fault hooks of `llmjobs::__private`, which act on the real SQLite connection
//! (a real `SQLITE_FULL`, a real writer thread that dies).

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::Poll;
use std::time::Duration;

use llmjobs::{
    Backoff, CancelOutcome, Error, JobCall, JobContext, JobError, JobFilter, JobId, JobState, Jobs,
    Outcome, Progress, llm_job,
};
use llmjobs_testkit::{TempDb, WorkerProcess, read_lines, wait_until};
use serde_json::json;

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(20),
        factor: 2.0,
        cap: Duration::from_millis(200),
    }
}

fn builder(db: &TempDb) -> llmjobs::JobsBuilder {
    Jobs::builder()
        .url(db.url())
        .backoff(fast_backoff())
        .poll_interval(Duration::from_millis(20))
        .shutdown_grace(Duration::ZERO)
}

/// Polls `future` once, then drops it: what `tokio::time::timeout`, `select!` or an HTTP
/// handler whose client left do to a call in flight.
async fn poll_once_then_drop<F: Future>(future: F) {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let _ = future.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
}

/// Waits (up to `timeout`) until `id` is terminal; its final status.
async fn wait_terminal(jobs: &Jobs, id: JobId, timeout: Duration) -> llmjobs::JobStatus {
    let start = std::time::Instant::now();
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
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection of the test's own to the database file, for what no API does: rows written
/// by hand, as an older version, another tool or a bit flip would leave them.
fn raw(db: &TempDb) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// The ids of log lines `"{word} {id} ..."`, in order.
fn ids_with(lines: &[String], word: &str) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == word).then(|| parts.next().map(str::to_string))?
        })
        .collect()
}

// 1. spawn is cancellation-safe.

#[llm_job]
async fn echo(n: u32) -> Result<u32, JobError> {
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_spawn_leaves_the_job_running_or_not_spawned() {
    let db = TempDb::new();
    let jobs = builder(&db).concurrency(4).open().await.unwrap();
    for n in 0..100 {
        poll_once_then_drop(jobs.spawn(echo(n))).await;
    }
    // Every job that was committed runs to its end: none sits `running` with a body that never
    // ran, holding a slot.
    let start = std::time::Instant::now();
    loop {
        let counts = jobs.counts().await.unwrap();
        if counts.pending + counts.running == 0 {
            assert_eq!(counts.failed + counts.cancelled, 0, "{counts:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "jobs of dropped spawns never ended: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the process still runs new work at full concurrency.
    let more: Vec<_> = (0..8)
        .map(|n| {
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.run(echo(1000 + n)).await })
        })
        .collect();
    for (n, task) in (1000..).zip(more) {
        let out = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("new jobs run after dropped spawns");
        assert_eq!(out.unwrap().unwrap(), n);
    }
    jobs.shutdown().await;
}

#[llm_job]
async fn slow_echo(n: u32) -> Result<u32, JobError> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_racing_shutdown_is_handed_back_or_finished_never_left_running() {
    let db = TempDb::new();
    for round in 0..20 {
        let jobs = builder(&db).open().await.unwrap();
        let spawner = {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                for n in 0..20 {
                    if jobs.spawn(slow_echo(round * 100 + n)).await.is_err() {
                        break;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(round as u64 % 5)).await;
        jobs.shutdown().await;
        spawner.await.unwrap();
        drop(jobs);
        // After a graceful shutdown, nothing is left running under the departed owner.
        let watcher = db.watcher().await;
        let running = watcher
            .list(JobFilter::new().state(JobState::Running).limit(1000))
            .await
            .unwrap();
        assert!(
            running.is_empty(),
            "round {round}: {} jobs left running after shutdown: {:?}",
            running.len(),
            running.iter().map(|s| &s.owner).collect::<Vec<_>>()
        );
        watcher.shutdown().await;
    }
}

// 2. A cancel is never lost.

// (A cancel during a retry: the conformance suite, on every backend.)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_of_a_job_whose_worker_died_ends_cancelled() {
    let db = TempDb::new();
    let log = db.file("jobs.log");
    let first = WorkerProcess::start(
        WORKER,
        &["long", db.path().to_str().unwrap(), log.to_str().unwrap()],
    );
    wait_until(Duration::from_secs(30), "the job to start", || {
        !ids_with(&read_lines(&log), "start").is_empty()
    });
    // A cancel is requested, and the worker dies before it acts on it.
    let id: JobId = ids_with(&read_lines(&log), "start")[0].parse().unwrap();
    first.kill();
    raw(&db)
        .execute(
            "UPDATE llmjobs_jobs SET cancel_requested = 1 WHERE id = ?",
            [id.to_string()],
        )
        .unwrap();
    // The next worker resumes the dead worker's jobs: this one must end cancelled, unrun.
    let next = WorkerProcess::start(WORKER, &["run", db.path().to_str().unwrap()]);
    assert!(next.wait(Duration::from_secs(30)).success());
    let front = db.watcher().await;
    let status = front.status(id).await.unwrap();
    assert_eq!(status.state, JobState::Cancelled, "{status:?}");
    assert_eq!(
        ids_with(&read_lines(&log), "start").len(),
        1,
        "the cancelled job never ran again"
    );
    front.shutdown().await;
}

static COMPLETE_RACE_STARTED: AtomicBool = AtomicBool::new(false);
static COMPLETE_RACE_RELEASE: AtomicBool = AtomicBool::new(false);

#[llm_job]
async fn completes_after_release() -> Result<u32, JobError> {
    COMPLETE_RACE_STARTED.store(true, Ordering::SeqCst);
    while !COMPLETE_RACE_RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_cancel_returned_never_ends_completed() {
    let db = TempDb::new();
    let worker = builder(&db).open().await.unwrap();
    let front = db.watcher().await;
    let handle = worker.spawn(completes_after_release()).await.unwrap();
    wait_until(Duration::from_secs(10), "the attempt to start", || {
        COMPLETE_RACE_STARTED.load(Ordering::SeqCst)
    });
    assert_eq!(
        front.cancel(handle.id()).await.unwrap(),
        CancelOutcome::Requested
    );
    // The body finishes before its worker notices the request.
    COMPLETE_RACE_RELEASE.store(true, Ordering::SeqCst);
    let status = wait_terminal(&worker, handle.id(), Duration::from_secs(10)).await;
    assert_eq!(status.state, JobState::Cancelled, "{status:?}");
    worker.shutdown().await;
    front.shutdown().await;
}

// 3, 4. A saturated key not blocking other keys, and the last progress report kept in the
// row: the conformance suite, on every backend.

// 5. A job that kills its process fails after its attempts (the poison-job guard).

/// Stands in for the worker binary's job of the same name, which aborts its process; here it
/// only gives the spawn its settings (`retries`).
#[llm_job(retries = 0)]
async fn self_destruct(log: String) -> Result<(), JobError> {
    unreachable!("runs only in the worker binary: {log}")
}

/// As `self_destruct`, with one retry.
#[llm_job(retries = 1)]
async fn self_destruct_twice(log: String) -> Result<(), JobError> {
    unreachable!("runs only in the worker binary: {log}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_aborts_its_process_fails_after_its_attempts() {
    let db = TempDb::new();
    let log = db.file("jobs.log");
    let log_arg = log.to_str().unwrap().to_string();
    // Innocent jobs that a crash interrupts use up an attempt too: give them some.
    let front = Jobs::builder()
        .url(db.url())
        .run_jobs(false)
        .default_retries(5)
        .open()
        .await
        .unwrap();
    let once = front.spawn(self_destruct(log_arg.clone())).await.unwrap();
    let twice = front
        .spawn(self_destruct_twice(log_arg.clone()))
        .await
        .unwrap();
    let normal: JobCall<u32> = JobCall::from_json(
        "logged_sleep",
        json!({"n": 1, "sleep_ms": 10, "log": log_arg}),
    );
    let normal = front.spawn(normal).await.unwrap();

    // Each start of a worker may die at the hands of a job; keep restarting, as a supervisor
    // would, until a worker finds nothing left to run.
    let mut starts = 0;
    loop {
        starts += 1;
        assert!(starts <= 6, "workers kept dying: the jobs crash-loop");
        let worker = WorkerProcess::start(WORKER, &["run", db.path().to_str().unwrap()]);
        if worker.wait(Duration::from_secs(30)).success() {
            break;
        }
    }
    let lines = read_lines(&log);
    let runs = |name: &str| lines.iter().filter(|l| l.starts_with(name)).count();
    // Every job may be interrupted until its third attempt at least, so that a job without
    // retries survives a restart or two; then it fails. An attempt may be cut short before its
    // body logs: at most one run per attempt.
    assert!(runs("self_destruct ") <= 3, "{lines:?}");
    assert!(runs("self_destruct_twice ") <= 3, "{lines:?}");
    for handle in [&once, &twice] {
        let status = handle.status().await.unwrap();
        assert_eq!(status.state, JobState::Failed, "{status:?}");
        assert_eq!(status.attempts, 3, "{status:?}");
        let error = status.error.unwrap_or_default();
        assert!(error.contains("interrupted"), "{error}");
    }
    assert_eq!(normal.wait().await.unwrap(), 2, "other jobs still run");
    front.shutdown().await;
}

// 6. Live owners are never robbed; writes are fenced by owner and attempt.

static HELD_STARTS: AtomicU32 = AtomicU32::new(0);

#[llm_job]
async fn held() -> Result<(), JobError> {
    HELD_STARTS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

#[llm_job(retries = 1)]
async fn ghost_work() -> Result<u32, JobError> {
    Ok(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_keeps_its_jobs_when_another_worker_is_judged_by_its_lease() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let mine = jobs.spawn(held()).await.unwrap();
    wait_until(Duration::from_secs(10), "the job to start", || {
        HELD_STARTS.load(Ordering::SeqCst) == 1
    });
    // This worker's lease looks expired (its heartbeat was late, say), and a worker of another
    // machine, which has no lock file here, died with a job running.
    let conn = raw(&db);
    conn.execute(
        "UPDATE llmjobs_jobs SET lease_until = 0 WHERE id = ?",
        [mine.id().to_string()],
    )
    .unwrap();
    let ghost: JobId = "01930000-0000-7000-8000-00000000a001".parse().unwrap();
    conn.execute(
        "INSERT INTO llmjobs_jobs (id, name, status, args, attempts, max_attempts, owner, \
         lease_until, run_at, created_at, started_at) \
         VALUES (?, 'ghost_work', 'running', '{}', 1, 2, 'pid1-0a0b0c0d0e0f', 0, 0, 0, 0)",
        [ghost.to_string()],
    )
    .unwrap();
    // The other machine's job is resumed after its lease...
    let handle = jobs.handle::<u32>(ghost);
    match handle.wait_timeout(Duration::from_secs(10)).await.unwrap() {
        Outcome::Ready(n) => assert_eq!(n, 5),
        Outcome::Pending(_) => panic!("the dead worker's job was not resumed"),
    }
    // ...while this live worker keeps its own: it still runs, once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = mine.status().await.unwrap();
    assert_eq!(status.state, JobState::Running);
    assert_eq!(status.owner.as_deref(), Some(jobs.owner()));
    assert_eq!(status.attempts, 1, "{status:?}");
    assert_eq!(HELD_STARTS.load(Ordering::SeqCst), 1, "the job ran twice");
}

static LINKED_STARTS: AtomicU32 = AtomicU32::new(0);

#[llm_job]
async fn linked_sleep() -> Result<(), JobError> {
    let attempt = LINKED_STARTS.fetch_add(1, Ordering::SeqCst);
    if attempt == 0 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_noticed_at_once_whatever_path_it_opened_the_database_by() {
    let db = TempDb::new();
    let link = db.file("link.db");
    std::os::unix::fs::symlink(db.path(), &link).unwrap();
    let first = Jobs::builder()
        .url(format!("sqlite://{}", link.display()))
        .open()
        .await
        .unwrap();
    let id = first.spawn(linked_sleep()).await.unwrap().id();
    wait_until(Duration::from_secs(10), "the job to start", || {
        LINKED_STARTS.load(Ordering::SeqCst) == 1
    });
    // Dropped without shutdown: as a crash, the job stays running and the lock is released.
    drop(first);
    let second = builder(&db).open().await.unwrap();
    let handle = second.handle::<()>(id);
    match handle.wait_timeout(Duration::from_secs(5)).await.unwrap() {
        Outcome::Ready(()) => {}
        Outcome::Pending(_) => panic!("the dead worker's job waited for its 30 s lease"),
    }
    second.shutdown().await;
}

// 7. A paid result is never dropped on a transient database error.

static PAID_CALLS: AtomicU32 = AtomicU32::new(0);
static PAID_STEP_STARTED: AtomicBool = AtomicBool::new(false);
static PAID_STEP_RELEASE: AtomicBool = AtomicBool::new(false);

#[llm_job]
async fn paid_step(ctx: JobContext) -> Result<usize, JobError> {
    let answer: String = ctx
        .step("llm", async {
            PAID_CALLS.fetch_add(1, Ordering::SeqCst);
            PAID_STEP_STARTED.store(true, Ordering::SeqCst);
            while !PAID_STEP_RELEASE.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<_, JobError>("an expensive answer ".repeat(10_000))
        })
        .await?;
    Ok(answer.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_step_survives_a_full_disk() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let handle = jobs.spawn(paid_step()).await.unwrap();
    wait_until(Duration::from_secs(10), "the step to start", || {
        PAID_STEP_STARTED.load(Ordering::SeqCst)
    });
    llmjobs::__private::simulate_full_disk(&jobs, true)
        .await
        .unwrap();
    PAID_STEP_RELEASE.store(true, Ordering::SeqCst);
    // The disk stays full for a while: the journal write fails again and again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    llmjobs::__private::simulate_full_disk(&jobs, false)
        .await
        .unwrap();
    let len = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("the job ends once the disk has room")
        .unwrap();
    assert_eq!(len, 200_000);
    assert_eq!(PAID_CALLS.load(Ordering::SeqCst), 1, "paid for once");
    jobs.shutdown().await;
}

// 8. One bad row fails alone.

#[llm_job(max_concurrency = 8)]
async fn plain(n: u32) -> Result<u32, JobError> {
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_fails_alone_and_the_others_run() {
    let db = TempDb::new();
    let front = db.watcher().await;
    let conn = raw(&db);
    let bad: JobId = "01930000-0000-7000-8000-00000000b001".parse().unwrap();
    conn.execute(
        "INSERT INTO llmjobs_jobs (id, name, status, args, attempts, max_attempts, run_at, \
         created_at) VALUES (?, 'plain', 'pending', '{\"n\": 0}', 'many', 1, 0, 0)",
        [bad.to_string()],
    )
    .unwrap();
    let mut good = Vec::new();
    for n in 1..=5 {
        good.push(front.spawn(plain(n)).await.unwrap());
    }
    // The listing works with the bad row in it, and names what is wrong with it.
    let listed = front.list(JobFilter::new().limit(100)).await.unwrap();
    assert_eq!(listed.len(), 6);
    let bad_status = listed.iter().find(|s| s.id == bad).expect("the bad row");
    let error = bad_status.error.clone().unwrap_or_default();
    assert!(error.contains("attempts"), "{error}");

    let worker = builder(&db).open().await.unwrap();
    for (n, handle) in (1..=5).zip(&good) {
        let out = tokio::time::timeout(Duration::from_secs(10), handle.wait())
            .await
            .expect("good jobs run beside a corrupt row")
            .unwrap();
        assert_eq!(out, n);
    }
    let status = wait_terminal(&front, bad, Duration::from_secs(10)).await;
    assert_eq!(status.state, JobState::Failed);
    let error = status.error.unwrap_or_default();
    assert!(
        error.contains("corrupt row") && error.contains("attempts"),
        "{error}"
    );
    worker.shutdown().await;
    front.shutdown().await;
}

// 9. A dead writer thread is reported, and its jobs resume elsewhere.

static ORPHAN_STARTS: AtomicU32 = AtomicU32::new(0);

#[llm_job]
async fn outlives_its_writer() -> Result<u32, JobError> {
    let start = ORPHAN_STARTS.fetch_add(1, Ordering::SeqCst);
    if start == 0 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    Ok(start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_is_reported_and_its_jobs_resume_in_another_worker() {
    let db = TempDb::new();
    let first = builder(&db).open().await.unwrap();
    let handle = first.spawn(outlives_its_writer()).await.unwrap();
    wait_until(Duration::from_secs(10), "the job to start", || {
        ORPHAN_STARTS.load(Ordering::SeqCst) == 1
    });
    llmjobs::__private::kill_writer(&first);
    let err = loop {
        match first.spawn(echo(1)).await {
            Err(e) => break e,
            // The writer may not have died yet.
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert!(matches!(err, Error::Database(_)), "{err:?}");
    assert!(err.to_string().contains("writer"), "{err}");

    // Another worker resumes the job at once: the dead one gave it up.
    let second = builder(&db).open().await.unwrap();
    let handle = second.handle::<u32>(handle.id());
    match handle.wait_timeout(Duration::from_secs(5)).await.unwrap() {
        Outcome::Ready(start) => assert_eq!(start, 1),
        Outcome::Pending(_) => panic!("the job of a worker with a dead writer was not resumed"),
    }
    second.shutdown().await;
}

// 10. Progress streams last until the job ends.

static TWO_ATTEMPTS_GATE: AtomicBool = AtomicBool::new(false);

#[llm_job(retries = 1)]
async fn two_attempts(ctx: JobContext) -> Result<(), JobError> {
    while !TWO_ATTEMPTS_GATE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    ctx.report(Progress::stage(format!("attempt {}", ctx.attempt())));
    if ctx.attempt() == 1 {
        return Err(JobError::msg("try again"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_stream_lasts_until_the_job_ends_across_retries() {
    let db = TempDb::new();
    let jobs = builder(&db).open().await.unwrap();
    let handle = jobs.spawn(two_attempts()).await.unwrap();
    let mut stream = handle.progress();
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let callback = {
        let seen = seen.clone();
        handle.on_progress(move |p| seen.lock().unwrap().push(p.stage.unwrap_or_default()))
    };
    TWO_ATTEMPTS_GATE.store(true, Ordering::SeqCst);
    let mut stages = Vec::new();
    while let Some(report) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends when the job ends")
    {
        stages.push(report.stage.unwrap_or_default());
    }
    assert_eq!(stages, ["attempt 1", "attempt 2"]);
    callback.await.unwrap();
    assert_eq!(*seen.lock().unwrap(), ["attempt 1", "attempt 2"]);
    handle.wait().await.unwrap();
    jobs.shutdown().await;
}
