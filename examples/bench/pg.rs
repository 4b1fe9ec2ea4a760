//! The PostgreSQL workloads: W7 (W1 over 1, 2 and 4 worker processes on one server, with
//! pgbench's TPS on the same server) and W2 on PostgreSQL (sequential durable spawns, with the
//! round trip and the commit of the same server measured in the same run).

use std::process::Command;
use std::time::{Duration, Instant};

use llmjobs::{Durability, Jobs};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

use super::{noop, open, percentile, start_workers, stop_workers, tell_workers, wait_finished};

/// Whether the server at `url` answers; says why `workload` is skipped when not.
fn reachable(workload: &str, url: &str) -> bool {
    match psql_run(url, "SELECT 1") {
        Ok(_) => true,
        Err(why) => {
            println!(
                "{workload} skipped: no PostgreSQL at {url} ({why}); set LLMJOBS_BENCH_PG_URL"
            );
            false
        }
    }
}

/// The server W7 and W2 on PostgreSQL run against.
pub(crate) fn pg_url() -> String {
    std::env::var("LLMJOBS_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// `url` with llmjobs' tables in `schema`.
fn in_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}llmjobs_schema={schema}")
}

/// `sql` run by `psql` on `url`: its output, or why it failed.
fn psql_run(url: &str, sql: &str) -> Result<String, String> {
    llmjobs_testkit::pg::try_psql(url, sql)
}

/// W7: W1 (10,000 no-op jobs, 32 spawning tasks and 32 workers per process) split over 1, 2
/// and 4 worker processes sharing one PostgreSQL; and pgbench's TPS on the same server for a
/// one-insert-one-update transaction.
pub(crate) async fn w7() {
    const JOBS: usize = 10_000;
    let url = pg_url();
    if !reachable("W7", &url) {
        return;
    }
    let schema = format!("llmjobs_bench_w7_{}", std::process::id());
    let mut figures = Vec::new();
    for processes in [1usize, 2, 4] {
        let run_schema = format!("{schema}_{processes}");
        let run_url = in_schema(&url, &run_schema);
        // Migrated before the clock starts, by a runtime that runs nothing.
        let watcher = Jobs::builder()
            .url(&run_url)
            .run_jobs(false)
            .open()
            .await
            .expect("open the W7 schema");
        // Each worker waits for `go` to start spawning, then for `stop`.
        let per_worker = (JOBS / processes).to_string();
        let mut children = start_workers(processes, &["w7", &run_url, &per_worker]);
        let start = Instant::now();
        tell_workers(&mut children, "go");
        wait_finished(&watcher, 0, ((JOBS / processes) * processes) as u64).await;
        let secs = start.elapsed().as_secs_f64();
        stop_workers(children);
        watcher.shutdown().await;
        let _ = psql_run(&url, &format!("DROP SCHEMA {run_schema} CASCADE"));
        figures.push(((JOBS / processes) * processes) as f64 / secs);
    }
    let tps = pgbench_tps(&url, &schema);
    println!(
        "W7 jobs_per_s_1={:.0} jobs_per_s_2={:.0} jobs_per_s_4={:.0} pgbench_tps={}",
        figures[0],
        figures[1],
        figures[2],
        tps.map_or_else(|why| format!("n/a ({why})"), |t| format!("{t:.0}"))
    );
}

/// One W7 worker process: `n` no-op jobs from 32 spawning tasks, concurrency 32. As in W1, the
/// jobs' handles are not awaited (the parent counts the finished jobs): it runs until the parent
/// says `stop`, once every job of every worker has finished.
pub(crate) async fn w7_child(url: &str, n: usize) {
    let jobs = open(url, Durability::Full, 32, true).await;
    println!("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("the start line");
    let mut spawners = Vec::new();
    for k in 0..32 {
        let jobs = jobs.clone();
        let count = n / 32 + usize::from(k < n % 32);
        spawners.push(tokio::spawn(async move {
            for _ in 0..count {
                jobs.spawn(noop()).await.expect("spawn");
            }
        }));
    }
    for s in spawners {
        s.await.expect("spawner");
    }
    let stop = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    });
    assert_eq!(
        stop.await
            .expect("the stop line")
            .expect("the stop line")
            .trim(),
        "stop"
    );
    jobs.shutdown().await;
}

