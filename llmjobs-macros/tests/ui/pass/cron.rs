//! `cron` declares the schedule a job without arguments is spawned on, read in
//! `cron_timezone` (UTC by default); a context parameter is allowed.

use llmjobs::{Job, JobConfig, JobContext, JobError, llm_job};

#[llm_job(cron = "0 */5 * * * *")]
async fn poll_feeds() -> Result<(), JobError> {
    Ok(())
}

#[llm_job(cron = "0 0 9 * * Mon-Fri", cron_timezone = "Europe/Paris", retries = 2)]
async fn daily_digest(ctx: JobContext) -> Result<u32, JobError> {
    Ok(ctx.attempt())
}

#[llm_job(cron = "@hourly")]
async fn hourly() -> Result<(), JobError> {
    Ok(())
}

fn main() {
    assert_eq!(
        <poll_feeds as Job>::config(),
        JobConfig::new().cron("0 */5 * * * *")
    );
    assert_eq!(
        <daily_digest as Job>::config(),
        JobConfig::new()
            .retries(2)
            .cron("0 0 9 * * Mon-Fri")
            .cron_timezone("Europe/Paris")
    );
    assert_eq!(<hourly as Job>::config().cron, Some("@hourly"));
    // The call builder still exists, for spawning one by hand.
    assert_eq!(daily_digest().args_json(), Ok("{}"));
}
