use llmjobs::{JobError, llm_job};

#[llm_job(cron = "0 0 25 * * *")]
async fn nightly() -> Result<(), JobError> {
    Ok(())
}

fn main() {}