/// pgbench's TPS on the server at `url` for a transaction of one INSERT and one UPDATE (32
/// clients, 10 s), in a schema of its own that is dropped afterwards.
fn pgbench_tps(url: &str, schema: &str) -> Result<f64, String> {
    let schema = format!("{schema}_pgbench");
    psql_run(
        url,
        &format!(
            "CREATE SCHEMA {schema}; \
             CREATE TABLE {schema}.jobs (id bigserial PRIMARY KEY, status text NOT NULL, \
                 args text NOT NULL); \
             CREATE TABLE {schema}.counters (k int PRIMARY KEY, n bigint NOT NULL); \
             INSERT INTO {schema}.counters SELECT k, 0 FROM generate_series(1, 1000) k"
        ),
    )?;
    let script = std::env::temp_dir().join(format!("llmjobs-w7-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "\\set k random(1, 1000)\n\
             BEGIN;\n\
             INSERT INTO {schema}.jobs (status, args) VALUES ('pending', '{{}}');\n\
             UPDATE {schema}.counters SET n = n + 1 WHERE k = :k;\n\
             END;\n"
        ),
    )
    .map_err(|e| format!("cannot write the pgbench script: {e}"))?;
    let out = Command::new("pgbench")
        .args(["-n", "-c", "32", "-j", "2", "-T", "10", "-f"])
        .arg(&script)
        .arg(url)
        .output();
    let _ = std::fs::remove_file(&script);
    let _ = psql_run(url, &format!("DROP SCHEMA {schema} CASCADE"));
    let out = out.map_err(|e| format!("cannot run pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| {
            format!(
                "no tps in pgbench's output: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// Spawns timed in W2 on PostgreSQL, as in W2 on SQLite; and as many of each floor.
const W2_SPAWNS: usize = 2_000;

/// W2 on PostgreSQL: 2,000 sequential durable spawns, workers idle. Between two spawns, on a
/// connection of its own, one `SELECT 1` (`pg_roundtrip_us`) and one single-row `INSERT` in a
/// transaction of its own, so one commit (`pg_commit_us`): the floors are sampled under the
/// same load as the spawns, interleaved with them. The target is p50 ≤ 2 × round trip + one
/// commit (`target_us`); `ratio` is p50 over it.
pub(crate) async fn w2() {
    let url = pg_url();
    if !reachable("W2 postgres", &url) {
        return;
    }
    let schema = format!("llmjobs_bench_w2_{}", std::process::id());
    let jobs = open(&in_schema(&url, &schema), Durability::Full, 32, false).await;
    let mut raw = PgConnection::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    // The schema's name is this program's own.
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.w2_commit (id bigserial PRIMARY KEY, v text NOT NULL)"
    )))
    .execute(&mut raw)
    .await
    .expect("create the commit table");
    let insert = format!("INSERT INTO {schema}.w2_commit (v) VALUES ($1)");
    let (mut spawns, mut trips, mut commits) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..W2_SPAWNS {
        let t = Instant::now();
        jobs.spawn(noop()).await.expect("spawn");
        spawns.push(t.elapsed());
        let t = Instant::now();
        sqlx::query("SELECT 1")
            .execute(&mut raw)
            .await
            .expect("SELECT 1");
        trips.push(t.elapsed());
        let t = Instant::now();
        sqlx::query(AssertSqlSafe(insert.clone()))
            .bind("{}")
            .execute(&mut raw)
            .await
            .expect("one insert");
        commits.push(t.elapsed());
    }
    jobs.shutdown().await;
    raw.close().await.expect("close");
    let _ = psql_run(&url, &format!("DROP SCHEMA {schema} CASCADE"));
    for times in [&mut spawns, &mut trips, &mut commits] {
        times.sort();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p50 = us(percentile(&spawns, 0.5));
    let trip = us(percentile(&trips, 0.5));
    let commit = us(percentile(&commits, 0.5));
    let target = 2.0 * trip + commit;
    println!(
        "W2 postgres p50_us={p50:.0} p99_us={:.0} pg_roundtrip_us={trip:.0} \
         pg_commit_us={commit:.0} target_us={target:.0} ratio={:.2}",
        us(percentile(&spawns, 0.99)),
        p50 / target
    );
}
