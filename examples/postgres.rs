//! Scaling out: worker processes sharing one PostgreSQL.
//!
//! The program starts three worker processes (itself, with `worker`), spawns 24 jobs from a
//! fourth that runs none, and prints which worker ran each. `max_concurrency = 2` holds across
//! all three processes; an idle worker is woken by `LISTEN/NOTIFY`, not by polling; the
//! spawning process's waits are woken by the jobs' ends in the other processes.
//!
//! It needs a PostgreSQL server: `LLMJOBS_DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`. Its tables go to the schema
//! `llmjobs_example`, which the program creates; drop it afterwards with
//! `DROP SCHEMA llmjobs_example CASCADE`. Run it with:
//!
//! ```sh
//! LLMJOBS_DATABASE_URL=postgres://user:password@localhost:5432/mydb cargo run --example postgres
//! ```
//!
//! Or by hand, in several terminals: `cargo run --example postgres -- worker` in a few (each
//! runs jobs until its input is closed with Ctrl-D), then `cargo run --example postgres --
//! spawn 24` in another.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use llmjobs::{JobError, Jobs, llm_job};

/// Pretends to translate a text; at most two run at once over every worker process.
#[llm_job(max_concurrency = 2)]
async fn translate(n: u32) -> Result<(u32, String), JobError> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok((std::process::id(), format!("text {n}, translated")))
}

/// The database URL, with this example's schema.
fn url() -> String {
    let base = std::env::var("LLMJOBS_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}llmjobs_schema=llmjobs_example")
}

/// Opens the database, or says why it cannot and how to point the example at a server.
async fn open(run_jobs: bool) -> Option<Jobs> {
    let url = url();
    let opened = tokio::time::timeout(
        Duration::from_secs(10),
        Jobs::builder().url(&url).run_jobs(run_jobs).open(),
    )
    .await;
    match opened {
        Ok(Ok(jobs)) => Some(jobs),
        Ok(Err(e)) => {
            eprintln!(
                "cannot open {url}: {e}\n\nThis example needs a PostgreSQL server: set \
                 LLMJOBS_DATABASE_URL=postgres://user:password@host:5432/database"
            );
            None
        }
        Err(_) => {
            eprintln!(
                "no answer from {url} within 10 s\n\nThis example needs a PostgreSQL server: set \
                 LLMJOBS_DATABASE_URL=postgres://user:password@host:5432/database"
            );
            None
        }
    }
}

/// Runs jobs until standard input closes, then stops gracefully.
async fn worker() {
    let Some(jobs) = open(true).await else {
        std::process::exit(1);
    };
    println!("worker {} ready", std::process::id());
    tokio::task::spawn_blocking(|| for _ in std::io::stdin().lock().lines() {})
        .await
        .expect("read stdin");
    jobs.shutdown().await;
}

/// Spawns `n` jobs from a process that runs none, and waits for them all.
async fn spawn(jobs: &Jobs, n: u32) {
    let mut handles = Vec::new();
    for i in 0..n {
        handles.push(jobs.spawn(translate(i)).await.expect("spawn"));
    }
    let mut by_worker: BTreeMap<u32, u32> = BTreeMap::new();
    for handle in handles {
        let (pid, text) = handle.wait().await.expect("a translation");
        println!("{text} (by worker {pid})");
        *by_worker.entry(pid).or_default() += 1;
    }
    for (pid, count) in by_worker {
        println!("worker {pid} ran {count} jobs");
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("worker") => return worker().await,
        Some("spawn") => {
            let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(24);
            if let Some(jobs) = open(false).await {
                spawn(&jobs, n).await;
                jobs.shutdown().await;
            }
            return;
        }
        _ => {}
    }
    // Opened first, so the schema is migrated before the workers start.
    let Some(jobs) = open(false).await else {
        return;
    };
    let mut workers: Vec<Child> = (0..3)
        .map(|_| {
            Command::new(std::env::current_exe().expect("own path"))
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a worker process")
        })
        .collect();
    for child in &mut workers {
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("a worker's first line");
        print!("{line}");
    }
    spawn(&jobs, 24).await;
    for mut child in workers {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    jobs.shutdown().await;
}
