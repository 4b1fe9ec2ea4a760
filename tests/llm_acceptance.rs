//! The acceptance run: the original system's 31 call configs, each meeting the situation its
//! description names, end as the expected-outcome table beside the fixture says. The same code
//! runs the demo (`cargo run --example llm_call`).

use llmjobs::llm::mock::MockLlmServer;
use llmjobs_testkit::TempDb;
use llmjobs_testkit::acceptance::{self, Outcome};

#[tokio::test(flavor = "multi_thread")]
async fn every_seed_case_ends_as_its_description_says() {
    let mock = MockLlmServer::start().await.unwrap();
    let client = acceptance::client(&mock).unwrap();
    let db = TempDb::new();
    let jobs = llmjobs::Jobs::builder()
        .url(db.url())
        .llm(client.clone())
        .open()
        .await
        .unwrap();
    let cases = acceptance::load_cases(acceptance::SEEDS, acceptance::EXPECTATIONS).unwrap();
    assert_eq!(cases.len(), 31);
    let run = acceptance::run_cases(&jobs, &mock, &client, cases)
        .await
        .unwrap();
    let results = run.finish(&mock, &client).await.unwrap();
    jobs.shutdown().await;

    let report: Vec<String> = results.iter().map(|r| r.line()).collect();
    let report = report.join("\n");
    for result in &results {
        assert!(result.as_expected(), "{}\n\n{report}", result.line());
    }
    assert_eq!(acceptance::verdict(&results), "31 as expected, 0 not");
    for outcome in [
        Outcome::Completed,
        Outcome::Retried,
        Outcome::NeedsReview,
        Outcome::Failed,
    ] {
        assert!(
            results.iter().any(|r| r.outcome == outcome),
            "no case ended {outcome}:\n{report}"
        );
    }
}

#[test]
fn the_table_must_cover_every_seed_case_once() {
    let err = acceptance::load_cases(acceptance::SEEDS, "[]").unwrap_err();
    assert!(err.contains("max_text_001_simple_question_string"), "{err}");
    let unknown = r#"[{"case": "nope", "expect": {"outcome": "completed"}, "why": "-"}]"#;
    let err = acceptance::load_cases(acceptance::SEEDS, unknown).unwrap_err();
    assert!(err.contains("`nope`"), "{err}");
}
