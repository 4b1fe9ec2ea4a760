//! The read-only [`Inspector`]: it reads what runtimes wrote, as they read it, without a
//! runtime of its own, and refuses a schema it does not know.

use std::time::{Duration, SystemTime};

use llmjobs::{
    Compatibility, Error, Inspector, JobContext, JobError, JobFilter, JobId, JobState, Progress,
    llm_job,
};
use serde_json::json;

use super::Backend;

/// Journals a draft, reports usage, and returns it.
#[llm_job]
async fn ci_draft(ctx: JobContext, text: String) -> Result<String, JobError> {
    let draft: String = ctx
        .step("draft", async { Ok::<_, JobError>(text.to_uppercase()) })
        .await?;
    ctx.report(Progress::stage("done").with_tokens(7, 3));
    Ok(draft)
}

/// Fails for good.
#[llm_job]
async fn ci_refuse() -> Result<(), JobError> {
    Err(JobError::permanent(JobError::msg("refused")))
}

pub(crate) async fn an_inspector_reads_what_runtimes_wrote(backend: Backend) {
    let jobs = backend.open().await;
    let done = jobs.spawn(ci_draft("abc".into())).await.unwrap();
    assert_eq!(done.wait().await.unwrap(), "ABC");
    let failed = jobs.spawn(ci_refuse()).await.unwrap();
    assert!(failed.wait().await.is_err());
    let later = jobs
        .spawn(ci_draft("later".into()).delay(Duration::from_secs(3600)))
        .await
        .unwrap();

    let db = Inspector::open(&backend.url()).await.unwrap();
    assert_eq!(db.schema().compatibility, Compatibility::Current);
    assert!(db.schema().is_usable());

    // The same statuses, listings and counts as the runtime's own reads.
    for id in [done.id(), failed.id(), later.id()] {
        assert_eq!(db.status(id).await.unwrap(), jobs.status(id).await.unwrap());
    }
    for filter in [
        JobFilter::new(),
        JobFilter::new().state(JobState::Failed),
        JobFilter::new().name("ci_draft").limit(1),
        JobFilter::new().oldest_first(),
    ] {
        assert_eq!(
            db.list(filter.clone()).await.unwrap(),
            jobs.list(filter).await.unwrap()
        );
    }
    assert_eq!(
        db.counts_by_name().await.unwrap(),
        jobs.counts_by_name().await.unwrap()
    );
    assert_eq!(db.counts().await.unwrap(), jobs.counts().await.unwrap());

    // What a status leaves out: arguments, result, journal.
    let record = db.job(done.id()).await.unwrap();
    assert_eq!(record.args, json!({ "text": "abc" }));
    assert_eq!(record.result, Some(json!("ABC")));
    let records = db
        .records(JobFilter::new().state(JobState::Pending))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].args, json!({ "text": "later" }));
    let steps = db.steps(done.id()).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!((steps[0].position, steps[0].name.as_str()), (0, "draft"));
    assert!(steps[0].size >= 5, "{steps:?}");
    let status = &record.status;
    assert!(steps[0].recorded_at >= status.created_at);
    assert!(steps[0].recorded_at <= status.completed_at.unwrap());
    assert!(db.steps(failed.id()).await.unwrap().is_empty());

    // Finished jobs, the latest to end first; what a prune would delete.
    let finished = db
        .finished_since(status.created_at - Duration::from_secs(1), 10)
        .await
        .unwrap();
    let ids: Vec<JobId> = finished.iter().map(|r| r.status.id).collect();
    assert_eq!(ids, [failed.id(), done.id()]);
    assert!(
        db.finished_since(SystemTime::now() + Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        db.count_prunable(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        db.count_prunable(Duration::from_millis(1)).await.unwrap(),
        2
    );
    assert_eq!(jobs.prune(Duration::from_millis(1)).await.unwrap(), 2);
    assert_eq!(db.count_prunable(Duration::ZERO).await.unwrap(), 0);

    let unknown: JobId = "01930000-0000-7000-8000-0000000dead0".parse().unwrap();
    assert!(matches!(db.job(unknown).await, Err(Error::NotFound(id)) if id == unknown));
    jobs.shutdown().await;
}

pub(crate) async fn an_inspector_refuses_a_database_from_a_newer_llmjobs(backend: Backend) {
    let jobs = backend.open().await;
    jobs.shutdown().await;
    let url = backend.url();
    let info = Inspector::schema_of(&url).await.unwrap();
    assert_eq!(info.version, Some(info.supported));
    backend.execute(
        "INSERT INTO llmjobs_migrations (version, description, success, checksum, \
         execution_time) VALUES (999, 'from a later llmjobs', true, '00', 0)",
    );
    let info = Inspector::schema_of(&url).await.unwrap();
    assert_eq!(info.version, Some(999));
    assert_eq!(info.compatibility, Compatibility::Newer);
    assert!(!info.is_usable());
    let err = Inspector::open(&url).await.unwrap_err();
    assert!(matches!(err, Error::Migrate(_)), "{err}");
    assert!(err.to_string().contains("newer llmjobs"), "{err}");
}
