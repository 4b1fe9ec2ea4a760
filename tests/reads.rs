//! Reads under load: a burst of status and list calls is served by a bounded set of connections.
//! (A test binary of its own, so that no other test's databases move the file count.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llmjobs::{JobError, JobFilter, JobState, Jobs, llm_job};
use llmjobs_testkit::TempDb;

#[llm_job]
async fn answer() -> Result<u32, JobError> {
    Ok(42)
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_reads_all_succeed_on_a_bounded_number_of_connections() {
    let db = TempDb::new();
    let jobs = Jobs::open(&db.url()).await.unwrap();
    let handle = jobs.spawn(answer()).await.unwrap();
    assert_eq!(handle.wait().await.unwrap(), 42);
    // Enough rows that listing them all takes a while, so the reads pile up.
    let spawners: Vec<_> = (0..16)
        .map(|_| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    jobs.spawn(answer()).await.unwrap();
                }
            })
        })
        .collect();
    for spawner in spawners {
        spawner.await.unwrap();
    }

    let before = open_files();
    let peak = Arc::new(AtomicUsize::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(open_files(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let jobs = jobs.clone();
            let id = handle.id();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    jobs.status(id)
                        .await
                        .map(|s| s.state == JobState::Completed)
                } else {
                    jobs.list(JobFilter::new().limit(5000))
                        .await
                        .map(|list| list.len() == 3201)
                }
            })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().unwrap(), "a read saw the wrong jobs");
    }
    sampler.abort();
    // Eight readers at most, each with the database, its WAL and its shared-memory file open;
    // the rest is slack for the runtime's own descriptors.
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        grew <= 8 * 3 + 16,
        "300 concurrent reads opened {grew} more files"
    );
    jobs.shutdown().await;
}
