//! The benchmark program: runs the workloads of `shared/bench/WORKLOADS.md` and prints one line
//! per workload (`W1 jobs_per_s=12345`), so a script can read it.
//!
//! Run all workloads (takes several minutes: W10 builds a database of 1,000,000 jobs, W11 keeps
//! 100,000 jobs in flight twice):
//!
//! ```sh
//! cargo run --release --example bench
//! ```
//!
//! Run some: `cargo run --release --example bench -- W1 W2` (names as in the table; `relaxed`
//! variants run with their workload). Databases go to a temporary folder on the disk of
//! `$TMPDIR`; set `LLMJOBS_BENCH_DIR` to measure another disk. Set `LLMJOBS_BENCH_W11_JOBS` to
//! run W11 with fewer (or more) jobs than 100,000, and `LLMJOBS_BENCH_W1_JOBS` to run W1 (and
//! W10's two W1 runs) with fewer or more than 10,000: a profiler (callgrind) runs W1 at a
//! fraction of the size.
//!
//! Every run first prints two floors measured on the same disk: `fsync_us` (one synced 4 KiB
//! write: durable latency cannot beat it) and `sqlite_commit_us` (one `BEGIN; INSERT; COMMIT` of a
//! job row, called inline with rusqlite, WAL, `synchronous=NORMAL`: relaxed latency cannot beat
//! it; the relaxed W2 line prints its p50 minus this as `over_commit_us`).
//!
//! W7 and W2 on PostgreSQL (`W2 postgres …`, run with W2, or alone as `W2PG`) run against
//! `LLMJOBS_BENCH_PG_URL`, else the local server at `postgres://postgres@127.0.0.1:5432/test`
//! (skipped, saying why, when neither answers), in schemas of their own that they drop
//! afterwards; `pgbench` and `psql` must be on `PATH`. Use a server with its default settings
//! (not the tests' throwaway cluster, which runs without fsync). See `examples/bench/pg.rs`.
//!
//! W8 (LLM rate limits) runs 1,000 `llm_call` jobs in 2 worker processes (children of this
//! program) against the mock LLM server's enforced limits, first with llmjobs' limits shared
//! through the database, then as a naive baseline (fixed one-second back-off on 429); see
//! `examples/bench/w8.rs`.
//!
//! W10 (history) runs W1 on a fresh database and on one holding 1,000,000 finished jobs (written
//! straight into `llmjobs_jobs` with SQL, through the library's triggers), then times `counts`,
//! `list` of 50 rows, and a `prune` of everything while a task spawns a job every 5 ms. W11 runs
//! each of its two variants (with and without a global limit) in a child process of its own, so
//! that one's freed memory does not hide the other's peak.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use llmjobs::{Durability, JobContext, JobError, Jobs, llm_job};

#[path = "bench/floor.rs"]
mod floor;
#[path = "bench/pg.rs"]
mod pg;
#[path = "bench/w8.rs"]
mod w8;
use llmjobs_testkit::read_lines as lines;

#[llm_job]
async fn noop() -> Result<(), JobError> {
    Ok(())
}

#[llm_job]
async fn sleeper(millis: u64) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(millis)).await;
    Ok(())
}

#[llm_job]
async fn ten_steps(ctx: JobContext) -> Result<u64, JobError> {
    let mut sum = 0;
    for i in 0..10u64 {
        sum += ctx.step("add", async move { Ok::<_, JobError>(i) }).await?;
    }
    Ok(sum)
}

/// Appends `start ID` and `done ID` to the log, around a sleep (W4).
#[llm_job]
async fn logged_sleeper(ctx: JobContext, millis: u64, log: String) -> Result<(), JobError> {
    append(&log, &format!("start {}", ctx.id()));
    tokio::time::sleep(Duration::from_millis(millis)).await;
    append(&log, &format!("done {}", ctx.id()));
    Ok(())
}

