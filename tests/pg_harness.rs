//! The PostgreSQL test harness itself (tests/support/pg.rs): fresh databases are distinct and
//! empty, and the server answers.

use std::collections::HashSet;
use std::time::Instant;

use llmjobs_testkit::pg::{pg_url, pg_url_blocking, psql};

/// Relations a test could have left: anything outside the system schemas.
const USER_RELATIONS: &str = "SELECT count(*) FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg_toast%'";

#[tokio::test]
async fn two_fresh_databases_are_distinct_and_empty() {
    let start = Instant::now();
    let Some(a) = pg_url().await else { return };
    let first = start.elapsed();
    let b = pg_url()
        .await
        .expect("a second database once the first one came");
    eprintln!(
        "first database in {first:.2?}, second in {:.2?}",
        start.elapsed() - first
    );

    assert_ne!(a, b);
    for url in [&a, &b] {
        assert_eq!(psql(url, "SELECT 1"), "1");
        assert!(psql(url, "SELECT current_database()").starts_with("llmjobs_test_"));
        assert_eq!(psql(url, USER_RELATIONS), "0", "{url} is not empty");
    }
    assert_ne!(
        psql(&a, "SELECT current_database()"),
        psql(&b, "SELECT current_database()")
    );

    // What one test writes, another does not see.
    psql(
        &a,
        "CREATE TABLE probe (id int); INSERT INTO probe VALUES (1)",
    );
    assert_eq!(psql(&a, "SELECT count(*) FROM probe"), "1");
    assert_eq!(psql(&b, "SELECT to_regclass('probe') IS NULL"), "t");
    assert_eq!(psql(&b, USER_RELATIONS), "0");

    if std::env::var_os("LLMJOBS_TEST_PG_URL").is_none() {
        // The throwaway cluster: its own server, configured as pg.rs documents.
        assert!(!a.contains(":5432/"), "{a} is the machine's own server");
        assert_eq!(psql(&a, "SHOW max_connections"), "200");
        assert_eq!(psql(&a, "SHOW fsync"), "off");
        assert_eq!(psql(&a, "SHOW synchronous_commit"), "on");
    }
}

#[test]
fn concurrent_callers_share_one_server() {
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(pg_url_blocking))
        .collect();
    let urls: Vec<String> = threads
        .into_iter()
        .filter_map(|thread| thread.join().expect("a caller panicked"))
        .collect();
    if urls.is_empty() {
        return; // no PostgreSQL here: skipped
    }
    assert_eq!(urls.len(), 4);
    assert_eq!(urls.iter().collect::<HashSet<_>>().len(), 4, "{urls:?}");
    let server = |url: &String| url.rsplit_once('/').unwrap().0.to_string();
    assert_eq!(
        urls.iter().map(server).collect::<HashSet<_>>().len(),
        1,
        "{urls:?}"
    );
    for url in &urls {
        assert_eq!(psql(url, USER_RELATIONS), "0");
    }
}
