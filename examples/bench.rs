//! The benchmark program: runs the workloads of `shared/bench/WORKLOADS.md` and prints one line
//! per workload (`W1 jobs_per_s=12345`), so a script can read it.
//!
//! Run all workloads (takes a minute or two):
//!
//! ```sh
//! cargo run --release --example bench
//! ```
//!
//! Run some: `cargo run --release --example bench -- W1 W2` (names as in the table; `relaxed`
//! variants run with their workload). Databases go to a temporary folder on the disk of
//! `$TMPDIR`; set `LLMJOBS_BENCH_DIR` to measure another disk.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmjobs::{Durability, JobContext, JobError, Jobs, llm_job};
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
    loop {
        let counts = jobs.counts().await.expect("count jobs");
        if counts.completed + counts.failed + counts.cancelled >= total {
            assert_eq!(counts.failed, 0, "benchmark jobs failed");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// W1: 10,000 no-op jobs spawned by 32 tasks; worker concurrency 32.
async fn w1(bench: &mut Bench, durability: Durability) {
    const JOBS: usize = 10_000;
    let url = bench.db("w1");
    let jobs = open(&url, durability, 32, true).await;
    let start = Instant::now();
    let mut spawners = Vec::new();
    for _ in 0..32 {
        let jobs = jobs.clone();
        spawners.push(tokio::spawn(async move {
            for _ in 0..JOBS / 32 + 1 {
                jobs.spawn(noop()).await.expect("spawn");
            }
        }));
    }
    for s in spawners {
        s.await.expect("spawner");
    }
    let spawned = (JOBS / 32 + 1) * 32;
    wait_all_done(&jobs, spawned as u64).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} jobs_per_s={:.0}",
        label("W1", durability),
        spawned as f64 / secs
    );
    jobs.shutdown().await;
}

/// W1s: as W1, but one task spawns one job after another.
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
    println!(
        "{} p50_us={} p99_us={}",
        label("W2", durability),
        percentile(&times, 0.5).as_micros(),
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

/// W3: 5,000 jobs that each sleep 2 s, concurrency 5,000.
async fn w3(bench: &mut Bench) {
    const JOBS: usize = 5_000;
    let url = bench.db("w3");
    let jobs = open(&url, Durability::Full, JOBS as u32, true).await;
    let before = rss_bytes();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
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
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
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
    let mut bench = Bench { dir, n: 0 };
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
    if wants("W7") {
        println!("W7 skipped: the PostgreSQL backend does not exist yet");
    }
}
