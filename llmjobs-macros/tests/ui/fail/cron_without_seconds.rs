use llmjobs::{JobError, llm_job};

#[llm_job(cron = "*/5 * * * *")]
async fn poll() -> Result<(), JobError> {
    Ok(())
}

fn main() {}