/// Five steps, each a 200 ms "LLM call" logged as `run ID STEP`, then `committed ID STEP` (W6).
#[llm_job]
async fn five_calls(ctx: JobContext, log: String) -> Result<u64, JobError> {
    let mut sum = 0;
    for step in 0..5u64 {
        let id = ctx.id();
        let log2 = log.clone();
        sum += ctx
            .step("call", async move {
                append(&log2, &format!("run {id} {step}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, JobError>(step)
            })
            .await?;
        append(&log, &format!("committed {id} {step}"));
    }
    Ok(sum)
}

/// Appends a line without syncing it (unlike the test kit's `append_line`): the log only has
/// to survive a killed process, and a sync per line would distort the timings.
fn append(path: &str, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the log");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("write the log");
}

struct Bench {
    dir: tempfile::TempDir,
    n: usize,
    /// `sqlite_commit_us`, measured at the start of the run.
    commit_us: u128,
}

impl Bench {
    fn db(&mut self, label: &str) -> String {
        self.n += 1;
        format!(
            "sqlite://{}",
            self.dir
                .path()
                .join(format!("{label}-{}.db", self.n))
                .display()
        )
    }
}

/// The file of a `sqlite://PATH` url made by [`Bench::db`].
fn db_path(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("sqlite://").expect("a sqlite:// url"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as u64
}

/// A UUID-formatted id as llmjobs makes them (version 7: the time in milliseconds first), with
/// `counter` in the random bits, so ids written by hand are unique and sort by `ms`.
fn uuid_v7_text(ms: u64, counter: u64) -> String {
    let v: u128 = (u128::from(ms & 0xffff_ffff_ffff) << 80)
        | (0x7 << 76)
        | (0b10 << 62)
        | u128::from(counter & ((1 << 62) - 1));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (v >> 96) as u32,
        (v >> 80) as u16,
        (v >> 64) as u16,
        (v >> 48) as u16,
        v & 0xffff_ffff_ffff
    )
}

/// Creates the database at `url` with llmjobs' schema (every migration), then closes it, so that
/// rusqlite can write to the real tables.
async fn create_db(url: &str) {
    let jobs = Jobs::open(url).await.expect("create the database");
    jobs.shutdown().await;
}

/// A rusqlite connection to a database llmjobs created: WAL, `synchronous=NORMAL`.
fn raw_connection(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open the database with rusqlite");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
        .expect("journal_mode=WAL");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("synchronous=NORMAL");
    conn
}

async fn open(url: &str, durability: Durability, concurrency: u32, run: bool) -> Jobs {
    Jobs::builder()
        .url(url)
        .durability(durability)
        .concurrency(concurrency)
        .run_jobs(run)
        .poll_interval(Duration::from_millis(50))
        .open()
        .await
        .expect("open the benchmark database")
}

fn label(base: &str, durability: Durability) -> String {
    match durability {
        Durability::Full => base.to_string(),
        _ => format!("{base} relaxed"),
    }
}

async fn wait_all_done(jobs: &Jobs, total: u64) {
    wait_finished(jobs, 0, total).await;
}

fn finished(counts: &llmjobs::JobCounts) -> u64 {
    counts.completed + counts.failed + counts.cancelled
}

/// Waits until `total` more jobs than `before` are finished.
async fn wait_finished(jobs: &Jobs, before: u64, total: u64) {
    loop {
        let counts = jobs.counts().await.expect("count jobs");
        if finished(&counts) >= before + total {
            assert_eq!(counts.failed, 0, "benchmark jobs failed");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// W1: 10,000 no-op jobs spawned by 32 tasks; worker concurrency 32. Then, on a database of
/// its own, the same writes straight to SQLite (see [`floor`]): `sqlite_floor_jobs_per_s`, and
/// W1's ratio to it.
async fn w1(bench: &mut Bench, durability: Durability) {
    let url = bench.db("w1");
    let jobs_per_s = w1_jobs_per_s(&url, durability).await;
    let floor_url = bench.db("w1-floor");
    create_db(&floor_url).await;
    let floor = floor::w1_floor_jobs_per_s(&db_path(&floor_url), durability);
    println!(
        "{} jobs_per_s={jobs_per_s:.0} sqlite_floor_jobs_per_s={floor:.0} ratio={:.2}",
        label("W1", durability),
        jobs_per_s / floor
    );
}

/// W1's measurement on the database at `url` (which may already hold finished jobs).
async fn w1_jobs_per_s(url: &str, durability: Durability) -> f64 {
    let jobs_wanted: usize = match std::env::var("LLMJOBS_BENCH_W1_JOBS") {
        Ok(n) => n.parse().expect("LLMJOBS_BENCH_W1_JOBS: a number of jobs"),
        Err(_) => 10_000,
    };
    let jobs = open(url, durability, 32, true).await;
    let before = finished(&jobs.counts().await.expect("count jobs"));
    let start = Instant::now();
    let mut spawners = Vec::new();
    for _ in 0..32 {
        let jobs = jobs.clone();
        spawners.push(tokio::spawn(async move {
            for _ in 0..jobs_wanted / 32 + 1 {
                jobs.spawn(noop()).await.expect("spawn");
            }
        }));
    }
    for s in spawners {
        s.await.expect("spawner");
    }
    let spawned = (jobs_wanted / 32 + 1) * 32;
    wait_finished(&jobs, before, spawned as u64).await;
    let secs = start.elapsed().as_secs_f64();
    jobs.shutdown().await;
    spawned as f64 / secs
}

/// W1s: as W1, but one task spawns one job after another.
/// W9: one `spawn_many` of 10,000 jobs, on a runtime that runs none of them (only the commit
/// is measured).
async fn w9(bench: &mut Bench) {
    const JOBS: usize = 10_000;
    let url = bench.db("w9");
    let jobs = open(&url, Durability::Full, 32, false).await;
    let calls: Vec<_> = (0..JOBS).map(|_| noop()).collect();
    let start = Instant::now();
    let handles = jobs.spawn_many(calls).await.expect("spawn_many");
    let elapsed = start.elapsed();
    assert_eq!(handles.len(), JOBS);
    println!(
        "W9 spawn_many_jobs_per_s={:.0} ms={:.1}",
        JOBS as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3
    );
    jobs.shutdown().await;
}

async fn w1s(bench: &mut Bench, durability: Durability) {
    const JOBS: usize = 10_000;
    let url = bench.db("w1s");
    let jobs = open(&url, durability, 32, true).await;
    let start = Instant::now();
    for _ in 0..JOBS {
        jobs.spawn(noop()).await.expect("spawn");
    }
    wait_all_done(&jobs, JOBS as u64).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} jobs_per_s={:.0}",
        label("W1s", durability),
        JOBS as f64 / secs
    );
    jobs.shutdown().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// W2: 2,000 sequential durable spawns, workers idle.
async fn w2(bench: &mut Bench, durability: Durability) {
    let url = bench.db("w2");
    let jobs = open(&url, durability, 32, false).await;
    let mut times = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        jobs.spawn(noop()).await.expect("spawn");
        times.push(t.elapsed());
    }
    times.sort();
    let p50 = percentile(&times, 0.5).as_micros();
    let over_commit = match durability {
        Durability::Full => String::new(),
        _ => format!(" over_commit_us={}", p50 as i128 - bench.commit_us as i128),
    };
    println!(
        "{} p50_us={p50} p99_us={}{over_commit}",
        label("W2", durability),
        percentile(&times, 0.99).as_micros()
    );
    jobs.shutdown().await;
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The peak RSS, sampled every 20 ms from `before` on until the task is aborted.
fn peak_rss(before: u64) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    (peak, sampler)
}

/// W3: 5,000 jobs that each sleep 2 s, concurrency 5,000.
async fn w3(bench: &mut Bench) {
    const JOBS: usize = 5_000;
    let url = bench.db("w3");
    let jobs = open(&url, Durability::Full, JOBS as u32, true).await;
    let before = rss_bytes();
    let (peak, sampler) = peak_rss(before);
    let start = Instant::now();
    let mut spawners = Vec::new();
    for _ in 0..50 {
        let jobs = jobs.clone();
        spawners.push(tokio::spawn(async move {
            for _ in 0..JOBS / 50 {
                jobs.spawn(sleeper(2000)).await.expect("spawn");
            }
        }));
    }
    for s in spawners {
        s.await.expect("spawner");
    }
    wait_all_done(&jobs, JOBS as u64).await;
    let wall = start.elapsed().as_secs_f64();
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "W3 wall_s={wall:.2} rss_per_job_bytes={}",
        peak.saturating_sub(before) / JOBS as u64
    );
    jobs.shutdown().await;
}

/// W5: one job of 10 journaled steps, 1,000 runs one after another.
async fn w5(bench: &mut Bench, durability: Durability) {
    let url = bench.db("w5");
    let jobs = open(&url, durability, 32, true).await;
    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let sum = jobs.run(ten_steps()).await.expect("run");
        assert_eq!(sum, 45);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{} p50_ms={:.3} p99_ms={:.3}",
        label("W5", durability),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );
    jobs.shutdown().await;
}

fn child(args: &[&str]) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .arg("--child")
        .args(args)
        .spawn()
        .expect("start a child")
}

