use llmjobs::{JobContext, JobError, llm_job};

#[llm_job(cron = "0 */5 * * * *")]
async fn poll_feed(ctx: JobContext, url: String) -> Result<(), JobError> {
    let _ = (ctx, url);
    Ok(())
}

fn main() {}
