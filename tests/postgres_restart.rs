//! PostgreSQL restarted under running jobs: the test kit's throwaway cluster is stopped at once
//! (`pg_ctl stop -m immediate`, as a crash of the server would) while two runtimes run jobs,
//! and started again. Nothing is lost, no attempt that committed its outcome runs again, the
//! runtimes reconnect by themselves, and a spawn during the outage fails with an error within a
//! bounded time instead of hanging.
//!
//! A test binary of its own: every test of a process shares the cluster, and this one stops it.
//! Skipped, saying why, on a server of `LLMJOBS_TEST_PG_URL`, which is not the tests' to stop.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use llmjobs::{Backoff, JobError, JobState, Jobs, llm_job};
use llmjobs_testkit::pg::{pg_url, start_cluster, stop_cluster};

const JOBS: usize = 120;

/// Starts and ends of each job's body, by the job's index.
static STARTS: [AtomicU32; JOBS] = [const { AtomicU32::new(0) }; JOBS];
static ENDS: [AtomicU32; JOBS] = [const { AtomicU32::new(0) }; JOBS];

#[llm_job]
async fn pg_restart_work(index: usize) -> Result<usize, JobError> {
    STARTS[index].fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    ENDS[index].fetch_add(1, Ordering::SeqCst);
    Ok(index)
}

async fn open(url: &str) -> Jobs {
    Jobs::builder()
        .url(url)
        .concurrency(8)
        .poll_interval(Duration::from_millis(100))
        .backoff(Backoff {
            base: Duration::from_millis(10),
            factor: 2.0,
            cap: Duration::from_millis(100),
        })
        .open()
        .await
        .expect("open the PostgreSQL job database")
}

fn ended() -> u32 {
    ENDS.iter().map(|n| n.load(Ordering::SeqCst)).sum()
}

/// Waits for `condition`, checking every 20 ms; panics with `what` after `timeout`.
async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_restarted_under_running_jobs_loses_none_and_the_runtimes_reconnect() {
    let Some(url) = pg_url().await else { return };
    let (a, b) = (open(&url).await, open(&url).await);
    let mut handles = Vec::new();
    for index in 0..JOBS {
        let jobs = if index % 2 == 0 { &a } else { &b };
        handles.push(jobs.spawn(pg_restart_work(index)).await.unwrap());
    }
    // Some jobs have ended, others run: the server goes down under them.
    eventually(Duration::from_secs(60), "the first jobs to end", || {
        ended() >= 16
    })
    .await;
    // The jobs whose outcome has committed (read before the stop; more may commit until it).
    let ids: Vec<_> = handles.iter().map(|handle| handle.id()).collect();
    let mut completed_before = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        if a.status(*id).await.unwrap().state == JobState::Completed {
            completed_before.push(index);
        }
    }
    assert!(!completed_before.is_empty());
    if !tokio::task::spawn_blocking(stop_cluster).await.unwrap() {
        eprintln!(
            "PostgreSQL restart test skipped: the databases are on LLMJOBS_TEST_PG_URL's \
             server, which is not the tests' to stop"
        );
        return;
    }
    assert!(
        ended() < JOBS as u32,
        "jobs were still running when the server stopped"
    );

    let started = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(60), a.spawn(pg_restart_work(JOBS - 1)))
        .await
        .expect("a spawn while the server is down answers within a bounded time");
    let error = refused.expect_err("a spawn while the server is down fails");
    eprintln!(
        "spawn during the outage failed after {:.1?}: {error}",
        started.elapsed()
    );
    assert!(
        error
            .to_string()
            .contains("no connection to the PostgreSQL server within 10 s"),
        "the error says what is wrong: {error}"
    );

    assert!(tokio::task::spawn_blocking(start_cluster).await.unwrap());
    // The same runtimes, not reopened: every job ends, each completed with its own result.
    for (index, handle) in handles.into_iter().enumerate() {
        let result = tokio::time::timeout(Duration::from_secs(120), handle.wait())
            .await
            .unwrap_or_else(|_| panic!("job {index} ended after the restart"));
        assert_eq!(result.unwrap(), index);
    }
    // A spawn after the restart works again, on both runtimes.
    for jobs in [&a, &b] {
        let again = tokio::time::timeout(Duration::from_secs(60), jobs.run(pg_restart_work(0)))
            .await
            .expect("a job spawned after the restart ends");
        assert_eq!(again.unwrap(), 0);
    }
    STARTS[0].fetch_sub(2, Ordering::SeqCst);
    ENDS[0].fetch_sub(2, Ordering::SeqCst);

    for (index, id) in ids.into_iter().enumerate() {
        let starts = STARTS[index].load(Ordering::SeqCst);
        assert!(
            ENDS[index].load(Ordering::SeqCst) >= 1,
            "job {index} ran to its end"
        );
        if completed_before.contains(&index) {
            assert_eq!(
                starts, 1,
                "job {index} committed its outcome before the stop and never ran again"
            );
        }
        let status = a.status(id).await.unwrap();
        assert_eq!(status.state, JobState::Completed);
        assert!(
            starts <= status.attempts,
            "job {index}: every start of its body is an attempt on record ({starts} starts, \
             {} attempts)",
            status.attempts
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