fn kill(mut child: Child) {
    child.kill().expect("kill the child");
    child.wait().expect("reap the child");
}

/// Starts `n` worker processes (`--child <args>`) with piped stdin and stdout, and returns once
/// each has said `ready` (its runtime is open); each then acts on the lines it is sent.
fn start_workers(n: usize, args: &[&str]) -> Vec<Child> {
    use std::io::BufRead as _;
    let mut children: Vec<Child> = (0..n)
        .map(|_| {
            Command::new(std::env::current_exe().expect("own path"))
                .arg("--child")
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start a worker process")
        })
        .collect();
    for child in &mut children {
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("a worker's ready line");
        assert_eq!(line.trim(), "ready", "a {} worker did not start", args[0]);
    }
    children
}

/// Sends `line` to every worker's stdin.
fn tell_workers(children: &mut [Child], line: &str) {
    use std::io::Write as _;
    for child in children {
        writeln!(child.stdin.as_mut().expect("stdin"), "{line}").expect("tell a worker");
    }
}

/// Tells every worker to `stop`, and waits for each to end well.
fn stop_workers(mut children: Vec<Child>) {
    tell_workers(&mut children, "stop");
    for child in children {
        wait_child(child);
    }
}

fn wait_child(mut child: Child) {
    let status = child.wait().expect("wait for the child");
    assert!(status.success(), "child failed: {status}");
}

