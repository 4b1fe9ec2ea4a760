//! Transactional enqueue on PostgreSQL (`Jobs::spawn_in`, `Jobs::spawn_many_in`): a job spawned
//! in the application's own sqlx transaction exists if and only if that transaction commits,
//! and the workers are woken by the commit.
//!
//! Each test has a fresh database from the test kit's harness (`llmjobs_testkit::pg`), and is
//! skipped, saying why, when no PostgreSQL can be had.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use llmjobs::{Error, JobError, JobFilter, JobState, Jobs, llm_job};
use llmjobs_testkit::pg::{pg_url, psql};
use sqlx::{Connection, PgConnection};

/// A runtime on `url` whose idle workers look for new jobs only once a minute: a job it starts
/// within the tests' bounds was started by a wake-up, not by its poll.
async fn worker(url: &str) -> Jobs {
    Jobs::builder()
        .url(url)
        .poll_interval(Duration::from_secs(60))
        .shutdown_grace(Duration::ZERO)
        .open()
        .await
        .expect("open the PostgreSQL job database")
}

/// A runtime that runs no jobs: it spawns and waits, as a web front end would.
async fn front(url: &str) -> Jobs {
    Jobs::builder()
        .url(url)
        .run_jobs(false)
        .open()
        .await
        .expect("open the PostgreSQL job database")
}

/// The application's own connection to the database, as its own pool would give it.
async fn app_connection(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .expect("the application's connection")
}

/// How many job rows the database holds, counted by a session of its own.
fn job_rows(url: &str) -> u32 {
    psql(url, "SELECT count(*) FROM llmjobs.llmjobs_jobs")
        .parse()
        .expect("a count")
}

#[llm_job]
async fn tx_double(n: i64) -> Result<i64, JobError> {
    Ok(n * 2)
}

static NEVER_RUNS: AtomicU32 = AtomicU32::new(0);

