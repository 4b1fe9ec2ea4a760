//! A job registers itself: a runtime opened without any explicit registration runs it, with the
//! arguments, context and error conversion the attribute generated.

use std::fmt;

use llmjobs::{Error, JobContext, Jobs, llm_job};

#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

#[llm_job(retries = 0)]
async fn shout(text: String, ctx: JobContext, times: usize) -> Result<String, Refused> {
    assert_eq!(ctx.name(), "shout");
    if text.is_empty() {
        return Err(Refused("nothing to shout".into()));
    }
    Ok(text.to_uppercase().repeat(times))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let jobs = Jobs::open("sqlite::memory:").await.unwrap();
    assert_eq!(jobs.run(shout("hey".into(), 2)).await.unwrap(), "HEYHEY");
    match jobs.run(shout(String::new(), 1)).await {
        Err(Error::JobFailed { error, .. }) => {
            assert!(error.contains("nothing to shout"), "{error}")
        }
        other => panic!("expected the job to fail, got {other:?}"),
    }
    jobs.shutdown().await;
}
