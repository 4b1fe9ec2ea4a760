//! A worker killed with SIGKILL while jobs run: the next process resumes every one of them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use llmjobs::{JobFilter, JobState};
use llmjobs_testkit::{TempDb, WorkerProcess, read_lines, wait_until};

const WORKER: &str = env!("CARGO_BIN_EXE_llmjobs-test-worker");

#[tokio::test(flavor = "multi_thread")]
async fn every_job_of_a_killed_worker_completes_after_restart() {
    let db = TempDb::new();
    let log = db.file("jobs.log");
    let (db_path, log_path) = (db.path(), log.clone());

    let first = WorkerProcess::start(
        WORKER,
        &[
            "spawn",
            db_path.to_str().unwrap(),
            log_path.to_str().unwrap(),
            "30",
            "400",
        ],
    );
    // Kill it while jobs are mid-flight: every spawn returned (so all 30 are recorded), some
    // jobs done, some started and not done.
    wait_until(
        Duration::from_secs(60),
        "all spawned, a few jobs done and more in flight",
        || {
            let lines = read_lines(&log);
            let done = ids_of(&lines, "done").len();
            lines.iter().any(|l| l == "spawned")
                && done >= 4
                && ids_of(&lines, "start").len() > done
        },
    );
    first.kill();
    let before = read_lines(&log);
    let started_at_kill: HashSet<String> = ids_of(&before, "start");
    let done_at_kill: HashSet<String> = ids_of(&before, "done");
    assert!(
        started_at_kill.len() > done_at_kill.len(),
        "the kill must catch jobs in flight (started {}, done {})",
        started_at_kill.len(),
        done_at_kill.len()
    );

    let restart = Instant::now();
    let second = WorkerProcess::start(WORKER, &["run", db_path.to_str().unwrap()]);
    // The orphans of the dead worker start again within about a second.
    let in_flight: Vec<String> = started_at_kill.difference(&done_at_kill).cloned().collect();
    wait_until(
        Duration::from_secs(10),
        "orphaned jobs to start again",
        || {
            let restarted = ids_of_after(&read_lines(&log), "start", before.len());
            in_flight.iter().all(|id| restarted.contains(id))
        },
    );
    let resume = restart.elapsed();
    let status = second.wait(Duration::from_secs(120));
    assert!(status.success(), "second worker failed: {status}");
    eprintln!("orphans resumed {resume:?} after the restart");
    assert!(resume < Duration::from_secs(2), "resume took {resume:?}");

    let jobs = db.watcher().await;
    let all = jobs.list(JobFilter::new().limit(1000)).await.unwrap();
    assert_eq!(all.len(), 30, "no job lost");
    for job in &all {
        assert_eq!(job.state, JobState::Completed, "{job:?}");
    }
    let done = ids_of(&read_lines(&log), "done");
    assert_eq!(done.len(), 30, "every job's body ran to the end");
    jobs.shutdown().await;
}

fn ids_of(lines: &[String], kind: &str) -> HashSet<String> {
    ids_of_after(lines, kind, 0)
}

fn ids_of_after(lines: &[String], kind: &str, skip: usize) -> HashSet<String> {
    lines
        .iter()
        .skip(skip)
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(kind)).then(|| parts.next().unwrap_or("").to_string())
        })
        .collect()
}
