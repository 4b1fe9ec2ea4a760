//! A job that returns nothing but success, and one that takes no arguments at all.

use llmjobs::{JobContext, JobError, llm_job};

#[llm_job]
async fn notify(user: String) -> Result<(), JobError> {
    let _ = user;
    Ok(())
}

#[llm_job]
async fn heartbeat(ctx: JobContext) -> Result<(), JobError> {
    let _ = ctx;
    Ok(())
}

fn main() {
    let call: llmjobs::JobCall<()> = notify("ada".into());
    assert_eq!(call.name(), "notify");
    assert_eq!(call.args_json(), Ok(r#"{"user":"ada"}"#));

    let call: llmjobs::JobCall<()> = heartbeat();
    assert_eq!(call.args_json(), Ok("{}"));
}
