use llmjobs::{JobError, llm_job};

#[llm_job(cron = "0 0 9 * * *", cron_timezone = "Europe/Pariss")]
async fn digest() -> Result<(), JobError> {
    Ok(())
}

fn main() {}