fn count_prefix(lines: &[String], prefix: &str) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for line in lines {
        if let Some(rest) = line.strip_prefix(prefix) {
            *counts.entry(rest.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// W4: 1,000 jobs of 1 s, concurrency 100; SIGKILL ~2 s after the first spawn; restart.
async fn w4(bench: &mut Bench) {
    let url = bench.db("w4");
    let log = bench.dir.path().join("w4.log");
    let first = child(&["w4-spawn", &url, log.to_str().unwrap()]);
    let started = Instant::now();
    while lines(&log).is_empty() && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    kill(first);
    let at_kill = lines(&log);
    let done_at_kill = count_prefix(&at_kill, "done ").len();

    let restart = Instant::now();
    let second = child(&["w4-run", &url]);
    let mut resume = None;
    loop {
        let now = lines(&log);
        if resume.is_none() && now.len() > at_kill.len() {
            resume = Some(restart.elapsed());
        }
        let done = count_prefix(&now, "done ").len();
        if done >= 1000 || restart.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recovery = restart.elapsed();
    wait_child(second);
    let all = lines(&log);
    let done = count_prefix(&all, "done ");
    let run_twice = done.values().filter(|&&n| n > 1).count();
    let jobs = open(&url, Durability::Full, 1, false).await;
    let counts = jobs.counts().await.expect("counts");
    jobs.shutdown().await;
    println!(
        "W4 resume_s={:.3} recovery_s={:.3} ideal_s={:.2} lost={} run_twice={}",
        resume.unwrap_or(recovery).as_secs_f64(),
        recovery.as_secs_f64(),
        (1000 - done_at_kill) as f64 / 100.0,
        1000u64.saturating_sub(counts.completed),
        run_twice
    );
}

/// W6: jobs of five 200 ms steps; SIGKILL mid-way; restart; count committed steps run again.
async fn w6(bench: &mut Bench) {
    let url = bench.db("w6");
    let log = bench.dir.path().join("w6.log");
    let first = child(&["w6-spawn", &url, log.to_str().unwrap()]);
    let start = Instant::now();
    while count_prefix(&lines(&log), "committed ").len() < 40
        && start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill(first);
    let at_kill = lines(&log);
    let committed: std::collections::HashSet<String> =
        count_prefix(&at_kill, "committed ").into_keys().collect();
    let restart = Instant::now();
    wait_child(child(&["w6-run", &url]));
    let recovery = restart.elapsed();
    let after = &lines(&log)[at_kill.len()..];
    let rerun = count_prefix(after, "run ")
        .keys()
        .filter(|step| committed.contains(*step))
        .count();
    println!(
        "W6 steps_rerun={rerun} recovery_s={:.3}",
        recovery.as_secs_f64()
    );
}

/// The median time of one synced 4 KiB write on the benchmark's disk.
fn fsync_us(dir: &Path) -> u128 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("create the probe");
    let block = [7u8; 4096];
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        file.write_all(&block).expect("write");
        file.sync_data().expect("sync");
        times.push(t.elapsed());
    }
    times.sort();
    let _ = std::fs::remove_file(path);
    times[times.len() / 2].as_micros()
}

/// The median time of one `BEGIN; INSERT INTO llmjobs_jobs …; COMMIT` of a pending job row,
/// called inline on a rusqlite connection (WAL, `synchronous=NORMAL`) to a database llmjobs
/// created: the floor for relaxed latency.
async fn sqlite_commit_us(bench: &mut Bench) -> u128 {
    const WARM_UP: u64 = 200;
    const SAMPLES: u64 = 2_000;
    let url = bench.db("commit");
    create_db(&url).await;
    let conn = raw_connection(&db_path(&url));
    let mut insert = conn
        .prepare(
            "INSERT INTO llmjobs_jobs (id, name, status, args, run_at, created_at) \
             VALUES (?1, 'noop', 'pending', '{}', ?2, ?2)",
        )
        .expect("prepare the insert");
    let mut times = Vec::with_capacity(SAMPLES as usize);
    for i in 0..WARM_UP + SAMPLES {
        let ms = now_ms();
        let id = uuid_v7_text(ms, i);
        let t = Instant::now();
        conn.execute_batch("BEGIN").expect("begin");
        insert
            .execute(rusqlite::params![id, ms as i64])
            .expect("insert");
        conn.execute_batch("COMMIT").expect("commit");
        if i >= WARM_UP {
            times.push(t.elapsed());
        }
    }
    times.sort();
    percentile(&times, 0.5).as_micros()
}

/// Writes `rows` completed `noop` jobs straight into `llmjobs_jobs`, in transactions of 100,000
/// rows, older than anything spawned later, and counts them in `llmjobs_counts` as the library's
/// writer would (it keeps the counters itself since migration 0005: no trigger sees these rows).
fn fill_history(path: &Path, rows: u64) {
    const BATCH: u64 = 100_000;
    let mut conn = raw_connection(path);
    let first_ms = now_ms() - rows - 3_600_000;
    let mut done = 0;
    while done < rows {
        let tx = conn.transaction().expect("begin");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO llmjobs_jobs (id, name, status, args, result, attempts, \
                     max_attempts, owner, run_at, created_at, started_at, completed_at) \
                     VALUES (?1, 'noop', 'completed', '{}', 'null', 1, 1, 'bench-history', \
                     ?2, ?2, ?2, ?3)",
                )
                .expect("prepare the insert");
            for i in done..(done + BATCH).min(rows) {
                let ms = first_ms + i;
                insert
                    .execute(rusqlite::params![
                        uuid_v7_text(ms, i),
                        ms as i64,
                        ms as i64 + 1
                    ])
                    .expect("insert a finished job");
            }
            let inserted = (done + BATCH).min(rows) - done;
            tx.execute(
                "INSERT INTO llmjobs_counts (name, status, n) VALUES ('noop', 'completed', ?1) \
                 ON CONFLICT (name, status) DO UPDATE SET n = n + excluded.n",
                [inserted as i64],
            )
            .expect("count the finished jobs");
        }
        tx.commit().expect("commit");
        done = (done + BATCH).min(rows);
    }
    // A database that has held its history a while has it in the main file, not in a
    // write-ahead log hundreds of megabytes long that the next commits must checkpoint.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint the history");
}

