//! Every argument of the attribute, and what `Job::config` and `Job::NAME` say about them.

use std::time::Duration;

use llmjobs::{Job, JobConfig, JobContext, JobError, llm_job};

#[llm_job(
    name = "summarize.v2",
    max_concurrency = 4,
    timeout = "2m",
    retries = 3,
    long_running,
    crate = "::llmjobs"
)]
async fn summarize(ctx: JobContext, text: String) -> Result<String, JobError> {
    let _ = ctx;
    Ok(text)
}

#[llm_job(timeout = "500ms", retries = 0)]
async fn quick(text: String) -> Result<String, JobError> {
    Ok(text)
}

#[llm_job(timeout = "1h", long_running = false)]
async fn slow(text: String) -> Result<String, JobError> {
    Ok(text)
}

#[llm_job]
async fn plain(text: String) -> Result<String, JobError> {
    Ok(text)
}

fn main() {
    assert_eq!(<summarize as Job>::NAME, "summarize.v2");
    assert_eq!(
        <summarize as Job>::config(),
        JobConfig::new()
            .max_concurrency(4)
            .timeout(Duration::from_secs(120))
            .retries(3)
            .long_running(true)
    );
    let call = summarize("x".into());
    assert_eq!(call.name(), "summarize.v2");
    assert!(call.is_long_running());

    assert_eq!(<quick as Job>::NAME, "quick");
    assert_eq!(
        <quick as Job>::config(),
        JobConfig::new()
            .timeout(Duration::from_millis(500))
            .retries(0)
    );

    assert_eq!(
        <slow as Job>::config(),
        JobConfig::new().timeout(Duration::from_secs(3600))
    );

    assert_eq!(<plain as Job>::NAME, "plain");
    assert_eq!(<plain as Job>::config(), JobConfig::new());
}
