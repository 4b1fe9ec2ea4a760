//! TLS to PostgreSQL: with `sslmode=verify-full` and the authority's certificate, llmjobs
//! connects over TLS (rustls) and runs jobs; without a certificate it can verify, it refuses
//! to connect, saying why. Against the test kit's throwaway cluster, which serves TLS with a
//! certificate authority of its own (a server given by `LLMJOBS_TEST_PG_URL` is skipped:
//! its TLS set-up is unknown here).

use std::time::Duration;

use llmjobs::{JobError, Jobs, llm_job};
use llmjobs_testkit::pg::{pg_url, psql, require_pg, serve_tls, tls_ca};

#[llm_job]
async fn pg_tls_echo(n: u32) -> Result<u32, JobError> {
    Ok(n)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_connects_over_tls_and_an_unknown_authority_is_refused() {
    serve_tls();
    let Some(url) = pg_url().await else { return };
    let Some(ca) = tls_ca() else {
        assert!(
            std::env::var_os("LLMJOBS_TEST_PG_URL").is_some() || !require_pg(),
            "the throwaway cluster serves no TLS (see why above)"
        );
        eprintln!("TLS test skipped: the server's TLS set-up is unknown here");
        return;
    };
    let database = url.rsplit('/').next().unwrap().to_string();

    let verified = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let jobs = Jobs::builder()
        .url(&verified)
        .poll_interval(Duration::from_millis(50))
        .open()
        .await
        .expect("open over TLS, the server's certificate verified");
    assert_eq!(jobs.run(pg_tls_echo(7)).await.unwrap(), 7);
    // The server sees llmjobs' connections to this database as TLS ones.
    let over_tls = psql(
        &url,
        &format!(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = '{database}' AND a.pid <> pg_backend_pid()"
        ),
    );
    let (tls, plain) = over_tls.split_once('|').expect("two counts");
    assert!(
        tls.parse::<u32>().unwrap() > 0,
        "no TLS connection: {over_tls}"
    );
    assert_eq!(plain, "0", "a connection without TLS: {over_tls}");
    jobs.shutdown().await;

    // Without the authority's certificate, the server's cannot be verified: no connection.
    let unverifiable = format!("{url}?sslmode=verify-full");
    let error = tokio::time::timeout(Duration::from_secs(30), Jobs::open(&unverifiable))
        .await
        .expect("the refusal comes at once")
        .expect_err("a server certificate that cannot be verified is refused");
    let text = error.to_string();
    eprintln!("refused: {text}");
    assert!(text.contains("certificate"), "{text}");
}
