//! Worker processes sharing one PostgreSQL: every job ends exactly once and limits hold across
//! processes, even when one worker is killed with SIGKILL mid-run.
//!
//! Skipped, saying why, when no PostgreSQL can be had (see `llmjobs_testkit::pg`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use llmjobs::Jobs;
use llmjobs_testkit::pg::pg_url;
use llmjobs_testkit::{TempDb, WorkerProcess, micros_now, read_lines};

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");

/// The worker binary's `limited_sleep`, declared here so calls can be built.
#[llmjobs::llm_job(max_concurrency = 3)]
async fn limited_sleep(sleep_ms: u64, log: String) -> Result<(), llmjobs::JobError> {
    let _ = (sleep_ms, log);
    unreachable!("run by the worker processes only")
}

/// One line of the bodies' log.
struct Line {
    start: bool,
    pid: u32,
    id: String,
    micros: u128,
}

fn parse(line: &str) -> Option<Line> {
    let mut parts = line.split_whitespace();
    let start = match parts.next()? {
        "start" => true,
        "done" => false,
        _ => return None,
    };
    Some(Line {
        start,
        pid: parts.next()?.parse().ok()?,
        id: parts.next()?.to_string(),
        micros: parts.next()?.parse().ok()?,
    })
}

/// The most bodies running at once: a body runs from its start line to its done line, or, in
/// the killed process, until the kill.
fn peak_bodies(lines: &[Line], killed: u32, killed_at: u128) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    let mut open: HashMap<(u32, &str), u128> = HashMap::new();
    for line in lines {
        if line.start {
            open.insert((line.pid, &line.id), line.micros);
            events.push((line.micros, 1));
        } else if open.remove(&(line.pid, line.id.as_str())).is_some() {
            events.push((line.micros, -1));
        }
    }
    for ((pid, id), started) in open {
        assert_eq!(pid, killed, "job {id} started at {started} and never ended");
        events.push((killed_at, -1));
    }
    events.sort();
    let (mut running, mut peak) = (0i32, 0i32);
    for (_, delta) in events {
        running += delta;
        peak = peak.max(running);
    }
    peak as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn four_worker_processes_end_every_job_once_within_limits_when_one_is_killed() {
    const JOBS: usize = 2_000;
    let Some(url) = pg_url().await else { return };
    let files = TempDb::new();
    let log = files.file("bodies.log");
    let front = Jobs::builder()
        .url(&url)
        .run_jobs(false)
        .open()
        .await
        .expect("open");
    // Every 100th job runs 600 ms: the kill is sure to find one of them mid-body.
    let calls = (0..JOBS).map(|n| {
        let sleep_ms = if n % 100 == 50 { 600 } else { 10 };
        limited_sleep(sleep_ms, log.display().to_string())
    });
    let ids: HashSet<String> = front
        .spawn_many(calls)
        .await
        .unwrap()
        .iter()
        .map(|h| h.id().to_string())
        .collect();
    let mut workers: Vec<WorkerProcess> = (0..4)
        .map(|_| WorkerProcess::start(WORKER, &["run", &url]))
        .collect();
    // A quarter of the way in, a worker running a long job is killed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let lines: Vec<Line> = read_lines(&log).iter().filter_map(|l| parse(l)).collect();
        let done = lines.iter().filter(|l| !l.start).count();
        let mut open: HashMap<(u32, &str), u128> = HashMap::new();
        for line in &lines {
            if line.start {
                open.insert((line.pid, &line.id), line.micros);
            } else {
                open.remove(&(line.pid, line.id.as_str()));
            }
        }
        // Started over 100 ms ago and not done: a long one, with most of its 600 ms to go.
        let now = micros_now();
        let busy = workers.iter().position(|w| {
            open.iter().any(|((pid, _), started)| {
                *pid == w.id() && now - started > 100_000 && now - started < 300_000
            })
        });
        if let (true, Some(busy)) = (done >= JOBS / 4, busy) {
            break workers.remove(busy);
        }
        assert!(
            Instant::now() < deadline,
            "the workers made no progress: {done} jobs done"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let killed = victim.id();
    victim.kill();
    let killed_at = micros_now();
    for worker in workers {
        let status = worker.wait(Duration::from_secs(120));
        assert!(status.success(), "a worker failed: {status}");
    }

    let counts = front.counts().await.unwrap();
    assert_eq!(counts.completed, JOBS as u64, "{counts:?}");
    assert_eq!(counts.unfinished() + counts.failed + counts.cancelled, 0);
    let lines: Vec<Line> = read_lines(&log).iter().filter_map(|l| parse(l)).collect();
    let mut starts: HashMap<&str, Vec<&Line>> = HashMap::new();
    let mut dones: HashMap<&str, usize> = HashMap::new();
    for line in &lines {
        assert!(
            ids.contains(&line.id),
            "a body of an unknown job: {}",
            line.id
        );
        if line.start {
            starts.entry(&line.id).or_default().push(line);
        } else {
            *dones.entry(&line.id).or_default() += 1;
        }
    }
    assert_eq!(dones.len(), JOBS, "every job's body ran to its end");
    // A body runs again only where the killed worker had started it.
    let mut resumed = 0;
    for (id, runs) in &starts {
        if runs.len() > 1 {
            assert!(
                runs[..runs.len() - 1].iter().all(|l| l.pid == killed),
                "job {id} started more than once without the kill: {}",
                runs.len()
            );
            resumed += 1;
            // The killed worker's job was picked up again within 2 s of the kill.
            let again = runs.last().expect("a last start").micros;
            assert!(
                again < killed_at + 2_000_000,
                "job {id} resumed {} ms after the kill",
                (again - killed_at) / 1000
            );
        }
    }
    let peak = peak_bodies(&lines, killed, killed_at);
    assert!(
        peak <= 3,
        "{peak} bodies ran at once under max_concurrency = 3"
    );
    assert!(
        resumed >= 1,
        "the killed worker's long job ran again elsewhere"
    );
    let pids: HashSet<u32> = lines.iter().map(|l| l.pid).collect();
    eprintln!(
        "{JOBS} jobs over {} processes (one killed, {resumed} of its jobs resumed); at most \
         {peak} bodies at once",
        pids.len()
    );
    front.shutdown().await;
}