#[llm_job]
async fn tx_rolled_back() -> Result<(), JobError> {
    NEVER_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_spawned_in_a_transaction_runs_once_it_commits() {
    let Some(url) = pg_url().await else { return };
    let jobs = worker(&url).await;
    let mut conn = app_connection(&url).await;
    let path_before: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut tx = conn.begin().await.unwrap();
    let handle = jobs.spawn_in(&mut tx, tx_double(21)).await.unwrap();
    assert!(handle.is_new());
    // The application's session keeps its own search_path.
    let path_in_tx: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(path_in_tx, path_before);
    // Not committed: no other session sees the job, so nothing can run it.
    assert_eq!(job_rows(&url), 0);
    tx.commit().await.unwrap();
    // The commit's NOTIFY wakes the worker: its poll alone would take a minute.
    let doubled = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("the job ran after the commit, woken by it");
    assert_eq!(doubled.unwrap(), 42);
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_spawned_in_a_transaction_runs_in_another_runtime_after_the_commit() {
    let Some(url) = pg_url().await else { return };
    let worker = worker(&url).await;
    let front = front(&url).await;
    let mut conn = app_connection(&url).await;
    let mut tx = conn.begin().await.unwrap();
    let handle = front.spawn_in(&mut tx, tx_double(5)).await.unwrap();
    tx.commit().await.unwrap();
    let doubled = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .expect("the other runtime ran the job after the commit, woken by it");
    assert_eq!(doubled.unwrap(), 10);
    let status = worker.status(handle.id()).await.unwrap();
    assert_eq!((status.state, status.attempts), (JobState::Completed, 1));
    front.shutdown().await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_spawned_in_a_rolled_back_transaction_never_exists() {
    let Some(url) = pg_url().await else { return };
    let jobs = Jobs::builder()
        .url(&url)
        .poll_interval(Duration::from_millis(20))
        .open()
        .await
        .unwrap();
    let mut conn = app_connection(&url).await;
    let mut tx = conn.begin().await.unwrap();
    let handle = jobs.spawn_in(&mut tx, tx_rolled_back()).await.unwrap();
    tx.rollback().await.unwrap();
    // The handle says so at once rather than waiting forever.
    let waited = tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("the wait ended");
    assert!(
        matches!(waited, Err(Error::NotFound(id)) if id == handle.id()),
        "{waited:?}"
    );
    assert!(matches!(
        jobs.status(handle.id()).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(job_rows(&url), 0);
    assert!(jobs.list(JobFilter::new()).await.unwrap().is_empty());
    assert_eq!(jobs.counts().await.unwrap().pending, 0);
    // Polled many times over meanwhile, the worker found nothing to run.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(NEVER_RUNS.load(Ordering::SeqCst), 0);
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_spawned_in_a_transaction_holds_from_its_commit() {
    let Some(url) = pg_url().await else { return };
    let front = front(&url).await;
    let call = || tx_double(7).idempotency_key("order-7");
    let mut conn = app_connection(&url).await;
    let mut tx = conn.begin().await.unwrap();
    let first = front.spawn_in(&mut tx, call()).await.unwrap();
    // In the same transaction, the key is already held.
    let again = front.spawn_in(&mut tx, call()).await.unwrap();
    assert_eq!((again.id(), again.is_new()), (first.id(), false));
    // Outside it, a spawn with the key waits for the transaction to end...
    let outside = tokio::spawn({
        let front = front.clone();
        async move { front.spawn(call()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !outside.is_finished(),
        "the key is locked until the application's transaction ends"
    );
    tx.commit().await.unwrap();
    // ...and then sees the committed job rather than making a second.
    let outside = outside.await.unwrap().unwrap();
    assert_eq!((outside.id(), outside.is_new()), (first.id(), false));
    assert_eq!(job_rows(&url), 1);

    // After a rollback the key is free again.
    let rolled_call = || tx_double(8).idempotency_key("order-8");
    let mut tx = conn.begin().await.unwrap();
    let rolled = front.spawn_in(&mut tx, rolled_call()).await.unwrap();
    tx.rollback().await.unwrap();
    let fresh = front.spawn(rolled_call()).await.unwrap();
    assert!(fresh.is_new());
    assert_ne!(fresh.id(), rolled.id());
    front.shutdown().await;
}

/// Makes the application's own table, beside llmjobs' schema.
fn create_orders(url: &str) {
    psql(
        url,
        "CREATE TABLE public.orders (id BIGINT PRIMARY KEY, item TEXT NOT NULL)",
    );
}

fn orders(url: &str) -> u32 {
    psql(url, "SELECT count(*) FROM public.orders")
        .parse()
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_spawned_with_the_applications_row_commits_with_it() {
    let Some(url) = pg_url().await else { return };
    create_orders(&url);
    let jobs = worker(&url).await;
    let mut conn = app_connection(&url).await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id, item) VALUES (1, 'tea')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let handles = jobs
        .spawn_many_in(&mut tx, (1..=3).map(tx_double))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut outputs = Vec::new();
    for handle in handles {
        let output = tokio::time::timeout(Duration::from_secs(20), handle.wait())
            .await
            .expect("the batch ran after the commit");
        outputs.push(output.unwrap());
    }
    assert_eq!(outputs, vec![2, 4, 6]);
    assert_eq!(orders(&url), 1);
    jobs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_spawned_with_the_applications_row_rolls_back_with_it() {
    let Some(url) = pg_url().await else { return };
    create_orders(&url);
    let front = front(&url).await;
    let mut conn = app_connection(&url).await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id, item) VALUES (2, 'cake')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let handles = front
        .spawn_many_in(&mut tx, (1..=3).map(tx_double))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!((orders(&url), job_rows(&url)), (0, 0));
    for handle in handles {
        assert!(matches!(handle.wait().await, Err(Error::NotFound(_))));
    }
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_batch_records_none_of_its_jobs_and_the_transaction_goes_on() {
    let Some(url) = pg_url().await else { return };
    create_orders(&url);
    let front = front(&url).await;
    // The key is held by a job with other arguments: the batch that reuses it is a mistake.
    front
        .spawn(tx_double(100).idempotency_key("taken"))
        .await
        .unwrap();
    let mut conn = app_connection(&url).await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id, item) VALUES (3, 'jam')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let batch = vec![tx_double(1), tx_double(2).idempotency_key("taken")];
    let err = front.spawn_many_in(&mut tx, batch).await.unwrap_err();
    assert!(
        matches!(&err, Error::IdempotencyConflict { key, .. } if key == "taken"),
        "{err}"
    );
    // The failed spawn rolled back to its savepoint: the application's transaction is usable,
    // and commits its own row without any job of the batch.
    sqlx::query("INSERT INTO orders (id, item) VALUES (4, 'bread')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!((orders(&url), job_rows(&url)), (2, 1));
    front.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spawn_in_on_a_runtime_that_is_not_on_postgresql_is_refused() {
    let Some(url) = pg_url().await else { return };
    let jobs = Jobs::open("sqlite::memory:").await.unwrap();
    let mut conn = app_connection(&url).await;
    let mut tx = conn.begin().await.unwrap();
    let err = jobs.spawn_in(&mut tx, tx_double(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotPostgres {
                operation: "spawn_in"
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("needs a PostgreSQL job database"));
    let err = jobs
        .spawn_many_in(&mut tx, [tx_double(1)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotPostgres {
                operation: "spawn_many_in"
            }
        ),
        "{err}"
    );
    tx.commit().await.unwrap();
    assert_eq!(jobs.counts().await.unwrap().pending, 0);
    jobs.shutdown().await;
}