/// The size of a database with its `-wal` file, in MB (10^6 bytes).
fn file_mb(path: &Path) -> f64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    (size(path) + size(Path::new(&wal))) as f64 / 1e6
}

fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    percentile(&times, 0.5).as_secs_f64() * 1e3
}

/// W10: W1 on a fresh database and on one holding 1,000,000 finished jobs; on the big one,
/// `counts` and `list` latency, then `prune` of it all while a task spawns a job every 5 ms.
async fn w10(bench: &mut Bench) {
    const HISTORY: u64 = 1_000_000;
    let fresh = bench.db("w10-fresh");
    let jobs_per_s_fresh = w1_jobs_per_s(&fresh, Durability::Full).await;

    let url = bench.db("w10-1m");
    let path = db_path(&url);
    create_db(&url).await;
    let t = Instant::now();
    fill_history(&path, HISTORY);
    eprintln!(
        "W10: wrote {HISTORY} finished jobs in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let jobs_per_s_1m = w1_jobs_per_s(&url, Durability::Full).await;

    let jobs = open(&url, Durability::Full, 32, true).await;
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let counts = jobs.counts().await.expect("counts");
        times.push(t.elapsed());
        assert!(counts.completed >= HISTORY, "the history is not counted");
    }
    let counts_ms = median_ms(times);
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let listed = jobs
            .list(llmjobs::JobFilter::new().limit(50))
            .await
            .expect("list");
        times.push(t.elapsed());
        assert_eq!(listed.len(), 50);
    }
    let list_ms = median_ms(times);

    let file_mb_before = file_mb(&path);
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let (jobs, stop) = (jobs.clone(), stop.clone());
        tokio::spawn(async move {
            // Open loop: a spawn every 5 ms whether or not the earlier ones have returned, so
            // a writer blocked by the prune shows in every spawn queued behind it.
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut spawns = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let jobs = jobs.clone();
                spawns.push(tokio::spawn(async move {
                    let t = Instant::now();
                    jobs.spawn(noop()).await.expect("spawn during prune");
                    t.elapsed()
                }));
            }
            let mut times = Vec::with_capacity(spawns.len());
            for spawn in spawns {
                times.push(spawn.await.expect("spawn task"));
            }
            times
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let pruned = jobs.prune(Duration::ZERO).await.expect("prune");
    let prune_s = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut times = spawner.await.expect("spawner");
    assert!(pruned >= HISTORY, "pruned only {pruned} jobs");
    times.sort();
    let file_mb_after = file_mb(&path);
    println!(
        "W10 jobs_per_s_fresh={jobs_per_s_fresh:.0} jobs_per_s_1m={jobs_per_s_1m:.0} \
         counts_ms={counts_ms:.3} list_ms={list_ms:.3} prune_s={prune_s:.3} \
         spawn_p99_during_prune_ms={:.3} spawn_max_during_prune_ms={:.3} \
         file_mb_before={file_mb_before:.1} file_mb_after={file_mb_after:.1}",
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().expect("spawns").as_secs_f64() * 1e3,
    );
    jobs.shutdown().await;
}

