use llmjobs::{JobError, llm_job};

#[llm_job(priority = 3000000000)]
async fn urgent() -> Result<(), JobError> {
    Ok(())
}

fn main() {}
