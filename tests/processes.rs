//! Many processes on one SQLite file, and workers killed at random points.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use llmjobs::{JobFilter, JobState};
use llmjobs_testkit::{TempDb, WorkerProcess, read_lines, wait_until};

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");

/// The `logged_sleep` job of the worker binary, declared here so calls can be built.
#[llmjobs::llm_job(max_concurrency = 4)]
async fn logged_sleep(n: u32, sleep_ms: u64, log: String) -> Result<u32, llmjobs::JobError> {
    let _ = (sleep_ms, log);
    unreachable!("run by the worker processes only: {n}")
}

#[tokio::test(flavor = "multi_thread")]
async fn three_processes_on_one_file_run_each_job_exactly_once() {
    let db = TempDb::new();
    let log = db.file("jobs.log");
    let front = db.watcher().await;
    for n in 0..300 {
        front
            .spawn(logged_sleep(n, 5, log.display().to_string()))
            .await
            .unwrap();
    }
    let path = db.path();
    let workers: Vec<WorkerProcess> = (0..3)
        .map(|_| WorkerProcess::start(WORKER, &["run", path.to_str().unwrap()]))
        .collect();
    for worker in workers {
        let status = worker.wait(Duration::from_secs(120));
        assert!(
            status.success(),
            "a worker failed (a `database is locked`?): {status}"
        );
    }
    let done: Vec<String> = read_lines(&log)
        .into_iter()
        .filter(|l| l.starts_with("done"))
        .collect();
    let distinct: HashSet<&String> = done.iter().collect();
    assert_eq!(done.len(), 300, "every job ran to the end once");
    assert_eq!(distinct.len(), 300, "no job ran twice");
    let counts = front.counts().await.unwrap();
    assert_eq!(counts.completed, 300, "{counts:?}");
    let owners: HashSet<String> = front
        .list(JobFilter::new().state(JobState::Completed).limit(300))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|s| s.owner)
        .collect();
    eprintln!("300 jobs were run by {} worker processes", owners.len());
    front.shutdown().await;
}

/// A number from the clock, for kill times; reproducibility matters less here than variety.
fn jitter(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) % max
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_killed_at_random_points_lose_nothing_and_rerun_no_committed_step() {
    let db = TempDb::new();
    let log = db.file("torture.log");
    let (path, log_arg) = (db.path(), log.display().to_string());
    for _round in 0..20 {
        let before = read_lines(&log).len();
        let worker =
            WorkerProcess::start(WORKER, &["torture", path.to_str().unwrap(), &log_arg, "5"]);
        // Kill at a random point once the round's jobs are committed.
        wait_until(
            Duration::from_secs(60),
            "the round's jobs to be spawned",
            || read_lines(&log).iter().skip(before).any(|l| l == "spawned"),
        );
        std::thread::sleep(Duration::from_millis(jitter(250)));
        worker.kill();
    }
    let last = WorkerProcess::start(WORKER, &["run", path.to_str().unwrap()]);
    assert!(last.wait(Duration::from_secs(120)).success());

    let jobs = db.watcher().await;
    let counts = jobs.counts().await.unwrap();
    assert_eq!(counts.total(), 100, "20 rounds of 5 jobs: none lost");
    // A job cut short by three crashes in a row is not run a fourth time: it fails, saying so
    // (the poison-job guard). Every other job completed.
    assert_eq!(
        counts.completed + counts.failed,
        100,
        "every job ended: {counts:?}"
    );
    for status in jobs.list(JobFilter::new().limit(100)).await.unwrap() {
        match status.state {
            JobState::Completed => {
                let total: u32 = jobs.handle(status.id).wait().await.unwrap();
                assert_eq!(total, 3, "each job's steps 1 and 2 were added once");
            }
            _ => {
                let error = status.error.clone().unwrap_or_default();
                assert!(error.contains("interrupted"), "{status:?}");
                assert!(status.attempts >= 3, "{status:?}");
            }
        }
    }

    // No step ran again after it was committed.
    let mut committed: HashSet<String> = HashSet::new();
    let mut reruns: HashMap<String, usize> = HashMap::new();
    for line in read_lines(&log) {
        if let Some(step) = line.strip_prefix("committed ") {
            committed.insert(step.to_string());
        } else if let Some(step) = line.strip_prefix("run ")
            && committed.contains(step)
        {
            *reruns.entry(step.to_string()).or_default() += 1;
        }
    }
    assert!(reruns.is_empty(), "committed steps ran again: {reruns:?}");
    jobs.shutdown().await;
}