/// W11: 100,000 (`LLMJOBS_BENCH_W11_JOBS`) in-flight jobs of 10 s, with a global limit high
/// enough for all and without one; each in a child process (see `w11_child`).
async fn w11(bench: &mut Bench) {
    let n: u64 = match std::env::var("LLMJOBS_BENCH_W11_JOBS") {
        Ok(n) => n.parse().expect("LLMJOBS_BENCH_W11_JOBS: a number of jobs"),
        Err(_) => 100_000,
    };
    let mut walls = Vec::new();
    for mode in ["limited", "unlimited"] {
        let url = bench.db("w11");
        let out = Command::new(std::env::current_exe().expect("own path"))
            .args(["--child", "w11", &url, &n.to_string(), mode])
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the W11 child");
        assert!(out.status.success(), "W11 child failed: {}", out.status);
        let line = String::from_utf8(out.stdout).expect("utf-8 output");
        let line = line.trim();
        println!("{line}");
        let wall: f64 = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("wall_s="))
            .and_then(|w| w.parse().ok())
            .expect("wall_s in the W11 child's line");
        walls.push(wall);
    }
    println!("W11 ratio wall={:.3}", walls[0] / walls[1]);
}

/// One W11 variant: `n` jobs of 10 s spawned by 32 tasks, per-process concurrency for all of
/// them, and with `limited` a global limit of twice that.
async fn w11_child(url: &str, n: u64, limited: bool) {
    const SPAWNERS: u64 = 32;
    let concurrency = u32::try_from(n.max(100_000)).expect("jobs fit in u32");
    let mut builder = Jobs::builder()
        .url(url)
        .concurrency(concurrency)
        .poll_interval(Duration::from_millis(50));
    if limited {
        builder = builder.global_concurrency(concurrency.saturating_mul(2));
    }
    let jobs = builder.open().await.expect("open the W11 database");
    let before = rss_bytes();
    let (peak, sampler) = peak_rss(before);
    let start = Instant::now();
    let mut spawners = Vec::new();
    for k in 0..SPAWNERS {
        let jobs = jobs.clone();
        let count = n / SPAWNERS + u64::from(k < n % SPAWNERS);
        spawners.push(tokio::spawn(async move {
            for _ in 0..count {
                jobs.spawn(sleeper(10_000)).await.expect("spawn");
            }
        }));
    }
    for s in spawners {
        s.await.expect("spawner");
    }
    let spawn_s = start.elapsed().as_secs_f64();
    wait_all_done(&jobs, n).await;
    let wall = start.elapsed().as_secs_f64();
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "W11{} wall_s={wall:.2} spawn_s={spawn_s:.2} rss_per_job_bytes={}",
        if limited { "" } else { " unlimited" },
        peak.saturating_sub(before) / n.max(1)
    );
    jobs.shutdown().await;
}

async fn run_child(args: &[String]) {
    let url = &args[1];
    match args[0].as_str() {
        "w4-spawn" => {
            let jobs = open(url, Durability::Full, 100, true).await;
            for _ in 0..1000 {
                jobs.spawn(logged_sleeper(1000, args[2].clone()))
                    .await
                    .expect("spawn");
            }
            std::future::pending::<()>().await;
        }
        "w6-spawn" => {
            let jobs = open(url, Durability::Full, 100, true).await;
            for _ in 0..20 {
                jobs.spawn(five_calls(args[2].clone()))
                    .await
                    .expect("spawn");
            }
            std::future::pending::<()>().await;
        }
        "w8" => w8::child(url, &args[2], args[3] == "shared").await,
        "w11" => {
            let n = args[2].parse().expect("a number of jobs");
            w11_child(url, n, args[3] == "limited").await;
        }
        "w7" => {
            let n: usize = args[2].parse().expect("a number of jobs");
            pg::w7_child(url, n).await;
        }
        "w4-run" | "w6-run" => {
            let jobs = open(url, Durability::Full, 100, true).await;
            loop {
                let counts = jobs.counts().await.expect("counts");
                if counts.unfinished() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            jobs.shutdown().await;
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        run_child(&args[1..]).await;
        return;
    }
    let selected: Vec<String> = args.iter().map(|a| a.to_uppercase()).collect();
    let wants = |w: &str| selected.is_empty() || selected.iter().any(|s| s == w);
    let base = std::env::var_os("LLMJOBS_BENCH_DIR").map(PathBuf::from);
    let dir = match base {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("a temporary folder");
    println!("fsync_us={}", fsync_us(dir.path()));
    let mut bench = Bench {
        dir,
        n: 0,
        commit_us: 0,
    };
    bench.commit_us = sqlite_commit_us(&mut bench).await;
    println!("sqlite_commit_us={}", bench.commit_us);
    for durability in [Durability::Full, Durability::Relaxed] {
        if wants("W1") {
            w1(&mut bench, durability).await;
        }
        if wants("W1S") {
            w1s(&mut bench, durability).await;
        }
        if wants("W2") {
            w2(&mut bench, durability).await;
        }
        if wants("W5") {
            w5(&mut bench, durability).await;
        }
    }
    if wants("W3") {
        w3(&mut bench).await;
    }
    if wants("W4") {
        w4(&mut bench).await;
    }
    if wants("W6") {
        w6(&mut bench).await;
    }
    if wants("W9") {
        w9(&mut bench).await;
    }
    if wants("W10") {
        w10(&mut bench).await;
    }
    if wants("W11") {
        w11(&mut bench).await;
    }
    if wants("W2") || wants("W2PG") {
        pg::w2().await;
    }
    if wants("W7") {
        pg::w7().await;
    }
    if wants("W8") {
        let (shared, naive) = (bench.db("w8"), bench.db("w8-baseline"));
        w8::w8(&shared, &naive).await;
    }
}
